"""Callbacks that fail a real run the way real runs fail (used by test_exit_codes through --trainer.callbacks)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F


class ShapeMismatch(pl.Callback):
    """torch's own ValueError for mismatched batch sizes, as a wrong model head would raise."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        F.cross_entropy(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))


class OutOfMemory(pl.Callback):
    """What the CUDA caching allocator raises (no GPU here: the one thing mocked)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")

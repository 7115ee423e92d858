"""Callbacks the resume test passes to the real `convnets fit` through --trainer.callbacks."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytorch_lightning as pl


class IndexRecorder(pl.Callback):
    """Appends each trained step's (global step, epoch, real sample indices, batch size, learning
    rate) to a JSON-lines file (per rank)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        record = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "index": batch["index"][batch["valid"]].tolist(),
            "batch": len(batch["valid"]),
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
        }
        rank = trainer.global_rank
        path = self.path if rank == 0 else self.path.with_suffix(f".rank{rank}.jsonl")
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class KillAtStep(pl.Callback):
    """SIGKILL (no clean-up, like a node loss) as the step `step` begins, once `after` exists."""

    def __init__(self, step: int, after: str) -> None:
        self.step, self.after = step, Path(after)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and self.after.exists():
            os.kill(os.getpid(), signal.SIGKILL)

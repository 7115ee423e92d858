"""What `convnets evaluate` collects during the test loop, and the progress bar with images/s.

All metric states are device tensors summed across DDP ranks (exact counts, no sample counted
twice: padding is dropped in the test step). At the loop's end every rank takes part in the
same collectives in the same order; only rank 0 keeps the results.
"""

from __future__ import annotations

import time

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
from typing_extensions import override


class EvalCollector(pl.Callback):
    """Reads the module's test metrics once at the end; wall-clock images/s of the whole loop."""

    def __init__(self) -> None:
        self.result: dict = {}
        self.confusion: np.ndarray | None = None
        self.topk: np.ndarray | None = None  # rows (index, label, top-k classes, top-k probabilities)
        self.start = 0.0

    @override
    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    @override
    def on_test_end(self, trainer, pl_module) -> None:
        m = pl_module
        if m.device.type == "cuda":
            torch.cuda.synchronize(m.device)
        wall = time.perf_counter() - self.start
        # compute() all-reduces each metric's state (the same order on every rank)
        confusion = m.test_confusion.compute().cpu().numpy()
        res = {name: fraction(getattr(m, f"test_{name}")) for name in ("top1", "top5", "top1_1crop", "top5_1crop")}
        res["calibration"] = m.test_calibration.compute()
        if m.eval_options.mc_dropout:
            res["mc_dropout"] = {
                **m.test_mc_calibration.compute(),
                "top1": fraction(m.test_mc_top1),
                "top5": fraction(m.test_mc_top5),
            }
        wall = float(trainer.strategy.reduce(torch.tensor(wall, dtype=torch.float64, device=m.device), reduce_op="max"))
        topk = (
            gather_rows(trainer, m.test_topk, width=2 + 2 * min(5, confusion.shape[0]))
            if m.eval_options.keep_topk
            else None
        )
        for metric in (
            m.test_top1,
            m.test_top5,
            m.test_top1_1crop,
            m.test_top5_1crop,
            m.test_confusion,
            m.test_calibration,
            m.test_mc_top1,
            m.test_mc_top5,
            m.test_mc_calibration,
        ):
            metric.reset()
        if trainer.is_global_zero:
            n = int(confusion.sum())
            self.result = {
                **res,
                "n": n,
                "seconds": wall,
                "images_per_s": n / max(wall, 1e-9),
                "world_size": trainer.world_size,
            }
            self.confusion, self.topk = confusion, topk


def fraction(metric) -> float:
    """A TopKAccuracy's correct / total over all ranks, as an exact fraction in double precision."""
    with metric.sync_context():  # sums the states across ranks for the duration (a no-op in one process)
        return int(metric.correct) / max(int(metric.total), 1)


def gather_rows(trainer: pl.Trainer, rows: list[torch.Tensor], *, width: int) -> np.ndarray | None:
    """Concatenate each rank's rows and gather them on every rank (padded to the longest rank)."""
    device = trainer.lightning_module.device
    local = torch.cat(rows) if rows else torch.zeros((0, width), dtype=torch.float64, device=device)
    if trainer.world_size == 1:
        return local.cpu().numpy()
    counts = trainer.strategy.all_gather(torch.tensor(len(local), device=device)).view(-1)
    longest = int(counts.max())
    padded = torch.cat([local, local.new_zeros((longest - len(local), width))])
    every = trainer.strategy.all_gather(padded)  # (world, longest, width)
    return torch.cat([every[r, : int(c)] for r, c in enumerate(counts)]).cpu().numpy()


class ImagesPerSecondBar(TQDMProgressBar):
    """Lightning's bar with the test loop's images/s (this rank's images, host clock; no device sync)."""

    def __init__(self, *, refresh_rate: int = 10) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.images, self.t0 = 0, 0.0

    @override
    def on_test_epoch_start(self, trainer, pl_module) -> None:
        super().on_test_epoch_start(trainer, pl_module)
        self.images, self.t0 = 0, time.perf_counter()

    @override
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        self.images += int(batch.get("n_valid", len(batch["labels"])))
        if batch_idx % self.refresh_rate == 0 and self._test_progress_bar is not None:
            rate = self.images / max(time.perf_counter() - self.t0, 1e-9)
            self.test_progress_bar.set_postfix({"images/s": f"{rate * trainer.world_size:.0f}"}, refresh=False)

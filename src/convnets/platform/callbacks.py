"""Callbacks: throughput, the run record, metrics.json + history, and the run's pictures."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from typing_extensions import override

from convnets.platform import plots
from convnets.platform.tracking import run_info, write_json

log = logging.getLogger(__name__)


def _float_metrics(trainer: pl.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}


def first_conv(model: torch.nn.Module) -> torch.nn.Conv2d | None:
    conv = getattr(model, "conv1", None)
    if isinstance(conv, torch.nn.Conv2d):
        return conv
    return next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)


class ThroughputMonitor(pl.Callback):
    """Training images per second over each epoch, all ranks together (padding excluded).

    Measured from the first batch to the epoch's end, so data-pipeline start-up counts: this is
    what a user waits for. The per-rank counts are summed once per epoch (one small all-reduce).
    """

    def __init__(self) -> None:
        self.images = 0
        self.start: float | None = None
        self.last: dict[str, float] = {}

    @override
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.images, self.start = 0, time.perf_counter()

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.images += int(batch["valid"].sum())

    @override
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        seconds = time.perf_counter() - (self.start or time.perf_counter())
        total = trainer.strategy.reduce(torch.tensor(float(self.images)), reduce_op="sum")
        rate = float(total) / max(seconds, 1e-9)
        self.last = {"images_per_s": rate, "epoch_seconds": seconds}
        pl_module.log("train_images_per_s", rate, rank_zero_only=True)


class RunRecorder(pl.Callback):
    """Records what produced the run (resolved config, versions, git revision), per stage.

    Written to run_info.json in the run folder and next to the checkpoints, keyed by stage
    ("fit", "test", ...) so that testing a checkpoint does not erase how it was trained.
    """

    def __init__(self, run_dir: Path, config: dict) -> None:
        self.run_dir, self.config = Path(run_dir), config

    @rank_zero_only
    def _record(self, trainer: pl.Trainer) -> None:
        info = run_info(self.config)
        for path in (self.run_dir / "run_info.json", self.run_dir / "checkpoints" / "run_info.json"):
            record = json.loads(path.read_text()) if path.exists() else {}
            record[trainer.state.fn.value if trainer.state.fn else "run"] = info
            write_json(path, record)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update(
                    {"versions": info["versions"], "git_revision": info["git_revision"], "resolved": self.config},
                    allow_val_change=True,
                )

    @override
    def on_fit_start(self, trainer, pl_module) -> None:
        self._record(trainer)

    @override
    def on_test_start(self, trainer, pl_module) -> None:
        self._record(trainer)


class RunReport(pl.Callback):
    """metrics.json (plain keys: test_top1, images_per_s, ...) and the PNG plots of the run folder."""

    def __init__(self, run_dir: Path, throughput: ThroughputMonitor) -> None:
        self.run_dir, self.throughput = Path(run_dir), throughput
        self.history: list[dict] = []
        self.metrics: dict[str, float] = {}
        self.fit_start = 0.0

    @override
    def on_fit_start(self, trainer, pl_module) -> None:
        self.fit_start = time.perf_counter()

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == 0 and batch_idx == 0 and trainer.is_global_zero:
            spec, classes = pl_module.input_spec, getattr(trainer.datamodule, "classes", None)
            classes = classes or [str(i) for i in range(int(batch["labels"].max()) + 1)]
            plots.input_samples(batch["images"], batch["labels"], classes, spec.mean, spec.std,
                                self.run_dir / "plots" / "train_samples.png")

    @override
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            self.history.append({"epoch": trainer.current_epoch, **_float_metrics(trainer), **self.throughput.last})

    @override
    def on_fit_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        self.metrics.update(_float_metrics(trainer))
        self.metrics.update(self.throughput.last)
        self.metrics["fit_seconds"] = time.perf_counter() - self.fit_start
        plots.learning_curves(self.history, self.run_dir / "plots" / "learning_curves.png")
        conv = first_conv(pl_module.net)
        if conv is not None:
            path = plots.conv_filters(conv.weight, self.run_dir / "plots" / "conv1_filters.png")
            self._log_image(trainer, "conv1_filters", path)
        self._write()

    @override
    def on_test_end(self, trainer, pl_module) -> None:
        matrix = pl_module.test_confusion.compute().cpu().numpy()  # synced across ranks
        if not trainer.is_global_zero:
            return
        self.metrics.update({k: v for k, v in _float_metrics(trainer).items() if k.startswith("test_")})
        classes = getattr(trainer.datamodule, "classes", None) or [str(i) for i in range(len(matrix))]
        path = plots.confusion_matrix(matrix, classes, self.run_dir / "plots" / "confusion_matrix.png")
        self._log_image(trainer, "confusion_matrix", path)
        self._write()

    def _log_image(self, trainer: pl.Trainer, key: str, path: Path) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=key, images=[str(path)])

    def _write(self) -> None:
        existing = self.run_dir / "metrics.json"
        payload: dict = {}
        if existing.exists():  # `convnets test` after `convnets fit` adds to the same file
            payload = json.loads(existing.read_text())
        payload.update(self.metrics)
        if self.history:
            payload["history"] = self.history
        write_json(existing, payload)

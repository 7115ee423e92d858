"""Runs the platform's training loop on synthetic batches and records every host-device sync
issued between a step's start and its end (training_step, backward, optimizer, scheduler).

On CPU a spy wraps the tensor methods that force a sync on a GPU (.item(), int(), float(),
bool(), .tolist(), .cpu(), .numpy(), .nonzero(), boolean-mask indexing); on CUDA, torch's own
sync debug mode ("warn") reports what the driver sees. Run as a script it fits once and prints
a JSON report (the GPU test runs it in a child process, as the NCCL world-size-1 DDP run).
"""

from __future__ import annotations

import argparse
import json
import traceback
import warnings
from contextlib import contextmanager

import pytorch_lightning as pl
import torch

SPIED = ("item", "tolist", "numpy", "nonzero", "cpu", "__int__", "__float__", "__bool__", "__index__")


class SyncRecorder(pl.Callback):
    """Records syncs inside [on_train_batch_start, on_train_batch_end) of every step.

    Put it FIRST in the callback list: its on_train_batch_end then runs before the others'
    (the throughput monitor synchronizes on purpose once, at the epoch's last step).
    """

    def __init__(self) -> None:
        self.events: list[str] = []
        self.devices: set[torch.device] = set()
        self._active = False

    def note(self, what: str) -> None:
        if self._active:
            frames = [f for f in traceback.extract_stack()[:-2] if "sync_probe" not in f.filename]
            where = next(
                (f"{f.filename}:{f.lineno}" for f in reversed(frames) if "/convnets/" in f.filename),
                f"{frames[-1].filename}:{frames[-1].lineno}",
            )
            self.events.append(f"{what} at {where}")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.devices.add(pl_module.device)  # Lightning moves the module back to the CPU after fit
        self._active = True
        if pl_module.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)
        self._active = False


@contextmanager
def cpu_spy(recorder: SyncRecorder):
    """Wrap the syncing Tensor methods (and bool-mask __getitem__) to report to `recorder`."""
    originals = {name: getattr(torch.Tensor, name) for name in SPIED}
    getitem = torch.Tensor.__getitem__

    def wrap(name, fn):
        def spied(self, *args, **kwargs):
            recorder.note(f"Tensor.{name}")
            return fn(self, *args, **kwargs)

        return spied

    def spied_getitem(self, index):
        if isinstance(index, torch.Tensor) and index.dtype == torch.bool:
            recorder.note("boolean-mask indexing")
        return getitem(self, index)

    try:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, wrap(name, fn))
        torch.Tensor.__getitem__ = spied_getitem
        yield recorder
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)
        torch.Tensor.__getitem__ = getitem


@contextmanager
def cuda_sync_warnings(recorder: SyncRecorder):
    """Turn torch's 'called a synchronizing CUDA operation' warnings into recorder events."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        previous = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if "synchronizing" in str(message) and "prototype" not in str(message):  # not the mode's own notice
                recorder.note(f"CUDA sync ({str(message).splitlines()[0][:60]})")
            else:
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        try:
            yield recorder
        finally:
            warnings.showwarning = previous


def fit_and_record(
    *,
    arch: str,
    norm: str | None,
    device: str,
    strategy: str,
    precision: str,
    channels_last: bool,
    run_dir,
    steps: int = 6,
    epochs: int = 2,
) -> dict:
    """Fit `epochs` epochs of `steps` synthetic steps (the last one padded); report syncs and throughput."""
    from convnets.models import get_model_info
    from convnets.platform.bench.model import SyntheticBatches, synthetic_batch
    from convnets.platform.training.callbacks import ThroughputMonitor, platform_callbacks
    from convnets.platform.training.module import ClassifierModule, PerfConfig

    torch.manual_seed(0)
    dev = torch.device(device)
    info = get_model_info(arch)
    full = synthetic_batch(8, info.input_size, 10, dev)
    padded = synthetic_batch(8, info.input_size, 10, dev, n_valid=5)
    module = ClassifierModule(arch=arch, num_classes=10, norm=norm, perf=PerfConfig(channels_last=channels_last))
    recorder = SyncRecorder()
    callbacks = [recorder, *platform_callbacks(run_dir, {"probe": "sync"}, progress_bar=False)]
    trainer = pl.Trainer(
        accelerator="gpu" if dev.type == "cuda" else "cpu",
        devices=1,
        strategy=strategy,
        precision=precision,
        max_epochs=epochs,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        log_every_n_steps=1000,
        default_root_dir=str(run_dir),
        enable_model_summary=False,
    )
    guard = cpu_spy(recorder) if dev.type == "cpu" else cuda_sync_warnings(recorder)
    with guard:
        trainer.fit(module, train_dataloaders=SyntheticBatches(full, steps, last=padded))
    monitor = next(c for c in trainer.callbacks if isinstance(c, ThroughputMonitor))
    trained_on = str(next(iter(recorder.devices), "none"))
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
    return {
        "syncs": recorder.events,
        "throughput": monitor.last,
        "backend": backend,
        "global_step": trainer.global_step,
        "device": trained_on,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="alexnet_small")
    parser.add_argument("--norm", default="batch")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--strategy", default="ddp")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--out", required=True)
    a = parser.parse_args()
    report = fit_and_record(
        arch=a.arch,
        norm=a.norm,
        device=a.device,
        strategy=a.strategy,
        precision=a.precision,
        channels_last=a.channels_last,
        run_dir=a.run_dir,
    )
    with open(a.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()

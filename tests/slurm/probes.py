"""Callbacks the signal tests add to a real run with `--trainer.callbacks+=tests.slurm.probes.NAME`."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn


class SignalSelf(pl.Callback):
    """Sends this process `signum` after training step `step` (or at validation batch `val_batch` of epoch `epoch`).

    What Slurm does to every task of a job, done to a plain `convnets fit` (one process).
    """

    def __init__(
        self,
        signum: str = "SIGUSR2",
        step: int = -1,
        epoch: int = 0,
        val_batch: int = -1,
        at_setup: bool = False,
        at_save: bool = False,
    ) -> None:
        self.signum, self.step, self.epoch, self.val_batch = getattr(signal, signum), step, epoch, val_batch
        self.at_setup = at_setup  # during start-up: after the hooks are set up, before the data and the first step
        self.at_save = at_save  # inside the first checkpoint save (while the checkpoint is being assembled)
        self.signalled_at_save_step: int | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.at_save and self.signalled_at_save_step is None:
            self.signalled_at_save_step = trainer.global_step
            print(f"probe: signalled during the checkpoint save at step {trainer.global_step}", flush=True)
            os.kill(os.getpid(), self.signum)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.at_setup:
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if (
            not trainer.sanity_checking
            and trainer.state.fn == TrainerFn.FITTING
            and batch_idx == self.val_batch
            and trainer.current_epoch == self.epoch
        ):
            os.kill(os.getpid(), self.signum)


class Markers(pl.Callback):
    """Files a test waits for before it signals a Slurm job: `step-N` (after a pause of `pause_s` there,
    so W&B has written the rows before it), `val-E-R` (validation of epoch E started in the job's
    R-th run, which then runs `val_delay_s` slower per batch: time to signal it there)."""

    def __init__(
        self,
        folder: str,
        pause_step: int = -1,
        pause_s: float = 0.0,
        val_epoch: int = -1,
        val_restart: int = 0,
        val_delay_s: float = 0.0,
    ) -> None:
        self.folder = Path(folder)
        self.pause_step, self.pause_s = pause_step, pause_s
        self.val_epoch, self.val_restart, self.val_delay_s = val_epoch, val_restart, val_delay_s

    def _restart(self) -> int:
        return int(os.environ.get("SLURM_RESTART_COUNT") or 0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.pause_step and self._restart() == 0:
            time.sleep(self.pause_s)  # every rank: they stay in step
            if trainer.is_global_zero:
                (self.folder / f"step-{self.pause_step}").touch()

    def _slow_validation(self, trainer) -> bool:
        return (
            not trainer.sanity_checking
            and trainer.current_epoch == self.val_epoch
            and self._restart() == self.val_restart
        )

    def on_validation_start(self, trainer, pl_module) -> None:
        if self._slow_validation(trainer) and trainer.is_global_zero:
            (self.folder / f"val-{self.val_epoch}-{self.val_restart}").touch()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._slow_validation(trainer):
            time.sleep(self.val_delay_s)


class TestPhase(pl.Callback):
    """Files `test-start-N` and `test-end-N` for the N-th `convnets test` of a run, counted by the files (a
    sweep variant's test runs without Slurm's variables); the first test runs `delay_s` slower per batch:
    time to signal the job while it tests."""

    __test__ = False  # not a pytest class

    def __init__(self, folder: str, delay_s: float = 0.0) -> None:
        self.folder, self.delay_s, self.n = Path(folder), delay_s, 0

    def on_test_start(self, trainer, pl_module) -> None:
        self.n = len(list(self.folder.glob("test-start-*")))
        (self.folder / f"test-start-{self.n}").touch()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.n == 0:
            time.sleep(self.delay_s)

    def on_test_end(self, trainer, pl_module) -> None:
        (self.folder / f"test-end-{self.n}").touch()

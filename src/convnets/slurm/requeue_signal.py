"""The Slurm job's preemption hook inside Lightning (`job.job_fit_args` adds it to a job's fit by class path).

A signal (USR2 warning or SIGTERM) is only noted by its handler (`job.install_signal_notes`); every
`check_every` training steps, every `check_every` validation batches and once when training starts,
the ranks all-reduce their notes (one one-element collective and a host sync per check, at the same
point on every rank: every rank runs the same number of steps and validation batches). When any
rank was signalled, every rank saves last.ckpt there together, rank 0 finishes its W&B writer and
hands over (`job.hand_over`: requeue, leave it to Slurm, or stop), and the process ends.

At most `check_every` steps (or validation batches) run between the signal and the save; nothing
trained before the save is lost. A signal during start-up (data module, checkpoint loading) is acted
on when training starts; one during validation stops the validation and saves mid-validation
(Lightning reruns that validation from its start on resume); one after the fit's last check is
handled by the job itself (`TrainingJob.__call__`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from typing_extensions import override

from convnets.slurm import job

log = logging.getLogger(__name__)


class RequeueOnSignal(pl.Callback):
    """On USR2 or SIGTERM: all ranks save last.ckpt at the same point, then rank 0 hands the job over.

    submitit's own USR2 handler would checkpoint and requeue from inside the handler, mid-step and on
    rank 0 only; Lightning's SIGTERM handler broadcasts from inside the handler (sigterm_sync.py).
    This hook replaces both with a note, acted upon between steps by every rank together.
    """

    handles_sigterm = True  # SigtermSync stands aside: the save-and-requeue here owns SIGTERM in a Slurm job

    def __init__(self, check_every: int = 10, max_requeues: int | None = None) -> None:
        self.check_every = check_every
        self.max_requeues = max_requeues  # a job submitit does not run (the sbatch template) requeues itself
        self._val_batches = 0
        self._stopped_validation = False  # this save stopped the epoch's validation (in the checkpoint)
        self._rerun_validation = False  # restored: the epoch's validation must run before anything else

    @override
    def state_dict(self) -> dict:
        return {"stopped_validation": self._stopped_validation}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self._rerun_validation = bool(state_dict.get("stopped_validation", False))

    @override
    def setup(self, trainer, pl_module, stage: str) -> None:
        job.install_signal_notes(job.preempt_signal() if os.environ.get("SLURM_JOB_ID") else job.REQUEUE_SIGNAL)
        connector = getattr(trainer, "_signal_connector", None)
        if connector is not None and hasattr(connector, "_sigterm_notifier_fn"):
            # Lightning composes its SIGTERM handler with the one already installed (the note): keep only
            # the note; Lightning's would broadcast inside the handler and stop without saving.
            connector._sigterm_notifier_fn = lambda signum, frame: None
        loop = trainer.fit_loop.epoch_loop
        if hasattr(loop, "_broadcast_sigterm_tensor"):
            loop._broadcast_sigterm_tensor = lambda: None  # Lightning's per-step broadcast of rank 0's flag

    @override
    def on_train_start(self, trainer, pl_module) -> None:
        job.progress["step"] = trainer.global_step
        if trainer.ckpt_path and trainer.global_rank == 0 and os.environ.get("SLURM_JOB_ID"):
            # (the run report prints the "resumed from ... at step N" line)
            job.job_event(Path(trainer.default_root_dir), "resumed", step=trainer.global_step)
        self._check(trainer, pl_module)  # a signal that came during start-up or checkpoint loading

    @override
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Before the other callbacks' epoch end (the run report, the checkpoint that monitors val_top1): this
        # hook comes first, as the user's callbacks do, where Lightning's own validation would have run.
        if self._rerun_validation:
            self._rerun_validation = False
            _run_stopped_validation(trainer)

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        job.progress["step"] = trainer.global_step  # an int store per step
        if trainer.global_step % self.check_every == 0:
            self._check(trainer, pl_module, logs_pending=True)

    @override
    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_batches = 0

    @override
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._val_batches += 1
        if trainer.state.fn == TrainerFn.FITTING and self._val_batches % self.check_every == 0:
            self._check(trainer, pl_module)

    def _check(self, trainer, pl_module, *, logs_pending: bool = False) -> None:
        code = torch.tensor(float(job.signal_code(job.noted_signal())), device=pl_module.device)
        code = trainer.strategy.reduce(code, reduce_op="max") if trainer.world_size > 1 else code
        agreed = int(code)  # a host sync every check_every steps
        if not agreed:
            return
        if logs_pending and hasattr(trainer, "_logger_connector"):
            # Lightning logs a step's row after its on_train_batch_end hooks: this step's row goes out now,
            # or W&B would miss it (the resumed job starts at the next step).
            trainer._logger_connector.update_train_step_metrics()
        self._save_and_hand_over(trainer, agreed)

    def _save_and_hand_over(self, trainer, agreed: int) -> None:
        signum = job.noted_signal() or (signal.SIGTERM if agreed == 2 else job.REQUEUE_SIGNAL)
        path = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        for callback in trainer.checkpoint_callbacks:
            # Recorded in the checkpoint: the resumed ModelCheckpoint then overwrites this last.ckpt at the
            # next epoch end, rather than writing last-v1.ckpt beside it (which `--ckpt_path last` may miss).
            if getattr(callback, "save_last", False) and Path(callback.dirpath or "") == path.parent:
                callback.last_model_path = str(path)
        where = "validation" if trainer.validating or trainer.sanity_checking else "training"
        self._stopped_validation = trainer.validating and not trainer.sanity_checking
        trainer.save_checkpoint(path)  # every rank: it holds a barrier
        self.saved_step = trainer.global_step
        log.warning(
            "signal received after step %d: saved %s at step %d (during %s)",
            job.noted_after_step(),
            path,
            trainer.global_step,
            where,
        )
        if trainer.global_rank == 0:
            from convnets.platform.training.tracking import finish_wandb

            finish_wandb()  # before Slurm's SIGTERM reaches W&B's service: its rows are written now
            code = job.hand_over(
                Path(trainer.default_root_dir), signum, trainer.global_step, max_requeues=self.max_requeues
            )
            _exit(code)
        # Other ranks: nothing is left for them to do. Under Slurm they leave now with code 0, so that rank 0's
        # hand-over alone decides how the job ends: a non-zero code would make srun's --kill-on-bad-exit (and
        # the task guard) stop rank 0 in the middle of its hand-over, and a rank that waited for Slurm's SIGTERM
        # (which it only notes) would hold the requeue until the cluster's KillWait (30 s by default) ran out.
        in_slurm = bool(os.environ.get("SLURM_JOB_ID"))
        log.log(
            logging.WARNING if in_slurm else logging.ERROR,
            "rank %d: stopped after the preemption save (rank 0's log says what happens next); resume from %s",
            trainer.global_rank,
            path,
        )
        _exit(0 if in_slurm else job.INTERRUPTED_EXIT)


def _run_stopped_validation(trainer) -> None:
    """The validation a preemption save stopped, run again from its first batch at its epoch's end.

    Lightning restores such a checkpoint as an epoch whose training is done and skips that epoch's
    validation (no val metrics for it, ModelCheckpoint without its monitor): run it here, as
    Lightning's training loop does at an epoch's end, with fresh metric states.
    """
    loop = trainer.fit_loop.epoch_loop.val_loop
    log.warning("rerunning the validation of epoch %d that the preemption stopped", trainer.current_epoch)
    loop.restarting = False  # from its first batch: the metric states of the stopped run were not saved
    trainer.validating = True
    first_loop_iter = trainer._logger_connector._first_loop_iter
    loop.run()
    trainer.training = True
    trainer._logger_connector._first_loop_iter = first_loop_iter


def _exit(code: int) -> None:
    # Not sys.exit: Lightning's exception path would run collectives (teardown, barriers) with ranks that
    # are already gone or asleep. Flush what the log files still hold first.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

"""The Slurm job's preemption hook inside Lightning: USR2 -> every rank saves last.ckpt at the same
step -> rank 0 lets submitit requeue the job (`job.job_fit_args` adds it to a job's fit by class path).
"""
from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from typing_extensions import override

log = logging.getLogger(__name__)

REQUEUE_GRACE_S = 180  # how long a rank waits, after the preemption save, for Slurm to end it


class RequeueOnSignal(pl.Callback):
    """On Slurm's USR2: all ranks save last.ckpt at the same step, then rank 0 lets submitit requeue.

    submitit's own handler, if called mid-step, would checkpoint half-updated weights, and only
    on rank 0; this one only raises a flag, acted upon between steps by every rank together.
    """

    def __init__(self, check_every: int = 10) -> None:
        self.check_every = check_every
        self._signum: int | None = None
        self._handler = None

    @override
    def setup(self, trainer, pl_module, stage: str) -> None:
        import submitit

        signum = submitit.JobEnvironment._usr_sig()
        self._handler = signal.getsignal(signum)  # submitit's checkpoint-and-requeue handler

        def note(received: int, frame) -> None:
            self._signum = received

        signal.signal(signum, note)

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.check_every:
            return
        flag = torch.tensor(1.0 if self._signum is not None else 0.0, device=pl_module.device)
        if float(trainer.strategy.reduce(flag, reduce_op="sum")) == 0:  # a host sync every check_every steps
            return
        path = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        for callback in trainer.checkpoint_callbacks:
            # Recorded in the checkpoint: the resumed ModelCheckpoint then overwrites this last.ckpt at the
            # next epoch end, rather than writing last-v1.ckpt beside it (which `--ckpt_path last` may miss).
            if getattr(callback, "save_last", False) and Path(callback.dirpath or "") == path.parent:
                callback.last_model_path = str(path)
        trainer.save_checkpoint(path)  # every rank: it holds a barrier
        log.warning("signal received: saved %s at step %d", path, trainer.global_step)
        if trainer.global_rank == 0 and callable(self._handler):
            self._handler(self._signum or submitit_signal(), None)  # checkpoint() + scontrol requeue + exit
        # Other ranks: Slurm ends this task when it requeues the job (seconds; KillWait is 30 s by default).
        # Still alive after REQUEUE_GRACE_S means no requeue came (limit reached, rank 0 failed): leave
        # with an error instead of waiting for the job's time limit in a collective rank 0 never joins.
        time.sleep(REQUEUE_GRACE_S)
        log.error("rank %d: no requeue %d s after the preemption save (see rank 0's log: requeue limit?); "
                  "exiting; resume from %s", trainer.global_rank, REQUEUE_GRACE_S, path)
        os._exit(1)  # not sys.exit: Lightning's exception path would try collectives with the gone rank 0


def submitit_signal() -> int:
    import submitit

    return submitit.JobEnvironment._usr_sig()

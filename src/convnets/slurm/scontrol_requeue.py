"""Rank 0's hand-over after a preemption save in a job that submitit does not run (the sbatch template).

`RequeueOnSignal` (requeue_signal.py) keeps the USR2 handler it finds at setup and calls it on rank 0
once every rank has saved last.ckpt. Under `convnets submit` that handler is submitit's; in a plain
sbatch job this callback, set up just before it, installs one that runs `scontrol requeue` for the
job, up to `max_requeues` times (Slurm's SLURM_RESTART_COUNT counts them), and ends the task: srun's
`--kill-on-bad-exit=1` then ends the other ranks at once instead of after Slurm's KillWait.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import pytorch_lightning as pl
from typing_extensions import override

log = logging.getLogger(__name__)
EXIT_AFTER_REQUEUE = 3  # non-zero, so srun stops the other tasks now; the job itself is back in the queue


class ScontrolRequeue(pl.Callback):
    """Installs the USR2 handler `RequeueOnSignal` hands over to on rank 0 (list this callback first)."""

    def __init__(self, max_requeues: int = 3) -> None:
        self.max_requeues = max_requeues

    @override
    def setup(self, trainer, pl_module, stage: str) -> None:
        if "SLURM_JOB_ID" in os.environ:
            signal.signal(signal.SIGUSR2, self.requeue)

    def requeue(self, signum: int, frame) -> None:
        job_id = os.environ["SLURM_JOB_ID"]
        done = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        if done >= self.max_requeues:
            log.error("job %s: not requeued again: %d requeues done (--slurm.max_requeues %d); sbatch the same "
                      "script again to resume from the run's checkpoints/last.ckpt", job_id, done, self.max_requeues)
            sys.exit(1)
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            reason = (result.stderr or result.stdout).strip().splitlines()
            log.error("job %s: `scontrol requeue` refused (%s); sbatch the same script again to resume from the "
                      "run's checkpoints/last.ckpt", job_id, reason[-1] if reason else f"exit code {result.returncode}")
            sys.exit(1)
        log.warning("job %s requeued (%d of at most %d requeues); it resumes from the run's checkpoints/last.ckpt",
                    job_id, done + 1, self.max_requeues)
        sys.exit(EXIT_AFTER_REQUEUE)

"""The callable a Slurm job runs (DINO's `run_with_submitit.py` pattern); its preemption hook is in requeue_signal.

Every task (one per GPU) runs `TrainingJob()`: `convnets fit ARGV --ckpt_path last` in process,
Lightning's `SLURMEnvironment(auto_requeue=False)` giving each its rank. Slurm signals USR2 to every
task `signal_delay_s` before the time limit (or on `scancel --signal=USR2`); `RequeueOnSignal`
notes it, the ranks agree at the next check (a one-element all-reduce every `check_every` steps),
all save runs/<name>/checkpoints/last.ckpt together, and rank 0 hands over to submitit, which calls
`TrainingJob.checkpoint()` and requeues the same job. The requeued job finds last.ckpt and resumes:
the run name, and so the folder, the checkpoint and the W&B id, were fixed at submit time.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from convnets.platform.training.tracking import own_wandb_service

from convnets.utils.files import write_json

log = logging.getLogger(__name__)
RECORD = "slurm.json"  # in the run folder: job ids, requeues, log folder (read by `convnets status`)
LOG_DIR = "slurm"  # submitit's folder inside the run folder: %j_%t_log.out / .err per rank
PLUGIN = {"class_path": "pytorch_lightning.plugins.environments.SLURMEnvironment", "init_args": {"auto_requeue": False}}


class RequeueLimitError(RuntimeError):
    """The run was preempted or timed out more often than --slurm.max_requeues allows."""


def read_record(run_dir: Path) -> dict:
    path = Path(run_dir) / RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def update_record(run_dir: Path, **changes) -> dict:
    record = {**read_record(run_dir), **changes}
    write_json(Path(run_dir) / RECORD, record)
    return record


def _job_event(run_dir: Path, event: str) -> None:
    """Appends {event, job id, time} to the record (rank 0 only)."""
    import submitit

    env = submitit.JobEnvironment()
    events = read_record(run_dir).get("events", [])
    events.append({"event": event, "job_id": env.job_id, "hostname": env.hostname, "unix_time": time.time(),
                   "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", 0))})
    update_record(run_dir, events=events, job_id=env.job_id)


@dataclass(frozen=True)
class TrainingJob:
    """`convnets fit ARGV` inside a Slurm job, then optionally `convnets test TEST_ARGV` on rank 0."""

    fit_args: tuple[str, ...]  # LightningCLI flags after `fit`, run name and trainer geometry included
    run_dir: str
    max_requeues: int
    requeues: int = 0
    test_args: tuple[str, ...] = ()  # a sweep variant's test command (one process, after the fit)

    def __call__(self) -> dict:
        import submitit

        from convnets.platform.training.lightning_cli import run_lightning

        own_wandb_service()  # the job inherits the submitting shell's environment, W&B service included
        rank = submitit.JobEnvironment().global_rank
        if rank == 0:
            _job_event(Path(self.run_dir), "start" if self.requeues == 0 else f"resume after requeue {self.requeues}")
        # `last`: Lightning loads runs/<name>/checkpoints/last.ckpt when it exists, else starts fresh.
        run_lightning(["fit", *self.fit_args, "--ckpt_path", "last"])
        if self.test_args and rank == 0:
            _finish_wandb()  # the test appends to the same W&B run id: this process must let go of it first
            _run_outside_slurm(["test", *self.test_args])
        if rank == 0:
            _job_event(Path(self.run_dir), "finished")
        metrics = Path(self.run_dir) / "metrics.json"
        return json.loads(metrics.read_text()) if metrics.is_file() else {}

    def checkpoint(self):
        """Called by submitit on rank 0 after the signal: requeue this job, up to max_requeues times."""
        import submitit

        run_dir = Path(self.run_dir)
        if self.requeues >= self.max_requeues:
            update_record(run_dir, failed=f"preempted or timed out {self.requeues + 1} times; "
                                          f"--slurm.max_requeues {self.max_requeues} allows {self.max_requeues} requeues")
            raise RequeueLimitError(f"run {run_dir.name}: not requeued again: {self.max_requeues} requeues done "
                                    f"(--slurm.max_requeues); resubmit to continue from {run_dir}/checkpoints/last.ckpt")
        _job_event(run_dir, "requeue")
        update_record(run_dir, requeues=self.requeues + 1)
        return submitit.helpers.DelayedSubmission(replace(self, requeues=self.requeues + 1))


def _finish_wandb() -> None:
    import wandb

    if wandb.run is not None:
        wandb.finish()


def _run_outside_slurm(args: list[str]) -> None:
    """One plain process (a variant's test): without SLURM_* Lightning runs it as a single device."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))}
    result = subprocess.run([sys.executable, "-m", "convnets.cli", *args], env=env)
    if result.returncode != 0:
        raise RuntimeError(f"`convnets {args[0]}` failed with exit code {result.returncode}")


def job_fit_args(fit_args: list[str], check_every: int) -> list[str]:
    """The user's fit flags plus Slurm's cluster environment (no Lightning requeue) and the signal hook."""
    # By its class path: importing it here would load Lightning into `convnets submit` and `status`.
    callback = {"class_path": "convnets.slurm.requeue_signal.RequeueOnSignal", "init_args": {"check_every": check_every}}
    return [*fit_args, f"--trainer.plugins={json.dumps(PLUGIN)}", f"--trainer.callbacks+={json.dumps(callback)}"]

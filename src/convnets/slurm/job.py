"""The callable a Slurm job runs (DINO's `run_with_submitit.py` pattern) and what the job does when Slurm signals it.

Every task (one per GPU) runs `TrainingJob()`: `convnets fit ARGV --ckpt_path last` in process,
Lightning's `SLURMEnvironment(auto_requeue=False)` giving each its rank. From its first line the
job only NOTES the signals Slurm sends (no collective, no file write inside a signal handler):
USR2 (the time-limit warning `--signal=USR2@90`, or `scancel --signal=USR2`) and SIGTERM (stock
preemption, `scontrol requeue`, `scancel`, a time limit without warning). `RequeueOnSignal` acts
on the note at the next safe point (a training step, a validation batch, the start of training),
all ranks together: they save runs/<name>/checkpoints/last.ckpt, then rank 0 calls `hand_over`:

  USR2                            the platform requeues the job (`scontrol requeue`, at most
                                  --slurm.max_requeues times)
  SIGTERM, Slurm requeued the job the job's restart count grew: Slurm starts it again by itself
  SIGTERM, job still running      a bare TERM (an admin's kill, `scancel --signal=TERM`): treated as a
                                  preemption, the platform requeues the job
  SIGTERM, job ending otherwise   `scancel`, PreemptMode=CANCEL, a time limit reached without a warning:
                                  not requeued; the job ends non-zero with a line saying how to resume

Slurm shows a requeue and a cancel alike while the job ends (JobState=COMPLETING, Reason=None);
only the restart count (`scontrol show job`: Restarts=) tells them apart: `scontrol requeue` and
PreemptMode=REQUEUE raise it before sending SIGTERM, `scancel` does not. submitit itself ignores
SIGTERM ("Bypassing signal SIGTERM") and requeues on USR2 only.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from convnets.platform.training.tracking import finish_wandb, own_wandb_service
from convnets.utils.files import write_json

log = logging.getLogger(__name__)
RECORD = "slurm.json"  # in the run folder: job ids, requeues, log folder (read by `convnets status`)
LOG_DIR = "slurm"  # submitit's folder inside the run folder: %j_%t_log.out / .err per rank
PLUGIN = {"class_path": "pytorch_lightning.plugins.environments.SLURMEnvironment", "init_args": {"auto_requeue": False}}
INTERRUPTED_EXIT = 3  # a job that saved and stopped without a requeue (cancelled, requeue refused or used up)


class RequeueLimitError(RuntimeError):
    """The run was preempted or timed out more often than --slurm.max_requeues allows."""


def read_record(run_dir: Path) -> dict:
    path = Path(run_dir) / RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def update_record(run_dir: Path, **changes) -> dict:
    record = {**read_record(run_dir), **changes}
    write_json(Path(run_dir) / RECORD, record)
    return record


def restart_count() -> int:
    """How often Slurm has started this job again (0 for its first run)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def job_event(run_dir: Path, event: str, **details) -> None:
    """Appends {event, job id, time, details} to the record (rank 0 only)."""
    job_id = os.environ.get("SLURM_JOB_ID")
    events = read_record(run_dir).get("events", [])
    events.append(
        {
            "event": event,
            "job_id": job_id,
            "hostname": os.uname().nodename,
            "unix_time": time.time(),
            "slurm_restart_count": restart_count(),
            **details,
        }
    )
    update_record(run_dir, events=events, **({"job_id": job_id} if job_id else {}))


# --- signal notes: set by the handler, read at the next safe point --------------------------------------

REQUEUE_SIGNAL = signal.SIGUSR2  # submitit's default (SUBMITIT_PREEMPT_SIGNAL); `preempt_signal()` reads the override
_noted: dict[str, int] = {}  # {"signum": N, "after_step": S} once a preemption signal arrived in this process
progress = {"step": -1}  # the last training step finished (set by RequeueOnSignal): where a signal landed


def preempt_signal() -> int:
    import submitit

    return submitit.JobEnvironment._usr_sig()


def _note(signum: int, frame: object) -> None:
    # A rank that is waiting in a collective cannot act on its own: only note (and keep a TERM over a USR2:
    # TERM means the job is ending now, USR2 that it will).
    if _noted.get("signum") != signal.SIGTERM:
        _noted.update(signum=signum, after_step=progress["step"])


def install_signal_notes(usr_signal: int = REQUEUE_SIGNAL) -> None:
    """Replace submitit's handlers (requeue from inside the handler; ignore SIGTERM) with a note."""
    for signum in (usr_signal, signal.SIGTERM):
        if signal.getsignal(signum) is not _note:
            signal.signal(signum, _note)


def noted_signal() -> int | None:
    return _noted.get("signum")


def noted_after_step() -> int:
    """The training step this process had finished when the signal came (-1: before training)."""
    return _noted.get("after_step", -1)


def signal_code(signum: int | None) -> int:
    """0: none, 1: the requeue warning, 2: SIGTERM (what the ranks all-reduce with MAX)."""
    return 0 if signum is None else 2 if signum == signal.SIGTERM else 1


# --- what rank 0 does after the save ------------------------------------------------------------------


def sigterm_cause(show_job: str, restarts_at_start: int) -> str:
    """From `scontrol show job -o ID`: "requeued" (by Slurm), "running" (a bare TERM) or "ending"."""
    fields = dict(token.split("=", 1) for token in show_job.split() if "=" in token)
    if int(fields.get("Restarts", 0) or 0) > restarts_at_start or fields.get("JobState") in ("PENDING", "REQUEUED"):
        return "requeued"
    return "running" if fields.get("JobState") == "RUNNING" else "ending"


def _show_job(job_id: str) -> str:
    result = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=60)
    return result.stdout if result.returncode == 0 else ""


def resume_hint(run_dir: Path) -> str:
    if os.environ.get("SLURM_JOB_ID"):
        return (
            f"to resume, submit the same command again (same --run_name {run_dir.name}): it continues from "
            f"{run_dir}/checkpoints/last.ckpt"
        )
    return f"to resume, run the same command with --ckpt_path last (it loads {run_dir}/checkpoints/last.ckpt)"


def hand_over(run_dir: Path, signum: int, step: int | None, *, max_requeues: int | None = None) -> int:
    """Rank 0, after every rank saved last.ckpt: requeue, let Slurm requeue, or stop. Returns the exit code.

    `max_requeues` bounds the platform's requeues of a job that submitit does not run (the plain sbatch
    template); under submitit, TrainingJob.checkpoint() counts them.

    The caller has finished the W&B writer: Slurm's SIGTERM reaches W&B's service process too.
    """
    run_dir = Path(run_dir)
    job_id = os.environ.get("SLURM_JOB_ID")
    name = signal.Signals(signum).name
    saved = f"saved last.ckpt at step {step}" if step is not None else "training was saved; its test was not run"
    if not job_id:  # not a Slurm job (a plain `convnets fit` with the hook): nothing to requeue
        log.error("%s received: %s; %s", name, saved, resume_hint(run_dir))
        return INTERRUPTED_EXIT
    cause = sigterm_cause(_show_job(job_id), restart_count()) if signum == signal.SIGTERM else "warned"
    if cause == "requeued":
        job_event(run_dir, "requeued by Slurm", signal=name, saved_step=step)
        update_record(run_dir, slurm_requeues=read_record(run_dir).get("slurm_requeues", 0) + 1)
        log.warning("%s: Slurm requeues job %s (scontrol requeue or preemption); %s", name, job_id, saved)
        return 0
    if cause == "ending":
        job_event(run_dir, "cancelled", signal=name, saved_step=step)
        log.error("job %s cancelled (%s; not requeued): %s; %s", job_id, name, saved, resume_hint(run_dir))
        return INTERRUPTED_EXIT
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        return _submitit_requeue(run_dir, signum, step)
    return _scontrol_requeue(run_dir, signum, step, max_requeues)


def _scontrol_requeue(run_dir: Path, signum: int, step: int | None, max_requeues: int | None) -> int:
    """A job submitit does not run (the sbatch template): `scontrol requeue` it, counted by Slurm's restarts."""
    job_id, done = os.environ["SLURM_JOB_ID"], restart_count()
    if max_requeues is not None and done >= max_requeues:
        update_record(run_dir, failed=f"requeued {done} times; --slurm.max_requeues {max_requeues}")
        log.error(
            "job %s: not requeued again: %d requeues done (--slurm.max_requeues %d); %s",
            job_id,
            done,
            max_requeues,
            resume_hint(run_dir),
        )
        return INTERRUPTED_EXIT
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        reason = ((result.stderr or result.stdout).strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        update_record(run_dir, failed=f"Slurm refused the requeue: {reason}")
        log.error(
            "Slurm refused to requeue job %s (%s; is JobRequeue=0 set, or --no-requeue?); %s",
            job_id,
            reason,
            resume_hint(run_dir),
        )
        return INTERRUPTED_EXIT
    job_event(run_dir, "requeue", signal=signal.Signals(signum).name, saved_step=step)
    update_record(run_dir, requeues=read_record(run_dir).get("requeues", 0) + 1)
    log.warning(
        "job %s requeued (%d of at most %s requeues); it resumes from %s/checkpoints/last.ckpt",
        job_id,
        done + 1,
        max_requeues if max_requeues is not None else "unlimited",
        run_dir,
    )
    return INTERRUPTED_EXIT  # non-zero: srun --kill-on-bad-exit ends the other ranks now, not after KillWait


def _submitit_requeue(run_dir: Path, signum: int, step: int | None) -> int:
    """submitit's own requeue (TrainingJob.checkpoint() stores the next job, then `scontrol requeue`)."""
    import submitit

    handler = _submitit_handler()
    try:
        handler.checkpoint_and_try_requeue(signum)
    except SystemExit:  # submitit exits once `scontrol requeue` succeeded
        job_event(run_dir, "requeue", signal=signal.Signals(signum).name, saved_step=step)
        update_record(run_dir, requeues=read_record(run_dir).get("requeues", 0) + 1)
        return 0
    except RequeueLimitError as exc:
        log.error("%s", exc)
    except (subprocess.CalledProcessError, OSError, submitit.core.utils.UncompletedJobError) as exc:
        update_record(run_dir, failed=f"Slurm refused the requeue: {exc}")
        log.error(
            "Slurm refused to requeue job %s (%s; is JobRequeue=0 set, or --no-requeue?); %s",
            os.environ.get("SLURM_JOB_ID"),
            exc,
            resume_hint(run_dir),
        )
    return INTERRUPTED_EXIT


def _submitit_handler():
    """The SignalHandler submitit built for this job (its checkpoint-and-requeue method is what we call)."""
    import submitit
    from submitit.core.job_environment import SignalHandler
    from submitit.core.utils import DelayedSubmission

    env = submitit.JobEnvironment()
    return SignalHandler(env, env.paths, DelayedSubmission.load(env.paths.submitted_pickle))


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

        install_signal_notes(preempt_signal())  # from here on a signal is acted on at the next safe point
        own_wandb_service()  # the job inherits the submitting shell's environment, W&B service included
        rank = submitit.JobEnvironment().global_rank
        run_dir = Path(self.run_dir)
        if rank == 0:
            job_event(run_dir, "start" if restart_count() == 0 else f"resume after requeue {restart_count()}")
        # `last`: Lightning loads runs/<name>/checkpoints/last.ckpt when it exists, else starts fresh.
        run_lightning(["fit", *self.fit_args, "--ckpt_path", "last"])
        if rank != 0:
            return {}
        if self.test_args:
            finish_wandb()  # the test appends to the same W&B run id: this process must let go of it first
            if noted_signal() is not None or not _run_test(["test", *self.test_args]):
                # Signalled after the fit's last check or during the test: the fit is saved, the test is not
                # done; the requeued job's fit finds its last epoch done and runs the test.
                sys.exit(hand_over(run_dir, noted_signal(), step=None))
        job_event(run_dir, "finished")
        metrics = run_dir / "metrics.json"
        return json.loads(metrics.read_text()) if metrics.is_file() else {}

    def checkpoint(self):
        """Called by submitit on rank 0 after the signal: the next job, up to max_requeues requeues."""
        import submitit

        run_dir = Path(self.run_dir)
        if self.requeues >= self.max_requeues:
            update_record(
                run_dir,
                failed=f"preempted or timed out {self.requeues + 1} times; "
                f"--slurm.max_requeues {self.max_requeues} allows {self.max_requeues} requeues",
            )
            raise RequeueLimitError(
                f"run {run_dir.name}: not requeued again: {self.max_requeues} requeues done "
                f"(--slurm.max_requeues); resubmit to continue from {run_dir}/checkpoints/last.ckpt"
            )
        # Recorded only once `scontrol requeue` succeeded (hand_over), not here: Slurm may still refuse it.
        return submitit.helpers.DelayedSubmission(replace(self, requeues=self.requeues + 1))


def _run_test(args: list[str], *, poll_s: float = 1.0) -> bool:
    """A variant's test as one plain process: True once done; False when a preemption signal stopped it.

    Without SLURM_* Lightning runs it as a single device. Slurm signals every process of the job, the
    test's too: it ignores the signals (USR2 would kill it) and this process, which noted them, ends it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))}
    ignored = {REQUEUE_SIGNAL, preempt_signal(), signal.SIGTERM}

    def ignore_signals() -> None:
        for signum in ignored:
            signal.signal(signum, signal.SIG_IGN)

    proc = subprocess.Popen([sys.executable, "-m", "convnets.cli", *args], env=env, preexec_fn=ignore_signals)
    while True:
        try:
            code = proc.wait(timeout=poll_s)
            break
        except subprocess.TimeoutExpired:
            if noted_signal() is not None:
                proc.kill()
                proc.wait()
                log.warning(
                    "%s during `convnets %s`: stopped it; the requeued job runs it again",
                    signal.Signals(noted_signal()).name,
                    args[0],
                )
                return False
    if code != 0:
        raise RuntimeError(f"`convnets {args[0]}` failed with exit code {code}")
    return True


def job_fit_args(fit_args: list[str], check_every: int, *, max_requeues: int | None = None) -> list[str]:
    """The user's fit flags plus Slurm's cluster environment (no Lightning requeue) and the signal hook.

    `max_requeues`: only for jobs submitit does not run (the sbatch template), where the hook itself
    requeues; under submitit the job counts its requeues.
    """
    # By its class path: importing it here would load Lightning into `convnets submit` and `status`.
    init = {"check_every": check_every, **({"max_requeues": max_requeues} if max_requeues is not None else {})}
    callback = {"class_path": "convnets.slurm.requeue_signal.RequeueOnSignal", "init_args": init}
    return [*fit_args, f"--trainer.plugins={json.dumps(PLUGIN)}", f"--trainer.callbacks+={json.dumps(callback)}"]

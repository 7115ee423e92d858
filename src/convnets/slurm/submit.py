"""Submitting runs to Slurm through submitit: the run's fixed name and folder, the batch script, sbatch.

Everything is checked before anything is queued: the fit config is parsed as `convnets fit` would
(unknown keys, types), the Trainer's devices/num_nodes/accelerator are derived from the request
(an override that contradicts it is an error), a run whose job is still queued or running is refused,
and sbatch's own refusal is one line. The run name is fixed here, so a requeued job finds
runs/<name>/checkpoints/last.ckpt and the run's W&B id. Shared by single runs and arrays (arrays.py).
"""

from __future__ import annotations

import contextlib
import io
import logging
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from convnets.slurm.job import LOG_DIR, TrainingJob, job_fit_args, read_record, update_record
from convnets.slurm.request import SlurmRequest, check_trainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedRun:
    """One job: its run folder and the exact `convnets fit` flags it runs."""

    name: str
    run_dir: Path
    fit_args: list[str]
    test_args: list[str]


def resolve_run(
    fit_args: list[str], request: SlurmRequest, *, default_name: str | None = None, need_data: bool = True
) -> PlannedRun:
    """Parse and check the fit flags, fix the run name and folder (absolute), add the derived geometry."""
    from convnets.platform.training.lightning_cli import resolve_fit_config

    user = resolve_fit_config(fit_args)  # ValueError: one line from the parser
    check_trainer(user, request)
    name = user.get("run_name") or default_name or f"{user['model']['arch']}-{time.strftime('%Y%m%d-%H%M%S')}"
    runs_dir = Path(user.get("runs_dir") or "runs").resolve()
    args = [*fit_args, *request.trainer_flags(), "--runs_dir", str(runs_dir), "--run_name", name]
    final = resolve_fit_config(args)
    data_dir = (final.get("data") or {}).get("data_dir")
    if need_data and data_dir and not (Path(data_dir) / "train" / "manifest.json").is_file():
        raise ValueError(
            f"data.data_dir: {Path(data_dir).resolve()}/train/manifest.json is missing; write the shards "
            "first (`convnets shards ...`) on storage the compute nodes see"
        )
    return PlannedRun(name=name, run_dir=runs_dir / name, fit_args=args, test_args=[])


def executor_parameters(request: SlurmRequest, *, job_name: str) -> dict:
    return {"job_name": job_name, **request.sbatch_parameters()}


# Each task's process runs under task_guard, which names the rank, its host and the cause when it dies.
PYTHON = f"{shlex.quote(sys.executable)} -m convnets.slurm.task_guard {shlex.quote(sys.executable)}"


def make_executor(folder: Path, request: SlurmRequest, *, job_name: str):
    """submitit's executor: it needs Slurm's `srun` on PATH (a dry run uses batch_script instead)."""
    import submitit

    # submitit's own timeout budget is set above ours: TrainingJob.checkpoint() enforces max_requeues.
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=request.max_requeues + 1, python=PYTHON)
    executor.update_parameters(**executor_parameters(request, job_name=job_name))
    return executor


def batch_script(folder: Path, request: SlurmRequest, *, job_name: str, count: int | None = None) -> str:
    """The script sbatch gets (one job, or an array of COUNT), as submitit writes it at submission.

    Built from submitit's own writer without its executor, which refuses to exist where `srun` is
    missing: a dry run works on a laptop without Slurm.
    """
    from submitit.slurm.slurm import _make_sbatch_string

    folder = Path(folder).expanduser().absolute()  # as SlurmExecutor stores it
    command = " ".join([PYTHON, "-u -m submitit.core._submit", shlex.quote(str(folder))])  # as SlurmExecutor's
    return _make_sbatch_string(
        command=command, folder=folder, map_count=count, **executor_parameters(request, job_name=job_name)
    )


# Squeue's states of a job that has not ended (a requeued job is PENDING or REQUEUE_HOLD again).
LIVE_STATES = (
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
    "SUSPENDED",
    "SPECIAL_EXIT",
)


def refuse_live_runs(runs: list[PlannedRun]) -> None:
    """A run whose recorded job is still queued or running is refused: two jobs would share its
    last.ckpt and W&B id. A finished job (any final state) may be resubmitted: it resumes."""
    from convnets.slurm.status import job_state

    for run in runs:
        job_id = read_record(run.run_dir).get("job_id")
        if not job_id:
            continue
        state = job_state(str(job_id))
        if state in LIVE_STATES:
            raise ValueError(
                f"run {run.name}: its job {job_id} is still {state} ({run.run_dir}/slurm.json); "
                f"wait for it to end, or `scancel {job_id}`, before submitting this run again"
            )


def submit_jobs(runs: list[PlannedRun], request: SlurmRequest, *, folder: Path, job_name: str) -> list:
    """One job, or one array for several runs; sbatch's refusal becomes a one-line ValueError."""
    import submitit

    refuse_live_runs(runs)
    executor = make_executor(folder, request, job_name=job_name)
    jobs_in = [
        TrainingJob(
            fit_args=tuple(job_fit_args(r.fit_args, request.preempt_check_steps)),
            run_dir=str(r.run_dir),
            max_requeues=request.max_requeues,
            test_args=tuple(r.test_args),
        )
        for r in runs
    ]
    created = [p for p in (folder, *(r.run_dir for r in runs)) if not p.exists()]
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's refusal: ours is one line
            if len(jobs_in) == 1:
                jobs = [executor.submit(jobs_in[0])]
            else:
                executor.update_parameters(array_parallelism=len(jobs_in))
                jobs = _array(executor, jobs_in)
    except (submitit.core.utils.FailedJobError, OSError) as exc:
        for path in created:  # nothing queued, nothing left behind
            shutil.rmtree(path, ignore_errors=True)
        raise ValueError(f"sbatch refused the job: {_sbatch_reason(exc)}") from None
    for run, job in zip(runs, jobs):
        update_record(
            run.run_dir,
            job_id=job.job_id,
            log_folder=str(folder),
            fit_args=run.fit_args,
            max_requeues=request.max_requeues,
            requeues=0,
            submitted_unix_time=time.time(),
        )
    return jobs


def _array(executor, jobs_in: list[TrainingJob]) -> list:
    with executor.batch():
        jobs = [executor.submit(job) for job in jobs_in]
    return jobs


def _sbatch_reason(exc: BaseException) -> str:
    """sbatch's own `error:` line out of submitit's multi-line message."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln.lower()]
    return (errors[-1] if errors else lines[-1] if lines else type(exc).__name__).split("error:", 1)[-1].strip()


def run_one(args, fit_args: list[str], request: SlurmRequest) -> int:
    """`convnets submit` of one run: print the script (--dry-run), or submit it (and --wait)."""
    run = resolve_run(fit_args, request, need_data=not args.dry_run)  # the shards may exist only on the cluster
    folder = run.run_dir / LOG_DIR
    command = shlex.join(
        ["convnets", "fit", *job_fit_args(run.fit_args, request.preempt_check_steps), "--ckpt_path", "last"]
    )
    if args.dry_run:
        print(batch_script(folder, request, job_name=run.name))
        print(f"# each of the {request.world_size} tasks runs (in process, through submitit):\n# {command}")
        return 0
    (job,) = submit_jobs([run], request, folder=folder, job_name=run.name)
    print(
        f"submitted job {job.job_id}: run {run.run_dir}; logs {folder}/{job.job_id}_<rank>_log.out|err; "
        f"`convnets status {run.run_dir}`"
    )
    if args.wait:
        from convnets.slurm.status import status_text, wait_for

        failed = wait_for([job])
        print(status_text(run.run_dir))
        return 1 if failed else 0
    return 0

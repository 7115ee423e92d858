"""`convnets status RUN`: the job's state, requeues so far, the latest metrics and where the logs are."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from convnets.slurm.job import read_record
from convnets.slurm.task_guard import REPORT_PREFIX

FINAL = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
)


def resolve_run_dir(run: str) -> Path:
    """RUN is a run folder, or a name under runs/."""
    for candidate in (Path(run), Path("runs") / run):
        if candidate.is_dir():
            return candidate
    raise ValueError(f"run {run}: no such run folder (nor runs/{run})")


def job_state(job_id: str) -> str:
    """squeue while the job is known to the controller, else sacct; UNKNOWN when neither answers."""
    for cmd in (
        ["squeue", "--noheader", "-o", "%T", "-j", job_id],
        ["sacct", "--noheader", "-X", "-P", "-o", "State", "-j", job_id],
    ):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        states = [ln.split()[0] for ln in out.stdout.splitlines() if ln.strip()]
        if out.returncode == 0 and states:
            return states[-1]
    try:  # finished jobs stay in scontrol for MinJobAge seconds, also without accounting
        out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "UNKNOWN"
    return next((t.split("=", 1)[1] for t in out.split() if t.startswith("JobState=")), "UNKNOWN")


def latest_metrics(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return {}
    metrics = json.loads(path.read_text())
    last_val = (metrics.get("val_history") or [{}])[-1]
    keep = {
        k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k.startswith(("val_", "test_", "train_"))
    }
    return {**keep, **{k: v for k, v in last_val.items() if k.startswith("val_") or k == "epoch"}}


LOG_TAIL_BYTES = 256 * 1024  # the guard's line is among a task log's last lines; logs can grow to GBs


def dead_rank_line(logs: list[Path]) -> str | None:
    """The line a task's guard wrote when its rank died (rank, host, cause), from the job's .err logs."""
    for path in logs:
        if path.suffix != ".err":
            continue
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
            tail = f.read().decode("utf-8", errors="replace")
        found = [ln for ln in tail.splitlines() if ln.startswith(REPORT_PREFIX)]
        if found:
            return found[-1]
    return None


def status(run_dir: Path) -> dict:
    record = read_record(run_dir)
    job_id = record.get("job_id")
    state = job_state(str(job_id)) if job_id else "not submitted through `convnets submit`"
    logs = sorted(Path(record["log_folder"]).glob(f"{job_id}_*_log.*")) if job_id and record.get("log_folder") else []
    return {
        "run_dir": str(run_dir),
        "job_id": job_id,
        "state": state,
        "requeues": record.get("requeues", 0),
        "max_requeues": record.get("max_requeues"),
        "slurm_requeues": record.get("slurm_requeues", 0),
        "failed": record.get("failed"),
        "dead_rank": dead_rank_line(logs),
        "metrics": latest_metrics(run_dir),
        "logs": [str(p) for p in logs],
        "checkpoint": str(run_dir / "checkpoints" / "last.ckpt")
        if (run_dir / "checkpoints" / "last.ckpt").is_file()
        else None,
    }


def status_text(run_dir: Path) -> str:
    s = status(Path(run_dir))
    metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(s["metrics"].items()))
    lines = [
        f"run:        {s['run_dir']}",
        f"job:        {s['job_id']} {s['state']}",
        f"requeues:   {s['requeues']} of at most {s['max_requeues']}" + (f" ({s['failed']})" if s["failed"] else ""),
        *(
            [f"            and {s['slurm_requeues']} by Slurm itself (preemption, scontrol requeue; not counted)"]
            if s["slurm_requeues"]
            else []
        ),
        *([f"rank died:  {s['dead_rank'].removeprefix('convnets: ')}"] if s["dead_rank"] else []),
        f"metrics:    {metrics or '(none yet)'}",
        f"checkpoint: {s['checkpoint'] or '(none yet)'}",
        "logs:       " + ("\n            ".join(s["logs"]) or "(none yet)"),
    ]
    return "\n".join(lines)


def wait_for(jobs: list, *, poll_s: float = 1.0) -> list[str]:
    """Until every job has ended (its result file exists; works without Slurm accounting).

    A poll stats each job's result file; submitit spaces its own sacct calls (2 s apart at least, more as jobs age).

    Returns one line per failed job (its exception's last line), also printed to stderr.
    """
    import sys

    while not all(job.done() for job in jobs):
        time.sleep(poll_s)
    deadline = time.monotonic() + 60  # the result is written before Slurm marks the job ended
    while time.monotonic() < deadline and any(job_state(job.job_id) in ("RUNNING", "COMPLETING") for job in jobs):
        time.sleep(1)
    failed = []
    for job in jobs:
        error = job.exception()
        if error is not None:
            lines = [ln for ln in str(error).strip().splitlines() if ln.strip()]
            failed.append(
                f"job {job.job_id} failed: {lines[-1] if lines else type(error).__name__} (logs: {job.paths.stderr})"
            )
            print(f"convnets: {failed[-1]}", file=sys.stderr)
    return failed


def add_status_arguments(parser) -> None:
    parser.add_argument("run", help="a run folder (runs/NAME) or a run name")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run_status(args) -> int:
    run_dir = resolve_run_dir(args.run)
    print(json.dumps(status(run_dir), indent=2) if args.json else status_text(run_dir))
    return 0

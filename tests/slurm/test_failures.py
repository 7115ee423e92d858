"""What a real cluster does when things go wrong: a rank that dies, a run submitted twice."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.slurm.conftest import job_state, wait_for_jobs
from tests.slurm.helpers import fit_flags, run_convnets, squeue_empty

pytestmark = [pytest.mark.slurm, pytest.mark.integration, pytest.mark.slow]


def _job_id(stdout: str) -> str:
    match = re.search(r"submitted job (\d+)", stdout)
    assert match, stdout
    return match.group(1)


def _task_pid(job_id: str, rank: int) -> int:
    """The process running task RANK of the job (submitit's entry point), read from /proc like `ps e`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            environ = dict(item.split("=", 1) for item in (proc / "environ").read_text().split("\0") if "=" in item)
            cmdline = (proc / "cmdline").read_text()
        except (OSError, ValueError):
            continue
        rank_process = "submitit.core._submit" in cmdline and "task_guard" not in cmdline  # not its watching parent
        if (environ.get("SLURM_JOB_ID"), environ.get("SLURM_PROCID")) == (job_id, str(rank)) and rank_process:
            found.append(int(proc.name))
    assert len(found) == 1, f"task {rank} of job {job_id}: processes {found}"
    return found[0]


@pytest.mark.dali
def test_a_killed_rank_ends_the_job_within_30_s_naming_it(slurm_cluster, digits_shards, tmp_path, capsys):
    """SIGKILL (the OOM-killer's signal) to rank 1 mid-fit: srun ends rank 0 too, the job FAILS, no requeue."""
    flags = [*fit_flags(digits_shards, tmp_path, "killed", epochs=1), "--data.batch_size", "2"]  # ~360 steps
    submitted = run_convnets(slurm_cluster, "submit", *flags, "--slurm.cluster", "local", timeout=120)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id, run_dir, env = _job_id(submitted.stdout), tmp_path / "killed", slurm_cluster["env"]
    deadline = time.monotonic() + 180
    while not (run_dir / "plots" / "train_samples.png").exists():  # drawn at the first training batch
        assert time.monotonic() < deadline and job_state(env, job_id) in ("PENDING", "RUNNING"), job_state(env, job_id)
        time.sleep(0.2)

    os.kill(_task_pid(job_id, 1), signal.SIGKILL)
    killed = time.monotonic()
    wait_for_jobs(env, [job_id], timeout=120)
    ended_s = time.monotonic() - killed
    print(f"job {job_id} ended {ended_s:.1f} s after its rank 1 was killed")
    assert ended_s < 30, f"the job ran on {ended_s:.0f} s after a rank died"

    control = subprocess.run(
        ["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True, timeout=30
    ).stdout
    assert job_state(env, job_id) == "FAILED" and "Restarts=0" in control, control  # a crash is not a preemption
    record = json.loads((run_dir / "slurm.json").read_text())
    assert [e["event"] for e in record["events"]] == ["start"] and record["requeues"] == 0
    logs = {p.name: p.read_text() for p in (run_dir / "slurm").glob(f"{job_id}_*_log.err")}
    named = {name: [ln for ln in text.splitlines() if ln.startswith("convnets: rank ")] for name, text in logs.items()}
    assert named[f"{job_id}_0_log.err"] == [], "rank 0 only followed rank 1 down"
    (line,) = named[f"{job_id}_1_log.err"]
    assert line.startswith(
        f"convnets: rank 1 (Slurm task 1 of job {job_id} on host localhost) was killed by SIGKILL "
        "(the kernel's OOM-killer"
    ), line
    assert re.search(
        r"srun: error: localhost: tasks? [0-9-]*1[0-9-]*: Killed", logs[f"{job_id}_0_log.err"]
    )  # srun's word
    from convnets.cli import main

    capsys.readouterr()
    assert main(["status", str(run_dir), "--json"]) == 0  # `convnets status` names the rank too
    shown = json.loads(capsys.readouterr().out)
    assert (shown["state"], shown["dead_rank"], shown["requeues"]) == ("FAILED", line, 0)


def _submit_in_process(flags: list, capfd, monkeypatch) -> subprocess.CompletedProcess:
    """`convnets submit` in this process (a submission loads no training code: seconds saved per call)."""
    from convnets.cli import main

    monkeypatch.delenv("CONVNETS_RUN_NAME", raising=False)
    capfd.readouterr()
    code = main(["submit", *map(str, flags)])
    out = capfd.readouterr()
    return subprocess.CompletedProcess(["convnets", "submit"], code, out.out, out.err)


def test_a_run_whose_job_is_live_is_not_submitted_again(slurm_cluster, digits_shards, tmp_path, capfd, monkeypatch):
    """Two jobs of one run would share its last.ckpt and W&B id; once the first has ended, resubmitting is fine."""
    flags = [
        *fit_flags(digits_shards, tmp_path, "twice", epochs=1),
        "--slurm.cluster",
        "local",
        "--slurm.additional_parameters",
        '{"hold": true}',
    ]  # held: stays PENDING until released
    first = _submit_in_process(flags, capfd, monkeypatch)
    assert first.returncode == 0, first.stderr[-3000:]
    job_id, env = _job_id(first.stdout), slurm_cluster["env"]
    try:
        again = _submit_in_process(flags, capfd, monkeypatch)
        assert again.returncode == 2 and again.stdout == ""
        assert again.stderr.strip().splitlines() == [
            (
                f"convnets: error: run twice: its job {job_id} is still PENDING ({tmp_path}/twice/slurm.json); wait "
                f"for it to end, or `scancel {job_id}`, before submitting this run again"
            )
        ]
        assert json.loads((tmp_path / "twice" / "slurm.json").read_text())["job_id"] == job_id  # record untouched
    finally:
        subprocess.run(["scancel", job_id], env=env, check=True, timeout=30)
    wait_for_jobs(env, [job_id], timeout=60)
    assert job_state(env, job_id) == "CANCELLED"
    resubmitted = _submit_in_process(flags, capfd, monkeypatch)
    assert resubmitted.returncode == 0, resubmitted.stderr[-3000:]
    new_id = _job_id(resubmitted.stdout)
    subprocess.run(["scancel", new_id], env=env, check=True, timeout=30)
    assert new_id != job_id and json.loads((tmp_path / "twice" / "slurm.json").read_text())["job_id"] == new_id
    wait_for_jobs(env, [new_id], timeout=60)
    assert squeue_empty(slurm_cluster)

"""`convnets status` on a run folder as a Slurm job leaves it: requeues of both kinds and the rank that died."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from convnets.cli import main
from convnets.utils.files import write_json


def _run_folder(tmp_path, **record) -> tuple:
    run_dir, logs = tmp_path / "r", tmp_path / "r" / "slurm"
    logs.mkdir(parents=True)
    write_json(run_dir / "slurm.json", {"job_id": "77", "log_folder": str(logs), "max_requeues": 3, **record})
    for rank in (0, 1):
        (logs / f"77_{rank}_log.out").write_text("")
        (logs / f"77_{rank}_log.err").write_text("Epoch 0: training\n")
    return run_dir, logs


def _status(run_dir, capsys, monkeypatch, *flags) -> str:
    monkeypatch.setenv("PATH", str(run_dir))  # no squeue, sacct nor scontrol: the job's state reads UNKNOWN
    assert main(["status", str(run_dir), *flags]) == 0
    return capsys.readouterr().out


def test_status_counts_the_requeues_slurm_made_apart_from_the_platforms(tmp_path, capsys, monkeypatch):
    run_dir, _ = _run_folder(tmp_path, requeues=1, slurm_requeues=2)
    status = json.loads(_status(run_dir, capsys, monkeypatch, "--json"))
    assert (status["state"], status["requeues"], status["slurm_requeues"], status["dead_rank"]) == (
        "UNKNOWN",
        1,
        2,
        None,
    )
    text = _status(run_dir, capsys, monkeypatch).splitlines()
    assert text[2:4] == [
        "requeues:   1 of at most 3",
        "            and 2 by Slurm itself (preemption, scontrol requeue; not counted)",
    ]
    assert not any(line.startswith("rank died:") for line in text)


def test_status_names_the_rank_that_died_as_its_task_guard_wrote_it(tmp_path, capsys, monkeypatch):
    run_dir, logs = _run_folder(tmp_path)
    # The real guard around a rank the OOM-killer's signal ends, its stderr appended to task 1's log as Slurm does.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLURM")},
        "PATH": str(tmp_path),  # no scancel/scontrol: the guard only reports
        "SLURM_PROCID": "1",
        "SLURM_JOB_ID": "77",
        "SLURMD_NODENAME": "gpu017",
    }
    with open(logs / "77_1_log.err", "a") as err:
        rank = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
        guard = [sys.executable, "-m", "convnets.slurm.task_guard", sys.executable, "-c", rank]
        assert subprocess.run(guard, env=env, stderr=err, timeout=60).returncode == -9
    (written,) = [ln for ln in (logs / "77_1_log.err").read_text().splitlines() if ln.startswith("convnets: rank 1")]

    status = json.loads(_status(run_dir, capsys, monkeypatch, "--json"))
    assert status["dead_rank"] == written and status["slurm_requeues"] == 0
    text = _status(run_dir, capsys, monkeypatch).splitlines()
    assert "rank died:  rank 1 (Slurm task 1 of job 77 on host gpu017) was killed by SIGKILL" in "\n".join(text)
    assert not any("by Slurm itself" in line for line in text)  # no requeue by Slurm: no such line

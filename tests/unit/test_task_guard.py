"""The Slurm task watcher: one line naming the rank, host and cause when its rank dies; silent otherwise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def _guarded(code: str, tmp_path) -> subprocess.CompletedProcess:
    # No Slurm here: no job step to stop and no scontrol on PATH, so only the report itself runs.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLURM")},
        "PATH": str(tmp_path),
        "SLURM_PROCID": "3",
        "SLURM_JOB_ID": "77",
        "SLURMD_NODENAME": "gpu017",
    }
    return subprocess.run(
        [sys.executable, "-m", "convnets.slurm.task_guard", sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_rank_killed_by_a_signal_is_named_and_the_guard_dies_the_same_way(tmp_path):
    result = _guarded(
        "import os, signal; print('training', flush=True); os.kill(os.getpid(), signal.SIGSEGV)", tmp_path
    )
    assert result.returncode == -signal.SIGSEGV and result.stdout == "training\n"
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        "convnets: rank 3 (Slurm task 3 of job 77 on host gpu017) was killed by SIGSEGV (a crash in native code"
    ), line


def test_a_rank_that_finishes_is_not_reported(tmp_path):
    result = _guarded("print('done')", tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "done\n", "")


def test_an_error_exit_is_reported_with_its_code(tmp_path):
    result = _guarded("import sys; sys.exit(5)", tmp_path)
    assert (
        result.returncode == 5
        and "convnets: rank 3 (Slurm task 3 of job 77 on host gpu017) exited with code 5" in result.stderr
    )

"""The cluster itself: a plain sbatch job runs on the test node (guards every other slurm test)."""
from __future__ import annotations

import subprocess

import pytest

from tests.slurm.conftest import job_state, wait_for_jobs


@pytest.mark.slurm
def test_a_plain_batch_job_runs_two_tasks(slurm_cluster, tmp_path):
    env, out = slurm_cluster["env"], tmp_path / "out.txt"
    result = subprocess.run(["sbatch", "--parsable", "--ntasks=2", f"--output={out}", "--wrap",
                             "srun bash -c 'echo task $SLURM_PROCID of $SLURM_NTASKS'"],
                            env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip().split(";")[0]
    wait_for_jobs(env, [job_id], timeout=60)
    assert job_state(env, job_id) == "COMPLETED"
    assert sorted(out.read_text().split("\n")[:2]) == ["task 0 of 2", "task 1 of 2"]

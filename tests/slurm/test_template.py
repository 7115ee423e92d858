"""`convnets slurm template`'s plain sbatch script preempted on the real cluster: it saves, requeues and resumes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.slurm.conftest import job_state, wait_for_jobs
from tests.slurm.helpers import (
    PREEMPT_BATCH,
    assert_same_weights,
    convnets_env,
    fit_flags,
    release_requeued,
    run_convnets,
    train_count,
)

pytestmark = [pytest.mark.slurm, pytest.mark.integration, pytest.mark.slow, pytest.mark.dali]
BATCH = PREEMPT_BATCH  # per rank: ~180 steps an epoch on 2 ranks, so the signal lands mid-epoch


def test_the_template_job_saves_requeues_and_resumes_on_usr2(
    slurm_cluster, digits_shards, tmp_path, uninterrupted_epoch
):
    runs = tmp_path / "runs"
    flags = [
        *fit_flags(digits_shards, runs, "tmplq", epochs=1),
        "--data.batch_size",
        str(BATCH),
        "--trainer.logger",
        "false",
    ]
    made = run_convnets(
        slurm_cluster,
        "slurm",
        "template",
        "--slurm.cluster",
        "local",
        "--slurm.preempt_check_steps",
        "1",
        "--job-name",
        "tmplq",
        "--logs",
        str(tmp_path / "tmplq"),
        "--",
        *flags,
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    script = tmp_path / "job.sbatch"
    script.write_text(made.stdout)
    # The job runs `convnets` from PATH, as on a cluster with the package installed.
    env = {**convnets_env(slurm_cluster), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    submitted = subprocess.run(
        ["sbatch", "--parsable", str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]

    deadline = time.monotonic() + 180
    while not (runs / "tmplq" / "plots" / "train_samples.png").exists():  # drawn at the first training batch
        assert time.monotonic() < deadline, "training did not start within 180 s"
        time.sleep(0.1)
    subprocess.run(["scancel", "--signal=USR2", job_id], env=env, check=True, timeout=30)  # as --signal=USR2@90 would
    release_requeued(env, job_id)
    wait_for_jobs(env, [job_id], timeout=400)
    err = (tmp_path / "tmplq.err").read_text()
    assert job_state(env, job_id) == "COMPLETED", err[-3000:]
    control = subprocess.run(
        ["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True, timeout=30
    ).stdout
    assert "Restarts=1" in control, control

    saved_at = int(re.search(r"signal received after step -?\d+: saved .*last\.ckpt at step (\d+)", err).group(1))
    per_rank = -(-train_count(digits_shards) // 2)  # the epoch plan: each of 2 ranks takes half, padded
    steps = -(-per_rank // BATCH)
    assert 0 < saved_at < steps - 1, "the signal must land mid-epoch for this test to mean anything"
    assert f"job {job_id} requeued (1 of at most 2 requeues)" in err
    assert "hpc_ckpt" not in err and not list((runs / "tmplq" / "checkpoints").glob("hpc_ckpt*"))
    # The requeued job loaded the save (a fresh start with the same seed would end with the same weights).
    assert re.search(r"resumed from .*tmplq/checkpoints/last\.ckpt at step", err), err[-3000:]

    assert uninterrupted_epoch()["global_step"] == steps
    assert_same_weights(runs / "tmplq", uninterrupted_epoch())

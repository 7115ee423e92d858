"""A Slurm job preempted mid-epoch requeues itself, resumes from its checkpoint and finishes as if never stopped."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.slurm.conftest import job_state, wait_for_jobs
from tests.slurm.helpers import (
    PREEMPT_BATCH,
    assert_same_weights,
    fit_flags,
    release_requeued,
    run_convnets,
    train_count,
    wait_for_file,
    wandb_run_ids,
)

pytestmark = [pytest.mark.slurm, pytest.mark.integration, pytest.mark.slow, pytest.mark.dali]
BATCH = PREEMPT_BATCH  # per rank: ~180 steps an epoch, so a signal lands mid-epoch


def test_preempted_job_requeues_and_resumes_exactly(slurm_cluster, digits_shards, tmp_path, uninterrupted_epoch):
    flags = [*fit_flags(digits_shards, tmp_path, "preempted", epochs=1), "--data.batch_size", str(BATCH)]
    submitted = run_convnets(
        slurm_cluster, "submit", *flags, "--slurm.cluster", "local", "--slurm.preempt_check_steps", "1", timeout=120
    )
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id = re.search(r"submitted job (\d+)", submitted.stdout).group(1)
    run_dir = tmp_path / "preempted"

    # The first training batch draws train_samples.png on rank 0: training is under way. Preempt now,
    # as Slurm does (USR2 to every task, as `--signal=USR2@90` would before the time limit).
    env = slurm_cluster["env"]
    wait_for_file(run_dir / "plots" / "train_samples.png", timeout=180)
    subprocess.run(["scancel", "--signal=USR2", job_id], env=env, check=True, timeout=30)
    release_requeued(env, job_id)
    wait_for_jobs(env, [job_id], timeout=300)  # run again, finished
    assert job_state(slurm_cluster["env"], job_id) == "COMPLETED"

    record = json.loads((run_dir / "slurm.json").read_text())
    events = record["events"]
    assert [e["event"] for e in events] == ["start", "requeue", "resume after requeue 1", "resumed", "finished"]
    assert record["requeues"] == 1 and events[2]["slurm_restart_count"] == 1
    rank0 = (run_dir / "slurm" / f"{job_id}_0_log.err").read_text()
    saved_at = int(re.search(r"signal received after step -?\d+: saved .* at step (\d+)", rank0).group(1))
    steps_per_epoch = train_count(digits_shards) // (2 * BATCH)
    assert 0 < saved_at < steps_per_epoch - 1, "the signal must land mid-epoch for this test to mean anything"
    # The requeued job started from the hook's save, not from scratch (which, with the same seed and no
    # checkpoint before the signal, would end bit-equal too).
    assert events[1]["saved_step"] == events[3]["step"] == saved_at

    # One W&B run: both jobs' offline run folders carry the id stored in the run folder.
    stored = (run_dir / "wandb_id").read_text().strip()
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) >= 2 and wandb_run_ids(run_dir) == {stored}

    # Continuous steps: the resumed job ends at the uninterrupted run's step count, not more, not less; and
    # bit-exact: the resumed job read exactly the samples the uninterrupted run read after that step.
    assert uninterrupted_epoch()["global_step"] > saved_at
    assert_same_weights(run_dir, uninterrupted_epoch())

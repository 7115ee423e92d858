"""`convnets submit` against the real test cluster: a 2-rank DDP fit, preemption + requeue, bad requests."""
from __future__ import annotations

import json
import re

import pytest
import torch

from tests.slurm.conftest import job_state, wait_for_jobs
from tests.slurm.helpers import fit_flags, run_convnets, squeue_empty, train_count, wandb_run_ids

pytestmark = [pytest.mark.slurm, pytest.mark.integration, pytest.mark.slow, pytest.mark.dali]
BATCH = 16  # lenet5_digits.yaml's per-rank batch


def _job_id(stdout: str) -> str:
    match = re.search(r"submitted job (\d+)", stdout)
    assert match, stdout
    return match.group(1)


def test_two_task_ddp_fit_through_submit(slurm_cluster, digits_shards, tmp_path):
    name = "odd name's $(touch pwned)"  # reaches sbatch and srun: must arrive quoted
    result = run_convnets(slurm_cluster, "submit", *fit_flags(digits_shards, tmp_path, name),
                          "--slurm.cluster", "local", "--wait", timeout=400, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    job_id = _job_id(result.stdout)
    wait_for_jobs(slurm_cluster["env"], [job_id], timeout=60)  # --wait returns once the result is written
    assert job_state(slurm_cluster["env"], job_id) == "COMPLETED"
    assert not (tmp_path / "pwned").exists()
    run_dir = tmp_path / name
    logs = {p.name: p.read_text() for p in (run_dir / "slurm").glob(f"{job_id}_*_log.err")}
    assert sorted(logs) == [f"{job_id}_0_log.err", f"{job_id}_1_log.err"]  # one stderr per rank
    assert "MEMBER: 1/2" in logs[f"{job_id}_0_log.err"] and "MEMBER: 2/2" in logs[f"{job_id}_1_log.err"]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    per_epoch = train_count(digits_shards) / (2 * BATCH)  # 2 ranks share each epoch (1 rank: twice the steps)
    assert int(per_epoch) * 2 <= ckpt["global_step"] <= -(-train_count(digits_shards) // (2 * BATCH)) * 2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["history"]) == 2 and metrics["val_top1"] > 0.5, metrics  # chance: 0.1
    assert f"job:        {job_id} COMPLETED" in result.stdout  # the status printed by --wait
    assert len(wandb_run_ids(run_dir)) == 1

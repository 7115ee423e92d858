"""The cluster itself, and the plain sbatch template (no submitit) run on it as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.slurm.conftest import job_state, wait_for_jobs
from tests.slurm.helpers import fit_flags, run_convnets, train_count


@pytest.mark.slurm
def test_the_sbatch_template_trains_two_ranks_on_the_cluster(slurm_cluster, digits_shards, tmp_path):
    """`convnets slurm template` -> sbatch: srun starts 2 tasks, Lightning takes its ranks from Slurm."""
    flags = [*fit_flags(digits_shards, tmp_path / "runs", "tmpl", epochs=1), "--trainer.logger", "false"]
    made = run_convnets(
        slurm_cluster,
        "slurm",
        "template",
        "--slurm.gpus_per_node",
        "0",
        "--slurm.tasks_per_node",
        "2",
        "--slurm.cpus_per_task",
        "1",
        "--job-name",
        "tmpl",
        "--logs",
        str(tmp_path / "tmpl"),
        "--",
        *flags,
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    script = tmp_path / "job.sbatch"
    script.write_text(made.stdout)
    # The job runs `convnets` from PATH, as on a cluster with the package installed.
    env = {
        **slurm_cluster["env"],
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "WANDB_MODE": "offline",
        # the ranks are read from Lightning's own "Initializing distributed" line: the quiet console leaves it out
        "CONVNETS_DEBUG": "1",
    }
    env.pop("CONVNETS_RUN_NAME", None)
    submitted = subprocess.run(
        ["sbatch", "--parsable", str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    wait_for_jobs(env, [job_id], timeout=240)
    err = "".join(p.read_text() for p in tmp_path.glob("tmpl*.err"))
    assert job_state(env, job_id) == "COMPLETED", err[-3000:]
    assert "MEMBER: 1/2" in err and "MEMBER: 2/2" in err  # two DDP ranks, one per srun task
    ckpt = torch.load(tmp_path / "runs" / "tmpl" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    history = json.loads((tmp_path / "runs" / "tmpl" / "metrics.json").read_text())["history"]
    per_rank = -(-train_count(digits_shards) // 2)  # the epoch plan: each of 2 ranks takes half, padded
    assert len(history) == 1 and ckpt["global_step"] == -(-per_rank // 16)  # lenet5_digits: 16 per rank

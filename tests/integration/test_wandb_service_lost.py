"""Slurm's SIGTERM reaches W&B's service process too: the training process must keep going to its next check
and save, not die in its next W&B row (a real offline W&B run, its service ended as Slurm would)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.wandb_history import history

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# In a child process: W&B's connection to its service is process-wide, and broken for good afterwards.
SCRIPT = r"""
import logging, os, signal, sys, time
from pathlib import Path
from convnets.platform.training.callbacks import RunWandbLogger
from convnets.platform.training.tracking import WANDB_FLUSH_S, logged_wandb_step, wandb_settings

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
run_dir = Path(sys.argv[1])
logger = RunWandbLogger(run_dir=run_dir, project="p", save_dir=str(run_dir), offline=True, settings=wandb_settings())
logger.log_metrics({"train_loss": 1.0}, step=24)
logger.commit_before(25)
time.sleep(2 * WANDB_FLUSH_S)  # row 24 is on disk
service = [p for p in Path("/proc").iterdir() if p.name.isdigit() and b"wandb-core" in (p / "cmdline").read_bytes()
           and (p / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(os.getpid())]
assert len(service) == 1, service
os.kill(int(service[0].name), signal.SIGTERM)  # what Slurm's preemption does to every process of the job
time.sleep(0.5)
for step in (49, 74):
    logger.log_metrics({"train_loss": 0.5}, step=step)  # raised ConnectionResetError before
    logger.commit_before(step + 1)
print("logged step", logged_wandb_step(run_dir), flush=True)
os._exit(0)  # as the preemption hook leaves: W&B's own exit hooks would only find the service gone
"""


def test_rows_after_the_service_ended_are_dropped_with_one_warning(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lost = [ln for ln in result.stderr.splitlines() if "W&B's service process has ended" in ln]
    assert len(lost) == 1 and lost[0].startswith("WARNING") and "from step 49 on" in lost[0], result.stderr[-3000:]
    assert result.stdout.splitlines() == ["logged step 24"]  # steps not logged are not recorded as logged
    rows = [row for rows in history(tmp_path) for row in rows]
    assert [(r["_step"], r["train_loss"]) for r in rows] == [(24, 1.0)]

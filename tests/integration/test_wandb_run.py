"""One W&B run per training run: a fit, its resumed fit and its test all log to the id in the run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.integration.cli_helpers import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.dali]

# As under a sweep, a Slurm job or a notebook: a parent that used wandb (so its W&B service address,
# WANDB_SERVICE, is in the environment its children inherit) runs the three commands one after the other.
PARENT = """
import json, subprocess, sys, wandb
wandb.init(mode="offline", dir=sys.argv[1], project="parent").finish()
assert "WANDB_SERVICE" in __import__("os").environ
for args in json.loads(sys.argv[2]):
    code = subprocess.run([sys.executable, "-m", "convnets.cli", *args]).returncode
    if code:
        sys.exit(code)
"""


def test_fit_resume_and_test_append_to_one_offline_run(digits_shards, tmp_path):
    common = [
        "--config",
        REPO / "configs" / "lenet5_digits.yaml",
        "--data.data_dir",
        digits_shards,
        "--runs_dir",
        tmp_path,
        "--run_name",
        "r",
        "--trainer.devices",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.limit_train_batches",
        "3",
        "--trainer.limit_val_batches",
        "2",
    ]
    commands = [
        ["fit", *common, "--trainer.max_epochs", "1"],
        ["fit", *common, "--trainer.max_epochs", "2", "--ckpt_path", "last"],
        ["test", *common, "--ckpt_path", tmp_path / "r" / "checkpoints" / "last.ckpt"],
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SERVICE", "CONVNETS_RUN_NAME")}
    result = subprocess.run(
        [sys.executable, "-c", PARENT, str(tmp_path), json.dumps(commands, default=str)],
        env={**env, "WANDB_MODE": "offline", "WANDB_SILENT": "true"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stored = (tmp_path / "r" / "wandb_id").read_text().strip()
    logs = sorted((tmp_path / "r" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 3  # one offline folder per process, as W&B offline always does
    assert {p.stem.removeprefix("run-") for p in logs} == {stored}  # all three carry the run's one id

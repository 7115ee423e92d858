"""One W&B run per training run: a fit, its resumed fit and its test all log to the id in the run folder."""
from __future__ import annotations

import os

import pytest

from tests.integration.cli_helpers import REPO, convnets

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.dali]


def test_fit_resume_and_test_append_to_one_offline_run(digits_shards, tmp_path, monkeypatch):
    # As under a sweep, a Slurm job or an earlier in-process test: this process runs a W&B service
    # whose address (WANDB_SERVICE) every child inherits. The children must not share it.
    import wandb

    wandb.init(mode="offline", dir=str(tmp_path), project="parent").finish()
    assert "WANDB_SERVICE" in os.environ
    common = ["--config", REPO / "configs" / "lenet5_digits.yaml", "--data.data_dir", digits_shards, "--runs_dir", tmp_path,
              "--run_name", "r", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
              "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2"]
    for args in (["fit", *common, "--trainer.max_epochs", "1"],
                 ["fit", *common, "--trainer.max_epochs", "2", "--ckpt_path", "last"],
                 ["test", *common, "--ckpt_path", tmp_path / "r" / "checkpoints" / "last.ckpt"]):
        result = convnets(*args)
        assert result.returncode == 0, result.stderr[-3000:]
    stored = (tmp_path / "r" / "wandb_id").read_text().strip()
    logs = sorted((tmp_path / "r" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 3  # one offline folder per process, as W&B offline always does
    assert {p.stem.removeprefix("run-") for p in logs} == {stored}  # all three carry the run's one id

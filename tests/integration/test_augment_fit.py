"""A few real training steps through the CLI with the torch engine and the paper's augmentation."""

from __future__ import annotations

import pytest

from tests.integration.cli_helpers import convnets

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_fit_a_few_steps_with_the_torch_backend_alexnet_preset_and_jitter(imagenette_small_shards, tmp_path):
    # One run for all three (each fit costs ~40 s here): the torch engine, the alexnet preset
    # (PCA lighting) with colour jitter, and uint8 batches normalized in on_after_batch_transfer
    # (a conv would refuse the uint8 images if the hook did not run).
    result = convnets(
        "fit",
        "--config",
        "alexnet_small_imagenette",
        "--data.data_dir",
        imagenette_small_shards,
        "--data.backend",
        "torch",
        "--data.num_threads",
        "0",
        "--data.preset",
        "alexnet",
        "--data.jitter",
        "0.4",
        "--data.normalize_on_device",
        "true",
        "--trainer.max_steps",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.logger",
        "false",
        "--runs_dir",
        tmp_path,
        "--run_name",
        "few",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "few" / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "few" / "plots" / "train_samples.png").exists()

"""GPU path of the one DALI graph (nvJPEG `mixed` decoding) and a 1-GPU fit. Device machine only."""
from __future__ import annotations

import pytest
import torch

from convnets.data_pipelines.augment import InputSpec
from convnets.data_pipelines.datamodule import ShardDataModule

pytestmark = [pytest.mark.gpu, pytest.mark.dali]

SMALL_RGB = InputSpec(channels=3, image_size=64, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_fraction=0.875)


def _val_batch(shards, device):
    dm = ShardDataModule(data_dir=str(shards), batch_size=8, num_threads=2, input_spec=SMALL_RGB, device=device)
    dm.setup("validate")
    dm._device_id = lambda: None if device == "cpu" else 0  # no Trainer here: pick the device directly
    return next(iter(dm.val_dataloader()))


def test_mixed_decoding_matches_the_cpu_graph(imagenette_small_shards):
    cpu = _val_batch(imagenette_small_shards, "cpu")
    gpu = _val_batch(imagenette_small_shards, "gpu")
    assert gpu["images"].is_cuda and gpu["images"].shape == cpu["images"].shape
    assert torch.equal(gpu["labels"].cpu(), cpu["labels"])
    # nvJPEG and libjpeg-turbo differ by a few grey levels (IDCT rounding and chroma upsampling).
    assert (gpu["images"].cpu() - cpu["images"]).abs().mean() < 0.05


def test_one_gpu_fit_runs(digits_shards, tmp_path):
    from tests.integration.cli_helpers import REPO, convnets

    result = convnets("fit", "--config", REPO / "configs" / "lenet5_digits.yaml", "--data.data_dir", digits_shards,
                      "--runs_dir", tmp_path, "--run_name", "gpu", "--trainer.accelerator", "gpu",
                      "--trainer.devices", "1", "--trainer.max_epochs", "2", "--trainer.logger", "false")
    assert result.returncode == 0, result.stderr[-3000:]

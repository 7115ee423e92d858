"""GPU path of the one DALI graph (nvJPEG `mixed` decoding) and a 1-GPU fit. Device machine only."""

from __future__ import annotations

import pytest
import torch

from convnets.data_pipelines.loading.augment import InputSpec

pytestmark = [pytest.mark.gpu, pytest.mark.dali]

SMALL_RGB = InputSpec(
    channels=3, image_size=64, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_fraction=0.875
)


def _val_batch(shards, device):
    from convnets.data_pipelines.loading.datamodule import ShardDataModule  # imports DALI: only once the marker allows

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


def test_one_gpu_nccl_ddp_fit_from_shards(imagenette_small_shards, tmp_path):
    """The real command: shards -> nvJPEG -> NCCL DDP (world size 1), bf16, channels_last, then 10-crop test."""
    import json

    from tests.integration.cli_helpers import convnets

    common = [
        "--config",
        "alexnet_small_imagenette",
        "--data.data_dir",
        imagenette_small_shards,
        "--runs_dir",
        tmp_path,
        "--run_name",
        "gpu",
        "--trainer.accelerator",
        "gpu",
        "--trainer.devices",
        "1",
        "--trainer.logger",
        "false",
        "--data.batch_size",
        "16",
        "--data.device",
        "gpu",
    ]
    fit = convnets(
        "fit",
        *common,
        "--trainer.strategy",
        "ddp",
        "--trainer.max_epochs",
        "2",
        "--trainer.precision",
        "bf16-mixed",
        "--model.perf.channels_last",
        "true",
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    test = convnets("test", *common, "--ckpt_path", tmp_path / "gpu" / "checkpoints" / "last.ckpt")
    assert test.returncode == 0, test.stderr[-3000:]
    metrics = json.loads((tmp_path / "gpu" / "metrics.json").read_text())
    assert metrics["images_per_s"] > 0 and 0 <= metrics["test_top1"] <= 1

"""Every preset's train graph on the GPU (nvJPEG fused crop-decode, jitter, PCA lighting, uint8).
Device machine only."""

from __future__ import annotations

import pytest
import torch

from convnets.data_pipelines.loading.augment import InputSpec

pytestmark = [pytest.mark.gpu, pytest.mark.dali]

SMALL_RGB = InputSpec(
    channels=3, image_size=64, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_fraction=0.875
)


@pytest.mark.parametrize("preset", ["inception", "alexnet"])
@pytest.mark.parametrize("uint8", [False, True])
def test_train_presets_with_jitter_run_on_the_gpu_like_on_the_cpu(imagenette_small_shards, preset, uint8):
    from convnets.data_pipelines.loading.datamodule import ShardDataModule

    batches = {}
    for device in ("cpu", "gpu"):
        dm = ShardDataModule(
            data_dir=str(imagenette_small_shards),
            batch_size=8,
            num_threads=2,
            input_spec=SMALL_RGB,
            device=device,
            preset=preset,
            jitter=0.4,
            hue=0.1,
            normalize_on_device=uint8,
        )
        dm.setup("fit")
        dm._device_id = lambda d=device: None if d == "cpu" else 0  # no Trainer here: pick the device directly
        batch = next(iter(dm.train_dataloader()))
        batches[device] = dm.on_after_batch_transfer(batch, 0)["images"]
    cpu, gpu = batches["cpu"], batches["gpu"]
    assert gpu.is_cuda and gpu.dtype == cpu.dtype == torch.float32 and gpu.shape == cpu.shape == (8, 3, 64, 64)
    # Random crops and colours differ between the two graphs; their normalized statistics do not.
    assert abs(gpu.mean().item() - cpu.mean().item()) < 0.5 and 0.3 < gpu.std().item() < 2.0

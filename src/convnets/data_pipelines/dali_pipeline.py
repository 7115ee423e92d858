"""The one DALI graph for train and eval: encoded bytes in, normalized CHW float batches out.

Device switch: `device_id=None` decodes and augments on the CPU (any machine); an integer
device id decodes with nvJPEG (`mixed`) and augments on that GPU. The graph is otherwise the
same, so what is tested on CPU is what runs on GPU.

Samples enter through `external_source` from a `ShardSource` (this rank's epoch plan, read
straight from the tar shards with the DALI .idx offsets), which is what gives the exact-once
and equal-steps guarantees (see epoch_plan.py) that DALI's own readers do not.
"""
from __future__ import annotations

from typing import Callable

import nvidia.dali.fn as fn
import nvidia.dali.types as types
from nvidia.dali import pipeline_def
from nvidia.dali.pipeline import Pipeline

from convnets.data_pipelines.augment import CROP_POSITIONS, AugmentSpec


def _normalize(images, aug: AugmentSpec, device: str, *, pos=(0.5, 0.5), mirror=0, crop=True):
    size = aug.spec.image_size
    return fn.crop_mirror_normalize(
        images,
        device=device,
        dtype=types.FLOAT,
        output_layout="CHW",
        crop=(size, size) if crop else None,
        crop_pos_x=pos[0],
        crop_pos_y=pos[1],
        mirror=mirror,
        mean=aug.mean255,
        std=aug.std255,
        # "pad" lets a window larger than the image shift it around (mode "pad"). The fill lands
        # in the normalized output, so -mean/std is a black pixel: the background of digits.
        out_of_bounds_policy="pad",
        fill_values=[-m / s for m, s in zip(aug.spec.mean, aug.spec.std)],
    )


def _train_images(images, aug: AugmentSpec, device: str):
    mirror = fn.random.coin_flip(probability=0.5) if aug.flip else 0
    if aug.mode == "pad":
        images = fn.resize(images, device=device, size=(aug.resize, aug.resize))
        pos = (fn.random.uniform(range=(0.0, 1.0)), fn.random.uniform(range=(0.0, 1.0)))
        return _normalize(images, aug, device, pos=pos, mirror=mirror)
    size = aug.spec.image_size
    images = fn.random_resized_crop(
        images, device=device, size=(size, size), random_area=list(aug.area), random_aspect_ratio=list(aug.aspect)
    )
    return _normalize(images, aug, device, mirror=mirror, crop=False)


def _eval_images(images, aug: AugmentSpec, device: str, crops: int):
    if aug.mode == "pad":
        images = fn.resize(images, device=device, size=(aug.resize, aug.resize))
    else:
        images = fn.resize(images, device=device, resize_shorter=aug.resize)
    if crops == 1:
        return _normalize(images, aug, device)
    views = [_normalize(images, aug, device, pos=p) for p in CROP_POSITIONS]
    if crops == 10:
        views += [_normalize(images, aug, device, pos=p, mirror=1) for p in CROP_POSITIONS]
    return fn.stack(*views, axis=0)  # (crops, C, H, W) per sample


def build_pipeline(
    source: Callable,
    aug: AugmentSpec,
    *,
    train: bool,
    crops: int,
    batch_size: int,
    num_threads: int,
    device_id: int | None,
    seed: int,
    hw_decoder_load: float = 0.65,
    checkpoint: bytes | None = None,
) -> Pipeline:
    """Build (not yet run) the pipeline. Outputs: images, labels (int64), valid (uint8), index (int64).

    Checkpointing is always on (no measurable cost until `checkpoint()` is called, ~0.2 ms then);
    `checkpoint` restores a saved state: random draws and the source's batch index.
    """

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                  enable_checkpointing=True, checkpoint=checkpoint)
    def graph():
        encoded, labels, valid, index = fn.external_source(
            source=source, num_outputs=4, batch=True, batch_info=True,
            no_copy=True,  # the source keeps its read buffers until DALI is done with them
            dtype=[types.UINT8, types.INT64, types.UINT8, types.INT64],
        )
        decoder = "cpu" if device_id is None else "mixed"
        device = "cpu" if device_id is None else "gpu"
        color = types.GRAY if aug.spec.channels == 1 else types.RGB
        # mixed: hw_decoder_load is the share of images sent to the A100/H100 hardware JPEG
        # decoder, the rest go to CUDA nvJPEG; 0.65 is DALI's recommendation for those parts.
        extra = {"hw_decoder_load": hw_decoder_load} if decoder == "mixed" else {}
        images = fn.decoders.image(encoded, device=decoder, output_type=color, **extra)
        images = _train_images(images, aug, device) if train else _eval_images(images, aug, device, crops)
        return images, labels, valid, index

    return graph()

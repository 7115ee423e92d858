"""The one DALI graph for train and eval: encoded bytes in, CHW batches out (float normalized, or uint8).

Device switch: `device_id=None` decodes and augments on the CPU (any machine); an integer
device id decodes with nvJPEG (`mixed`) and augments on that GPU. The graph is otherwise the
same, so what is tested on CPU is what runs on GPU.

Samples enter through `external_source` from a `ShardSource` (this rank's epoch plan, read
straight from the tar shards with the DALI .idx offsets), which is what gives the exact-once
and equal-steps guarantees (see epoch_plan.py) that DALI's own readers do not.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
import nvidia.dali.types as types
from nvidia.dali import pipeline_def
from nvidia.dali.pipeline import Pipeline

from convnets.data_pipelines.loading.augment import CROP_POSITIONS, AugmentSpec, lighting_matrix

log = logging.getLogger(__name__)

# Inception preset's train-time resize of the crop to the network's size: linear interpolation;
# antialiasing off, because a random-resized crop is itself a random rescaling (the aliasing of one
# more downscale is noise among that), and the wider filter costs time (DALI's CPU resize: ~10-15%
# of the pipeline's rate; the CPU kernel: ~0.1 ms more an image). The alexnet preset antialiases.
TRAIN_ANTIALIAS = False


def _normalize(images, aug: AugmentSpec, device: str, *, pos=(0.5, 0.5), mirror=0, crop=True, mean=None):
    """Crop (optional), mirror, normalize, HWC -> CHW: float32 normalized, or uint8 when aug.uint8.

    `mean` (per-sample, 0..255 units) replaces the constant mean: PCA lighting adds its RGB offset
    here for free, as (x - (mean - offset)) / std. In uint8 mode mean is 0 and std 1 (the module
    normalizes on the device); the offset then lands in the pixels, clamped to [0, 255].
    """
    size = aug.spec.image_size
    if aug.uint8:
        dtype, std, fill = types.UINT8, [1.0] * aug.spec.channels, [0.0]
        mean = mean if mean is not None else [0.0] * aug.spec.channels
    else:
        # The fill lands in the normalized output, so -mean/std is a black pixel: the background of digits.
        dtype, std, fill = types.FLOAT, aug.std255, [-m / s for m, s in zip(aug.spec.mean, aug.spec.std)]
        mean = mean if mean is not None else aug.mean255
    return fn.crop_mirror_normalize(
        images,
        device=device,
        dtype=dtype,
        output_layout="CHW",
        crop=(size, size) if crop else None,
        crop_pos_x=pos[0],
        crop_pos_y=pos[1],
        mirror=mirror,
        mean=mean,
        std=std,
        # "pad" lets a window larger than the image shift it around (preset "pad").
        out_of_bounds_policy="pad",
        fill_values=fill,
    )


def _jitter_factors(aug: AugmentSpec) -> dict:
    """Colour jitter (augment.Jitter): color_twist's factors, drawn per image ({} when off)."""
    j = aug.jitter
    factors = {}
    for name in ("brightness", "contrast", "saturation"):
        strength = getattr(j, name)
        if strength:
            factors[name] = fn.random.uniform(range=(1.0 - strength, 1.0 + strength))
    if j.hue:
        factors["hue"] = fn.random.uniform(range=(-360.0 * j.hue, 360.0 * j.hue))  # degrees
    return factors


def _jitter(images, aug: AugmentSpec, device: str, factors: dict):
    """One colour matrix per image (color_twist's), one pass over the pixels."""
    if not factors:
        return images
    if aug.spec.channels == 1:  # grey: contrast about mid-grey, then brightness (a per-image lookup table)
        return fn.brightness_contrast(images, device=device, **factors)
    kernels = _cpu_kernels() if device == "cpu" else None
    if kernels is None:
        return fn.color_twist(images, device=device, **factors)
    return kernels.colour_twist(images, factors)  # color_twist's pixels at ~40 us an image instead of 1.1-2 ms


@functools.cache
def _cpu_kernels():
    """The CPU graph's Numba kernels (cpu_kernels.py), or None where Numba does not import (then
    DALI's own CPU operators run: the same pixels within 2 levels, ~0.5-0.7x the decode rate
    instead of ~1x; said once). Imported on use: a GPU graph never needs Numba."""
    try:
        from convnets.data_pipelines.loading import cpu_kernels
    except ImportError as e:
        log.warning("numba does not import (%s): the CPU data graph uses DALI's slower operators; pip install numba", e)
        return None
    return cpu_kernels


def _lighting_mean(aug: AugmentSpec):
    """Per-sample CMN mean = mean - PCA lighting offset (augment.PCA_*, 0..255 units)."""
    alpha = fn.random.normal(shape=[1, 3], stddev=aug.lighting)  # (1, 3): coord_transform wants 2-D
    matrix = [v for row in lighting_matrix() for v in row]
    offset = fn.reshape(fn.coord_transform(alpha, M=matrix), shape=[3])
    base = [0.0] * 3 if aug.uint8 else aug.mean255
    return types.Constant(np.array(base, dtype=np.float32)) - offset


def _decode(encoded, aug: AugmentSpec, *, train: bool, device_id: int | None, hw_decoder_load: float):
    """Decode; in training (inception, alexnet presets), fused with the random crop.

    The fused decoder decodes only the crop's region (libjpeg-turbo / nvJPEG ROI decoding): for a
    10% crop most of the entropy decoding and all of the IDCT/colour conversion outside the window
    are skipped. alexnet: "shorter side to 256, random 224 crop" is the same window as a random
    square of 224/256 of the shorter side in the original image, resized to 224 afterwards
    (`_train_images`), so the decoder can cut it; the side comes from the JPEG header (peek_image_shape).
    """
    decoder = "cpu" if device_id is None else "mixed"
    color = types.GRAY if aug.spec.channels == 1 else types.RGB
    # mixed: hw_decoder_load is the share of images sent to the A100/H100 hardware JPEG
    # decoder, the rest go to CUDA nvJPEG; 0.65 is DALI's recommendation for those parts.
    extra = {"hw_decoder_load": hw_decoder_load} if decoder == "mixed" else {}
    if train and aug.preset == "inception":
        return fn.decoders.image_random_crop(
            encoded,
            device=decoder,
            output_type=color,
            random_area=list(aug.area),
            random_aspect_ratio=list(aug.aspect),
            num_attempts=10,
            **extra,
        )
    if train and aug.preset == "alexnet":
        shape = fn.peek_image_shape(encoded)  # (H, W, C) from the header, no decoding
        side = fn.cast(dmath.min(shape[0], shape[1]), dtype=types.FLOAT) * (aug.spec.image_size / aug.resize)
        pos = {f"crop_pos_{a}": fn.random.uniform(range=(0.0, 1.0)) for a in "xy"}
        return fn.decoders.image_crop(
            encoded, device=decoder, output_type=color, crop_w=side, crop_h=side, **pos, **extra
        )
    return fn.decoders.image(encoded, device=decoder, output_type=color, **extra)


def _train_images(images, aug: AugmentSpec, device: str):
    mirror = fn.random.coin_flip(probability=0.5) if aug.flip else 0
    if aug.preset == "pad":
        images = _jitter(
            fn.resize(images, device=device, size=(aug.resize, aug.resize)), aug, device, _jitter_factors(aug)
        )
        pos = (fn.random.uniform(range=(0.0, 1.0)), fn.random.uniform(range=(0.0, 1.0)))
        return _normalize(images, aug, device, pos=pos, mirror=mirror)
    mean = _lighting_mean(aug) if aug.lighting else None
    factors = _jitter_factors(aug)
    # The decoder cut the random crop (alexnet: the random square; antialiased as the eval resize).
    antialias = True if aug.preset == "alexnet" else TRAIN_ANTIALIAS
    return _train_view(images, aug, device, factors, mirror, mean, antialias)


def _train_view(images, aug: AugmentSpec, device: str, factors: dict, mirror, mean, antialias: bool):
    """Resize the decoder's crop to the network's size, jitter, mirror, normalize. On CPU for RGB:
    one Numba kernel doing all of it (cpu_kernels.train_view: DALI's CPU resize alone cost ~1.1-1.5 ms
    an image linear, ~2 antialiased, more than the rest of the graph after the decoder)."""
    kernels = _cpu_kernels() if device == "cpu" and aug.spec.channels == 3 else None
    if kernels is not None:
        if mean is None:
            mean = [0.0] * 3 if aug.uint8 else aug.mean255
        return kernels.train_view(
            images,
            aug.spec.image_size,
            factors,
            mirror=mirror,
            mean=mean,
            std=[1.0] * 3 if aug.uint8 else aug.std255,
            uint8=aug.uint8,
            antialias=antialias,
        )
    return _train_ops(images, aug, device, factors, mirror, mean, antialias)


def _train_ops(images, aug: AugmentSpec, device: str, factors: dict, mirror, mean, antialias: bool):
    """_train_view with DALI's operators (GPU; and the reference of the CPU kernel's tests)."""
    images = fn.resize(images, device=device, size=(aug.spec.image_size,) * 2, antialias=antialias)
    return _normalize(_jitter(images, aug, device, factors), aug, device, mirror=mirror, crop=False, mean=mean)


def _eval_images(images, aug: AugmentSpec, device: str, crops: int):
    if aug.preset == "pad":
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

    @pipeline_def(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed,
        enable_checkpointing=True,
        checkpoint=checkpoint,
    )
    def graph():
        encoded, labels, valid, index = fn.external_source(
            source=source,
            num_outputs=4,
            batch=True,
            batch_info=True,
            no_copy=True,  # the source keeps its read buffers until DALI is done with them
            dtype=[types.UINT8, types.INT64, types.UINT8, types.INT64],
        )
        device = "cpu" if device_id is None else "gpu"
        images = _decode(encoded, aug, train=train, device_id=device_id, hw_decoder_load=hw_decoder_load)
        images = _train_images(images, aug, device) if train else _eval_images(images, aug, device, crops)
        return images, labels, valid, index

    return graph()

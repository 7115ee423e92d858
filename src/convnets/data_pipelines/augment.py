"""Augmentation settings shared by the DALI graph (and, later, the pure-PyTorch loader)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The 10-crop test of Krizhevsky et al. 2012: centre first (so crop 0 is the single-crop
# view), then the four corners; crops 5..9 are the same five mirrored.
CROP_POSITIONS: tuple[tuple[float, float], ...] = ((0.5, 0.5), (0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0))


@dataclass(frozen=True)
class InputSpec:
    """What the network expects: handed from the model registry to the data module by the platform."""

    channels: int  # 1 (grey) or 3 (RGB)
    image_size: int  # square side, pixels
    mean: tuple[float, ...]  # per channel, [0, 1] pixel units
    std: tuple[float, ...]
    crop_fraction: float  # eval: resize to image_size / crop_fraction, then crop


@dataclass(frozen=True)
class AugmentSpec:
    """Everything the pipeline graph needs to turn encoded bytes into network input.

    mode "pad": small images (digits) are resized to `resize` px square, then a `image_size`
    window is cut at a random (train) or central (eval) position, padding outside the image:
    e.g. 28 px digits in a 32 px window shift by up to +-2 px, the paper's 2 px border at eval.
    mode "scale": natural images; train takes a random-resized crop (area fraction in `area`),
    eval resizes the shorter side to `resize` (256 for 224 crops) and crops.
    """

    spec: InputSpec
    mode: Literal["pad", "scale"]
    resize: int
    flip: bool
    area: tuple[float, float] = (0.08, 1.0)
    aspect: tuple[float, float] = (3 / 4, 4 / 3)

    @property
    def mean255(self) -> list[float]:
        return [m * 255.0 for m in self.spec.mean]

    @property
    def std255(self) -> list[float]:
        return [s * 255.0 for s in self.spec.std]


def eval_crop_count(requested: int | None, *, flip: bool) -> int:
    """Crops for the test step: 10 (corners + centre, mirrored) where flipping is allowed, else 5."""
    if requested is None:
        return 10 if flip else 5
    if requested not in (1, 5, 10):
        raise ValueError(f"test_crops must be 1, 5 or 10, got {requested}")
    if requested == 10 and not flip:
        raise ValueError("test_crops=10 mirrors the image, but this dataset forbids flips (e.g. digits); use 5")
    return requested

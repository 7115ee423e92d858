"""Augmentation, one definition for two engines: the DALI graph (dali_pipeline.py) and the
pure-PyTorch loader (torch_loader.py) both read an `AugmentSpec` and nothing else.

Presets (`--data.preset`):
  alexnet    Krizhevsky et al. 2012, section 4.1: shorter side to `resize` (256 for 224), a random
             `image_size` crop, horizontal flip, and PCA lighting ("fancy PCA"): per image, alpha ~
             N(0, 0.1) per eigenvector of ImageNet's RGB covariance, and sum_i alpha_i lambda_i p_i
             added to every pixel. Eigenvalues/vectors (pixels in [0, 1]) as fb.resnet.torch's
             datasets/imagenet.lua publishes them (the paper gives none).
  inception  Szegedy et al. 2015 / torchvision's RandomResizedCrop: a crop of `area` (8-100%) of the
             image at aspect ratio in `aspect` (3/4-4/3), resized to image_size, horizontal flip.
  pad        small centred images (digits): resized to `resize` px square, then an image_size
             window cut at a random (train) or central (eval) position, black outside the image.
Colour jitter (brightness, contrast, saturation, hue) goes on top of any preset.

Eval, every preset: shorter side to image_size / crop_fraction, centre crop (or the 10 crops).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

# The 10-crop test of Krizhevsky et al. 2012: centre first (so crop 0 is the single-crop
# view), then the four corners; crops 5..9 are the same five mirrored.
CROP_POSITIONS: tuple[tuple[float, float], ...] = ((0.5, 0.5), (0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0))

PRESETS = ("alexnet", "inception", "pad")
Preset = Literal["alexnet", "inception", "pad"]
# The preset a data config without one trains with (and is evaluated for).
DEFAULT_PRESET: Preset = "inception"

# ImageNet's RGB covariance in [0, 1] pixel units: eigenvalues, and eigenvectors as COLUMNS
# (PCA_EIGVEC[c][j] = component c of eigenvector j), from fb.resnet.torch datasets/imagenet.lua.
PCA_EIGVAL: tuple[float, float, float] = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC: tuple[tuple[float, float, float], ...] = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
ALEXNET_LIGHTING = 0.1  # std of alpha, "drawn from a Gaussian with mean zero and standard deviation 0.1"


@dataclass(frozen=True)
class InputSpec:
    """What the network expects: handed from the model registry to the data module by the platform."""

    channels: int  # 1 (grey) or 3 (RGB)
    image_size: int  # square side, pixels
    mean: tuple[float, ...]  # per channel, [0, 1] pixel units
    std: tuple[float, ...]
    crop_fraction: float  # eval: resize to image_size / crop_fraction, then crop


@dataclass(frozen=True)
class Jitter:
    """Colour jitter strengths, torchvision's ColorJitter convention: each factor is drawn per image
    from U[1 - s, 1 + s] (brightness, contrast, saturation) and the hue shift from U[-hue, hue]
    (fraction of a full turn, <= 0.5).

    Semantics are those of DALI's `color_twist` (one 3x3 colour matrix + offset per image, so one
    pass over the pixels): saturation and hue act on the chroma of YIQ, contrast scales around
    mid-grey (128 of 255), then brightness multiplies. The torch loader builds the same matrix.
    (torchvision's ColorJitter differs in two details: contrast pivots on the image's mean grey,
    and it applies the four in a random order.)
    """

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"jitter {name}={value} must be in [0, 1] (factors are drawn from [1 - s, 1 + s])")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"jitter hue={self.hue} must be in [0, 0.5] (a fraction of a full turn)")

    @property
    def active(self) -> bool:
        return any((self.brightness, self.contrast, self.saturation, self.hue))


@dataclass(frozen=True)
class AugmentSpec:
    """Everything either engine needs to turn encoded bytes into network input (see the module docstring).

    `resize`: "pad": side of the square the image is resized to (28 for a 32 window); otherwise the
    shorter side at eval and, for "alexnet", in training too (256 for 224 crops).
    `uint8`: ship uint8 pixels (4x fewer bytes) and normalize on the accelerator (the data module's
    on_after_batch_transfer, torch_loader.normalize_batch) instead of float32 from the data engine.
    """

    spec: InputSpec
    preset: Preset
    resize: int
    flip: bool
    area: tuple[float, float] = (0.08, 1.0)  # inception: crop area fraction
    aspect: tuple[float, float] = (3 / 4, 4 / 3)  # inception: crop width / height
    jitter: Jitter = field(default_factory=Jitter)
    lighting: float = 0.0  # std of the PCA lighting alphas (0.1 for alexnet); 0 = off
    uint8: bool = False

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown augmentation preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.lighting and self.spec.channels != 3:
            raise ValueError("PCA lighting needs RGB images (ImageNet's eigenvectors); this model takes grey")
        if self.jitter.active and self.spec.channels != 3 and (self.jitter.saturation or self.jitter.hue):
            raise ValueError("saturation/hue jitter needs RGB images; this model takes grey")

    @property
    def mean255(self) -> list[float]:
        return [m * 255.0 for m in self.spec.mean]

    @property
    def std255(self) -> list[float]:
        return [s * 255.0 for s in self.spec.std]


def preset_spec(
    preset: Preset,
    spec: InputSpec,
    *,
    flip: bool,
    min_area: float = 0.08,
    jitter: Jitter | None = None,
    uint8: bool = False,
) -> AugmentSpec:
    """The AugmentSpec of a named preset for a network's input (what `--data.preset` builds)."""
    if preset == "pad":  # the image fills crop_fraction of the window (28 of 32 for digits)
        resize = round(spec.image_size * spec.crop_fraction)
    else:  # shorter side such that the crop keeps crop_fraction of it (256 for 224)
        resize = round(spec.image_size / spec.crop_fraction)
    if not 0.0 < min_area <= 1.0:
        raise ValueError(f"min_area={min_area} must be in (0, 1]")
    lighting = ALEXNET_LIGHTING if preset == "alexnet" and spec.channels == 3 else 0.0
    return AugmentSpec(
        spec=spec,
        preset=preset,
        resize=resize,
        flip=flip,
        area=(min_area, 1.0),
        jitter=jitter or Jitter(),
        lighting=lighting,
        uint8=uint8,
    )


# RGB -> YIQ (NTSC), the space in which DALI's color_twist turns hue and scales saturation.
RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.321], [0.211, -0.523, 0.311]])
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ)
MID_GREY = 128.0  # the contrast pivot of DALI's color_twist / brightness_contrast, 0..255 units


def color_twist_matrix(brightness: float, contrast: float, saturation: float, hue_deg: float) -> np.ndarray:
    """(3, 4) affine colour map [M | offset] of DALI's color_twist for these factors (RGB, 0..255):
    M = b c YIQ^-1 H YIQ, H turning the IQ plane by the hue and scaling it by the saturation;
    offset = b (1 - c) 128.

    Plain loops on purpose: the torch loader calls it per image, and the CPU DALI graph compiles
    this same function with Numba inside its colour kernel (cpu_kernels.py).
    """
    theta = -math.radians(hue_deg)  # DALI turns the IQ plane clockwise for a positive hue (measured)
    c, s = math.cos(theta) * saturation, math.sin(theta) * saturation
    out = np.zeros((3, 4))
    for i in range(3):
        for j in range(3):
            hue_sat_yiq = (
                YIQ_TO_RGB[i, 0] * RGB_TO_YIQ[0, j]
                + YIQ_TO_RGB[i, 1] * (c * RGB_TO_YIQ[1, j] - s * RGB_TO_YIQ[2, j])
                + YIQ_TO_RGB[i, 2] * (s * RGB_TO_YIQ[1, j] + c * RGB_TO_YIQ[2, j])
            )
            out[i, j] = brightness * contrast * hue_sat_yiq
        out[i, 3] = brightness * (1.0 - contrast) * MID_GREY
    return out


def lighting_matrix() -> list[list[float]]:
    """3x3 M with rgb_offset (0..255 units) = M @ alpha: column j is eigenvector j x eigenvalue j x 255."""
    return [[PCA_EIGVEC[c][j] * PCA_EIGVAL[j] * 255.0 for j in range(3)] for c in range(3)]


def eval_crop_count(requested: int | None, *, flip: bool) -> int:
    """Crops for the test step: 10 (corners + centre, mirrored) where flipping is allowed, else 5."""
    if requested is None:
        return 10 if flip else 5
    if requested not in (1, 5, 10):
        raise ValueError(f"test_crops must be 1, 5 or 10, got {requested}")
    if requested == 10 and not flip:
        raise ValueError("test_crops=10 mirrors the image, but this dataset forbids flips (e.g. digits); use 5")
    return requested

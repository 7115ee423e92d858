"""Model registry: every architecture declares what the data pipeline needs to feed it.

A builder is registered with its input size, normalization and crop fraction (timm's idea), so
the platform hands those facts to the data module instead of each config repeating them.
Lookups fail loudly with the list of valid names (torchvision's `_api.py`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn


@dataclass(frozen=True)
class ModelInfo:
    """What a registered model declares about its input; read by the platform, never by models."""

    name: str
    builder: Callable[..., nn.Module] = field(repr=False)
    input_size: tuple[int, int, int]  # (channels, height, width) at the default resolution
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units
    std: tuple[float, ...]
    crop_fraction: float  # eval: resize to input/crop_fraction, then crop (0.875 -> 256 for 224)
    description: str = ""

    @property
    def options(self) -> list[str]:
        """Keyword options the builder accepts besides num_classes."""
        params = inspect.signature(self.builder).parameters
        return [n for n, p in params.items() if p.kind == p.KEYWORD_ONLY and n != "num_classes"]


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    *,
    input_size: tuple[int, int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    crop_fraction: float,
    name: str | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a keyword-only builder `f(*, num_classes, **options) -> nn.Module`."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or builder.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is registered twice")
        if len(mean) != input_size[0] or len(std) != input_size[0]:
            raise ValueError(f"model {key!r}: mean/std need {input_size[0]} channel values")
        doc = (inspect.getdoc(builder) or "").splitlines()
        _REGISTRY[key] = ModelInfo(
            name=key,
            builder=builder,
            input_size=tuple(input_size),
            mean=tuple(mean),
            std=tuple(std),
            crop_fraction=crop_fraction,
            description=doc[0] if doc else "",
        )
        return builder

    return decorate


def list_models() -> list[str]:
    """Sorted names of every registered model (the families register when `convnets.models` is imported)."""
    return sorted(_REGISTRY)


def get_model_info(name: str) -> ModelInfo:
    """The declared input facts of `name`; ValueError listing the valid names on a miss."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, *, num_classes: int = 1000, **options: object) -> nn.Module:
    """Build a registered model; ValueError naming the valid choices on a bad name or option."""
    info = get_model_info(name)
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        valid = ", ".join(info.options) or "none"
        raise ValueError(f"model {name!r} has no option {unknown[0]!r}; valid options: {valid}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return info.builder(num_classes=num_classes, **options)

"""Test-time prediction rules: multi-crop averaging and dropout sampling (the lecture slides' option 1).

Shared by `convnets test` (the module's test step) and `convnets evaluate`, so both compute the
same numbers. Everything here is batched tensor arithmetic: no per-sample Python.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

Average = Literal["softmax", "logits"]
AVERAGES: tuple[str, ...] = ("softmax", "logits")


def average_crops(logits: torch.Tensor, average: Average = "softmax") -> torch.Tensor:
    """(B, crops, classes) logits -> (B, classes) class probabilities.

    "softmax": the mean of the crops' softmax outputs, Krizhevsky et al. 2012 section 4.1
    ("averaging the predictions made by the network's softmax layer on the ten patches");
    "logits": the softmax of the mean logit (a geometric mean of the crops' distributions).
    """
    if average == "softmax":
        return logits.float().softmax(-1).mean(1)
    if average == "logits":
        return logits.float().mean(1).softmax(-1)
    raise ValueError(f"unknown crop averaging {average!r}; valid: {', '.join(AVERAGES)}")


def has_dropout(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in net.modules())


@contextlib.contextmanager
def dropout_sampling(net: nn.Module):
    """Dropout layers draw masks (train mode) for the duration; everything else, BatchNorm
    included, stays as it is (eval: running statistics). Restores the modes afterwards."""
    layers = [m for m in net.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    modes = [m.training for m in layers]
    for m in layers:
        m.train()
    try:
        yield
    finally:
        for m, mode in zip(layers, modes):
            m.train(mode)


def mc_dropout_probs(
    forward: Callable[[torch.Tensor], torch.Tensor],
    net: nn.Module,
    images: torch.Tensor,
    *,
    samples: int,
    average: Average = "softmax",
) -> torch.Tensor:
    """Option 1 of the seed: `samples` dropout masks per image, the renormalised geometric mean
    of their output distributions (mean of the log-probabilities, then softmax).

    images: (B, crops, C, H, W); each mask sees all crops (averaged with `average`) in one forward,
    so the cost is `samples` forward passes of the whole batch.
    """
    if samples < 1:
        raise ValueError(f"mc-dropout samples must be >= 1, got {samples}")
    b, k = images.shape[:2]
    flat = images.flatten(0, 1)
    total = None
    with dropout_sampling(net):
        for _ in range(samples):
            # clamp: a probability that underflows to 0 would make the geometric mean -inf
            logp = average_crops(forward(flat).view(b, k, -1), average).clamp_min(1e-30).log()
            total = logp if total is None else total + logp
    return (total / samples).softmax(-1)

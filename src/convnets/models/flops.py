"""FLOPs of a registered model's forward pass: the MFU numerator for training and benchmarks."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from convnets.models.registry import create_model, get_model_info


def forward_flops(name: str, *, num_classes: int, input_size: tuple[int, int, int] | None = None, **options) -> float:
    """FLOPs of one image's forward pass (2 x multiply-adds), counted once on a CPU copy."""
    size = input_size or get_model_info(name).input_size
    model = create_model(name, num_classes=num_classes, **options).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *size))
    return float(counter.get_total_flops())

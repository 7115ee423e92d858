"""`convnets models`: every registered model with parameters and GFLOPs at its default input."""

from __future__ import annotations

import json

from convnets.models import create_model, get_model_info, list_models
from convnets.models.flops import forward_flops


def model_row(name: str, *, num_classes: int = 1000) -> dict:
    info = get_model_info(name)
    model = create_model(name, num_classes=num_classes)
    return {
        "name": name,
        "params": sum(p.numel() for p in model.parameters()),
        # FLOPs = 2 x multiply-adds (torch's counter); the papers' "operations" usually count MACs.
        "gflops": forward_flops(name, num_classes=num_classes) / 1e9,
        "input_size": list(info.input_size),
        "num_classes": num_classes,
        "mean": list(info.mean),
        "std": list(info.std),
        "crop_fraction": info.crop_fraction,
        "description": info.description,
    }


def models_table(*, as_json: bool, num_classes: int = 1000) -> str:
    rows = [model_row(n, num_classes=num_classes) for n in list_models()]
    if as_json:
        return json.dumps(rows, indent=2)
    lines = [
        f"{'name':<16} {'params':>12} {'GFLOPs':>8}  {'input':<11} description",
        f"{'-' * 16} {'-' * 12} {'-' * 8}  {'-' * 11} {'-' * 40}",
    ]
    for r in rows:
        size = "x".join(str(v) for v in r["input_size"])
        lines.append(f"{r['name']:<16} {r['params']:>12,} {r['gflops']:>8.3f}  {size:<11} {r['description']}")
    lines.append(f"(parameters and FLOPs at {num_classes} classes, one image at the default input size)")
    return "\n".join(lines)

"""`convnets analyze`: Zeiler & Fergus's (2013) studies of what a trained network computes.

    convnets analyze invariance --ckpt CKPT --data SHARDS [--samples 64] [--layers conv1,fc7]
        Figure 5: for each layer, ||f(x) - f(T x)|| / ||f(x)|| between an image and its vertically
        translated, scaled and rotated versions, and P(true class), as curves over the transform's
        magnitude, averaged over the sampled images.
    convnets analyze layers --ckpt CKPT --data SHARDS [--train-samples 2000]
        "Tapping off features at each layer" (section 5.2): a logistic-regression classifier trained
        on each layer's frozen, pooled features; test accuracy per layer.

Images are the centre crops the evaluation uses (decoded once, through the DALI eval graph); the
transforms act on the normalized crop (fill 0 = the mean colour). Outputs: JSON, a markdown table,
PNGs, and the same to W&B (the training run's when its folder is known).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from convnets.platform.analysis.common import AnalyzeConfig

log = logging.getLogger(__name__)


def add_analyze_subcommands(sub) -> None:
    inv = sub.add_parser("invariance", help="feature distance and P(true class) under translation, scale, rotation")
    layers = sub.add_parser("layers", help="linear classifier on each layer's frozen features")
    for p in (inv, layers):
        p.add_argument("--ckpt", type=Path, required=True, help="checkpoint written by `convnets fit`")
        p.add_argument("--data", type=Path, required=True, help="shard folder (DIR with DIR/train, DIR/val)")
        p.add_argument("--split", default="val", help="split of the evaluation images (default val)")
        p.add_argument("--samples", type=int, default=64 if p is inv else 2000, help="evaluation images")
        p.add_argument(
            "--layers",
            default=None,
            help="comma-separated layer names (default: first conv and last hidden "
            "layer for invariance, every layer for layers)",
        )
        p.add_argument("--batch", type=int, default=64, help="images per forward pass")
        p.add_argument("--num-threads", type=int, default=2, help="DALI threads")
        p.add_argument(
            "--out", type=Path, default=None, help="output folder (default: RUN/analysis or ./analysis-CKPT)"
        )
        p.add_argument("--json", type=Path, default=None, help="also write the result JSON here")
        p.add_argument("--no-wandb", dest="wandb", action="store_false", help="do not log to W&B")
    layers.add_argument(
        "--train-samples", type=int, default=2000, help="train-split images for the probes (default 2000)"
    )


def run_analyze_command(args: argparse.Namespace) -> int:
    names = set(AnalyzeConfig.__dataclass_fields__) & set(vars(args))
    cfg = AnalyzeConfig(**{k: getattr(args, k) for k in names})
    if min(cfg.samples, cfg.train_samples, cfg.batch, cfg.num_threads) < 1:
        raise ValueError("--samples, --train-samples, --batch and --num-threads must be >= 1")
    if args.analyze_command == "invariance":
        from convnets.platform.analysis.invariance import run_invariance

        result = run_invariance(cfg)
    else:
        from convnets.platform.analysis.probes import run_layer_probes

        result = run_layer_probes(cfg)
    print(result["table"])
    print(f"wrote {result['out']}")
    return 0

"""`convnets bench ...`: every benchmark's arguments and the dispatch to it.

Light to import (argparse only): building the `convnets` parser must not load torch and Lightning
(~8 s on 2 cores), or `convnets shards`, `status` and `--help` would pay it; each benchmark
imports what it measures when it runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from convnets.platform.bench.report import format_e2e_table, format_eval_table, format_table


def _add_common(p) -> None:
    p.add_argument("--arch", required=True, help="registered model (`convnets models`)")
    p.add_argument("--batch", type=int, required=True, help="images per step")
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed"])
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--steps", type=int, default=50, help="timed steps (per arm and round for `model`; default 50)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before them (default 3)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--json", type=Path, default=None, help="write the result here")


def add_bench_subcommands(sub) -> None:
    add_e2e_arguments(sub.add_parser("e2e", help="shards into training: data alone, model alone, both together"))
    from convnets.platform.bench.imagenette import add_imagenette_arguments

    add_imagenette_arguments(sub.add_parser("imagenette", help="time to accuracy on Imagenette on this machine's CPUs"))
    from convnets.platform.bench.data import add_data_arguments

    add_data_arguments(sub.add_parser("data", help="data path alone: bytes fed, decode-only, the train loader"))
    from convnets.platform.bench.epoch import add_epoch_arguments

    add_epoch_arguments(
        sub.add_parser("epoch", help="whole epochs of `convnets fit` by phase, and the recipe's wall time")
    )
    ev = sub.add_parser("eval", help="multi-crop test images/s through the platform's test step")
    _add_common(ev)
    ev.add_argument("--crops", type=int, default=10, choices=[1, 5, 10], help="crops per image (default 10)")
    ev.add_argument("--rounds", type=int, default=3, help="alternating 1-crop/N-crop rounds; medians (default 3)")
    model = sub.add_parser("model", help="training images/s: the Lightning loop vs a bare PyTorch loop")
    _add_common(model)
    model.add_argument("--compile", action="store_true", help="torch.compile the network")
    model.add_argument(
        "--space-to-depth",
        action="store_true",
        help="the strided stem convolution as a stride-1 one over pixel blocks (same output)",
    )
    model.add_argument("--rounds", type=int, default=5, help="A/B rounds; the ratio is their median (default 5)")


def run_bench_command(args: argparse.Namespace) -> int:
    if args.bench_command == "imagenette":
        from convnets.platform.bench.imagenette import bench_imagenette, format_imagenette_table

        return _report(bench_imagenette(args), format_imagenette_table, args.json)
    if args.bench_command == "data" and args.epochs is not None:
        from convnets.platform.bench.cached_epochs import bench_epochs, epochs_config, format_epochs_table

        return _report(bench_epochs(epochs_config(args)), format_epochs_table, args.json)
    if args.bench_command == "data":
        from convnets.platform.bench.data import bench_data, config_from_args, format_data_table

        return _report(bench_data(config_from_args(args)), format_data_table, args.json)
    if args.bench_command == "epoch":
        from convnets.platform.bench.epoch import bench_epoch, format_epoch_table

        return _report(bench_epoch(args), format_epoch_table, args.json)
    if args.bench_command == "e2e":
        from convnets.platform.bench.e2e import bench_e2e

        return _report(bench_e2e(args), format_e2e_table, args.json)
    from convnets.platform.bench.model import ModelBench, bench_eval, bench_model

    cfg = ModelBench(
        arch=args.arch,
        batch=args.batch,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=getattr(args, "compile", False),
        space_to_depth=getattr(args, "space_to_depth", False),
        steps=args.steps,
        warmup=args.warmup,
        rounds=getattr(args, "rounds", 1),
        num_classes=args.num_classes,
        device=args.device,
    )
    if min(cfg.batch, cfg.steps, cfg.rounds) < 1 or cfg.warmup < 0:
        raise ValueError("--batch, --steps and --rounds must be >= 1 and --warmup >= 0")
    import torch

    if cfg.torch_device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible")
    if args.bench_command == "eval":
        return _report(bench_eval(cfg, crops=args.crops), format_eval_table, args.json)
    return _report(bench_model(cfg), format_table, args.json)


def _report(result: dict, table, path: Path | None) -> int:
    print(table([result]))
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    return 0


# -- the two arms ---------------------------------------------------------------------------------


def add_e2e_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="shard folder written by `convnets shards` (uses train/)")
    p.add_argument("--arch", required=True)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--steps", type=int, default=40, help="timed batches per measurement (default 40)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--num-threads", type=int, default=8, help="DALI CPU threads (default 8)")
    p.add_argument("--hw-decoder-load", type=float, default=0.65, help="GPU: share for the hardware JPEG decoder")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (decoding follows the device)")
    p.add_argument("--json", type=Path, default=None)

"""`convnets demo`: the whole product on real digits in about two minutes on 2 CPU cores.

shards -> DALI (CPU here, GPU where there is one) -> Lightning DDP on 2 processes -> W&B offline
run -> multi-crop test -> results table + plots, all inside one folder:

    convnets demo                                   # sklearn's 1,797 digits
    convnets demo --data mnist:../shared/data/mnist # the real MNIST test set, 8,000 / 2,000
    convnets demo --data imagefolder:PATH --arch alexnet_small

Training and testing run as `convnets fit` / `convnets test` child processes: DDP re-executes
its command line on every rank, and that command must be the training alone, not the demo.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from convnets.data_pipelines.shards.sources import DigitsSource, ImageFolderSource, MnistSource
from convnets.data_pipelines.shards.writer import write_shards
from convnets.utils.children import run_convnets
from convnets.utils.console import verbose

CONFIGS = Path(__file__).resolve().parents[2] / "configs"  # package data: works from a wheel too
DEFAULT_EPOCHS = {"digits": 40, "mnist": 12, "imagefolder": 10}
CONFIG_FOR = {
    "digits": "lenet5_digits.yaml",
    "mnist": "lenet5_mnist.yaml",
    "imagefolder": "alexnet_small_imagenette.yaml",
}


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.add_argument("--data", default="digits", help="digits | mnist:PATH | imagefolder:PATH (default: digits)")
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for everything the demo makes (default: runs/demo-<data>)"
    )
    parser.add_argument("--arch", default=None, help="model (default: lenet5; alexnet_small for imagefolder)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: 40 digits, 12 mnist)")
    parser.add_argument("--devices", type=int, default=2, help="DDP processes (default: 2)")
    parser.add_argument("--accelerator", default="cpu", help="cpu or gpu (default: cpu)")


def _source(data: str):
    kind, _, path = data.partition(":")
    if kind == "digits" and not path:
        return kind, DigitsSource()
    if kind in ("mnist", "imagefolder") and path:
        if not Path(path).exists():
            raise ValueError(f"--data {data}: {path} does not exist")
        return kind, MnistSource(root=Path(path)) if kind == "mnist" else ImageFolderSource(root=Path(path))
    raise ValueError(f"--data {data!r}: use digits, mnist:PATH or imagefolder:PATH")


def _lightning_args(kind: str, out: Path, arch: str) -> list[str]:
    # Each data kind trains from its own recipe: natural images need AlexNet's scale augmentation
    # and optimiser settings, not LeNet's digit recipe with overrides.
    common = [
        "--config",
        str(CONFIGS / CONFIG_FOR[kind]),
        "--model.arch",
        arch,
        "--data.data_dir",
        str(out / "shards"),
        "--runs_dir",
        str(out.parent),
        "--run_name",
        out.name,
    ]
    return common


def run_demo(args: argparse.Namespace) -> int:
    kind, source = _source(args.data)
    arch = args.arch or ("alexnet_small" if kind == "imagefolder" else "lenet5")
    out = (args.out or Path("runs") / f"demo-{kind}").resolve()
    epochs = args.epochs or DEFAULT_EPOCHS[kind]
    start = time.perf_counter()
    print(f"[1/3] shards: {source.description} -> {out / 'shards'}")
    write_shards(source, out / "shards", shard_size=500 if kind == "digits" else 2000, seed=0)
    (out / "metrics.json").unlink(missing_ok=True)
    common = _lightning_args(kind, out, arch)
    print(f"[2/3] fit: {arch}, {epochs} epochs, DDP on {args.devices} {args.accelerator} processes")
    strategy = "ddp" if args.devices > 1 else "auto"
    run_convnets(
        [
            "fit",
            *common,
            "--trainer.max_epochs",
            str(epochs),
            "--trainer.devices",
            str(args.devices),
            "--trainer.strategy",
            strategy,
            "--trainer.accelerator",
            args.accelerator,
        ]
    )
    print("[3/3] test: last checkpoint, single crop and multi-crop")
    # Lightning's own test table repeats the results table below, less readably
    quiet = [] if verbose() else ["--verbose", "false"]
    run_convnets(
        [
            "test",
            *common,
            "--trainer.devices",
            "1",
            "--trainer.accelerator",
            args.accelerator,
            "--ckpt_path",
            str(out / "checkpoints" / "last.ckpt"),
            *quiet,
        ]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["demo_wall_s"] = time.perf_counter() - start
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(results_table(metrics, out))
    return 0


def results_table(m: dict, out: Path) -> str:
    def pct(key: str) -> str:
        return f"{100 * m[key]:6.2f}%" if key in m else "   n/a "

    rows = [
        "| metric                         | value    |",
        "|--------------------------------|----------|",
        f"| test top-1, multi-crop         | {pct('test_top1')}  |",
        f"| test top-5, multi-crop         | {pct('test_top5')}  |",
        f"| test top-1, single centre crop | {pct('test_top1_1crop')}  |",
        f"| test top-5, single centre crop | {pct('test_top5_1crop')}  |",
        f"| train images/s (last epoch)    | {m.get('images_per_s', float('nan')):8.0f} |",
        f"| fit wall time                  | {m.get('fit_seconds', float('nan')):7.1f}s |",
        f"| demo wall time                 | {m.get('demo_wall_s', float('nan')):7.1f}s |",
    ]
    return "\n".join(rows) + f"\nrun folder: {out} (checkpoints/, wandb/, metrics.json, plots/)"

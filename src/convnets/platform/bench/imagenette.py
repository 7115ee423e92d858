"""`convnets bench imagenette` (`make bench-imagenette`): time to accuracy on a laptop-class CPU.

Everything a user would wait for is on the clock: writing Imagenette's real JPEGs as 80-px
shards, training the `alexnet_small_imagenette_fast` recipe, and the 10-crop test. Target:
>= 80% val top-1 (10 crops) within 15 minutes on 2 CPU cores. Writes bench.json (the numbers,
hardware, versions and the accuracy-vs-wall-time curve) and time_to_accuracy.png in --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

TARGET_TOP1, BUDGET_S = 0.80, 15 * 60


def add_imagenette_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=Path("../shared/data/imagenette"), help="Imagenette train/ and val/")
    p.add_argument("--out", type=Path, default=Path("runs/bench-imagenette"), help="folder for shards, run, results")
    p.add_argument("--config", default="alexnet_small_imagenette_fast", help="recipe (packaged name or path)")
    p.add_argument("--resize", type=int, default=80, help="shorter side of the shards' JPEGs (default 80)")
    p.add_argument("--max-epochs", type=int, default=None, help="override the recipe's epochs (smoke tests)")
    p.add_argument("--json", type=Path, default=None, help="also copy bench.json here")


def bench_imagenette(args: argparse.Namespace) -> dict:
    import torch

    from convnets.data_pipelines.shards.sources import ImageFolderSource
    from convnets.data_pipelines.shards.writer import write_shards
    from convnets.platform.training import plots
    from convnets.utils.children import run_convnets
    from convnets.utils.environment import hardware, runtime_versions

    if not (args.data / "train").is_dir():
        raise FileNotFoundError(f"--data {args.data}: no train/ folder (Imagenette: train/<wnid>/*.JPEG, val/...)")
    out = args.out.resolve()
    start = time.time()
    write_shards(ImageFolderSource(root=args.data, resize=args.resize), out / "shards", shard_size=2000, seed=0)
    shards_s = time.time() - start
    (out / "metrics.json").unlink(missing_ok=True)
    common = [
        "--config",
        args.config,
        "--data.data_dir",
        str(out / "shards"),
        "--runs_dir",
        str(out.parent),
        "--run_name",
        out.name,
        "--trainer.logger",
        "false",
    ]
    if args.max_epochs is not None:
        common += ["--trainer.max_epochs", str(args.max_epochs), "--trainer.check_val_every_n_epoch", "1"]
    run_convnets(["fit", *common])
    fit_s = time.time() - start - shards_s
    run_convnets(["test", *common, "--ckpt_path", str(out / "checkpoints" / "last.ckpt")])
    wall = time.time() - start
    m = json.loads((out / "metrics.json").read_text())
    curve = [(v["unix_time"] - start, v["val_top1"]) for v in m.get("val_history", [])]
    result = {
        "bench": "imagenette",
        "config": args.config,
        "resize": args.resize,
        "max_epochs": args.max_epochs,
        "top1_10crop": m["test_top1"],
        "top5_10crop": m["test_top5"],
        "top1_1crop": m["test_top1_1crop"],
        "wall_s": wall,
        "shards_s": shards_s,
        "fit_s": fit_s,
        "test_s": wall - shards_s - fit_s,
        "train_images_per_s": m.get("images_per_s"),
        "target_top1": TARGET_TOP1,
        "budget_s": BUDGET_S,
        "met": m["test_top1"] >= TARGET_TOP1 and wall <= BUDGET_S,
        "curve": [{"wall_s": t, "val_top1": a} for t, a in curve],
        "hardware": hardware(torch.device("cpu")),
        "versions": runtime_versions(),
    }
    plots.time_to_accuracy(
        curve,
        (wall, m["test_top1"]),
        TARGET_TOP1,
        BUDGET_S,
        out / "time_to_accuracy.png",
        title=f"Imagenette, {args.config}, {hardware(torch.device('cpu'))}",
    )
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_imagenette_table(results: list[dict]) -> str:
    from convnets.utils.tables import markdown_table, yes_no

    return markdown_table(
        ["recipe", "top-1 10-crop", "top-1 centre", "wall (shards + fit + test)", "target met"],
        [
            [
                r["config"],
                f"{100 * r['top1_10crop']:.2f}%",
                f"{100 * r['top1_1crop']:.2f}%",
                f"{r['wall_s'] / 60:.1f} min ({r['shards_s']:.0f} s + {r['fit_s']:.0f} s + {r['test_s']:.0f} s)",
                f"{yes_no(r['met'])} (>= {100 * r['target_top1']:.0f}% in {r['budget_s'] / 60:.0f} min)",
            ]
            for r in results
        ],
    )

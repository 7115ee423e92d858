"""`convnets evaluate`'s outputs: eval.json, eval.md, PNGs, and the same logged to W&B (rank 0 only)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from convnets.platform.evaluation import plots as eval_plots
from convnets.platform.training import plots
from convnets.utils.environment import package_versions
from convnets.utils.files import write_json
from convnets.utils.tables import markdown_table

log = logging.getLogger(__name__)
CONFUSED_PAIRS = 10  # most confused (true, predicted) pairs listed in the report


def per_class(confusion: np.ndarray, classes: list[str], names: list[str]) -> list[dict]:
    """Top-1 accuracy of each class (its diagonal over its row), with the class's image count; each
    class by id (`class`) and by the name a person reads (`name`)."""
    counts = confusion.sum(1)
    acc = np.diag(confusion) / np.maximum(counts, 1)
    return [{"class": c, "name": m, "n": int(n), "top1": float(a)} for c, m, n, a in zip(classes, names, counts, acc)]


def confused_pairs(confusion: np.ndarray, classes: list[str], names: list[str], k: int = CONFUSED_PAIRS) -> list[dict]:
    """The k largest off-diagonal cells: (true class, predicted class, count), by id and by name."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:k]
    rows, cols = np.unravel_index(flat, off.shape)
    return [
        {
            "true": classes[r],
            "true_name": names[r],
            "predicted": classes[c],
            "predicted_name": names[c],
            "count": int(off[r, c]),
        }
        for r, c in zip(rows, cols)
        if off[r, c] > 0
    ]


def write_predictions(rows: np.ndarray, path: Path) -> None:
    """Each image's top-k classes and probabilities (index = position in the split), atomically."""
    k = (rows.shape[1] - 2) // 2
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(
        tmp,
        index=rows[:, 0].astype(np.int64),
        label=rows[:, 1].astype(np.int64),
        classes=rows[:, 2 : 2 + k].astype(np.int64),
        probs=rows[:, 2 + k :].astype(np.float32),
    )
    tmp.replace(path)


def _label(name: str, class_id: str) -> str:
    return name if name == class_id else f"{name} ({class_id})"


def markdown_report(result: dict) -> str:
    parts = [f"# Evaluation of {result['ckpt']}", "", summary_table(result), ""]
    cal = [("option 2: all units (inverted dropout)", {"top1": result["top1"], **result["calibration"]})]
    if "mc_dropout" in result:
        cal.append((f"option 1: {result['mc_dropout_samples']} dropout masks, geometric mean", result["mc_dropout"]))
    parts += [
        "## Test-time dropout and calibration",
        "",
        markdown_table(
            ["prediction", "top-1", "NLL", "ECE (15 bins)"],
            [[name, f"{c['top1']:.4f}", f"{c['nll']:.4f}", f"{c['ece']:.4f}"] for name, c in cal],
        ),
        "",
    ]
    worst = sorted(result["per_class"], key=lambda r: r["top1"])[:20]
    parts += [
        "## Per-class top-1 (the 20 worst)",
        "",
        markdown_table(
            ["class", "images", "top-1"],
            [[_label(r["name"], r["class"]), str(r["n"]), f"{r['top1']:.3f}"] for r in worst],
        ),
        "",
    ]
    if result["most_confused"]:
        parts += [
            "## Most confused pairs",
            "",
            markdown_table(
                ["true", "predicted as", "images"],
                [
                    [_label(p["true_name"], p["true"]), _label(p["predicted_name"], p["predicted"]), str(p["count"])]
                    for p in result["most_confused"]
                ],
            ),
            "",
        ]
    return "\n".join(parts)


def write_outputs(result: dict, collector, dm, out: Path, *, cfg, logger) -> dict:
    """Complete the result with per-class figures and plots; write and log everything; return it."""
    split = result["split"]
    manifest = dm.manifest(split)
    classes, names = list(manifest.classes), list(manifest.display_names)  # ids in the JSON, names in pictures
    confusion = collector.confusion
    result.update(
        per_class=per_class(confusion, classes, names),
        most_confused=confused_pairs(confusion, classes, names),
        top1_error=1 - result["top1"],
        top5_error=1 - result["top5"],
        versions=package_versions(),
        out=str(out),
    )
    pngs = {
        "confusion_matrix": plots.confusion_matrix(confusion, names, out / "plots" / "confusion_matrix.png"),
        "reliability": eval_plots.reliability_diagram(
            {
                "all units": result["calibration"],
                **({"MC dropout": result["mc_dropout"]} if "mc_dropout" in result else {}),
            },
            out / "plots" / "reliability.png",
        ),
    }
    if collector.topk is not None and len(collector.topk):
        pngs["predictions"] = eval_plots.prediction_grid(
            collector.topk[: cfg.grid_images],
            dm.split_dir(split),
            names,
            out / "plots" / "predictions.png",
            open_path=dm.cache(split).ensure if dm.cached else None,
        )
    if collector.topk is not None:
        write_predictions(collector.topk, out / "predictions.npz")
    result["plots"] = {k: str(v) for k, v in pngs.items()}
    write_json(out / "eval.json", result)
    if cfg.json is not None:
        write_json(cfg.json, result)
    (out / "eval.md").write_text(markdown_report(result) + "\n")
    if logger is not None:
        _log_wandb(logger, result, pngs)
    return result


def _log_wandb(logger, result: dict, pngs: dict[str, Path]) -> None:
    prefix = f"eval/{result['split']}_{result['crops']}crop"
    scalars = {k: result[k] for k in ("top1", "top5", "top1_1crop", "top5_1crop", "images_per_s")}
    scalars.update({f"{k}": result["calibration"][k] for k in ("nll", "ece")})
    if "mc_dropout" in result:
        scalars.update({f"mc_{k}": result["mc_dropout"][k] for k in ("top1", "top5", "nll", "ece")})
    logger.log_metrics({f"{prefix}/{k}": v for k, v in scalars.items()})
    for key, path in pngs.items():
        logger.log_image(key=f"{prefix}/{key}", images=[str(path)])
    logger.experiment.summary.update({f"{prefix}/{k}": v for k, v in scalars.items()})


def summary_table(result: dict) -> str:
    rows = [
        [
            f"{result['crops']} crops ({result['average']})",
            f"{result['top1']:.4f}",
            f"{result['top5']:.4f}",
            f"{1 - result['top1']:.4f}",
            f"{1 - result['top5']:.4f}",
        ],
        [
            "centre crop",
            f"{result['top1_1crop']:.4f}",
            f"{result['top5_1crop']:.4f}",
            f"{1 - result['top1_1crop']:.4f}",
            f"{1 - result['top5_1crop']:.4f}",
        ],
    ]
    table = markdown_table(["prediction", "top-1", "top-5", "top-1 error", "top-5 error"], rows)
    return (
        f"{result['arch']} on {result['split']} ({result['n']} images, {result['images_per_s']:.1f} images/s, "
        f"{result['world_size']} process(es))\n{table}"
    )

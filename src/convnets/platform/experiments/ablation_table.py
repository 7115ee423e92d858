"""The ablation sweep's outputs: the plan, the rows, ablation.md / .json / .png and the W&B table.

Accuracies are fractions in [0, 1] as in each run's metrics.json; deltas are changes in error
against `full` in percentage points (positive = the ablation hurts), the unit the papers report.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from convnets.platform.experiments.ablation_variants import PlannedVariant
from convnets.platform.training.tracking import wandb_offline
from convnets.utils.files import write_json

STATES = {"done": "finished (skip)", "test": "test only", "resume": "resume fit + test", "fit": "fit + test"}
COLUMNS = [
    "variant",
    "change",
    "params",
    "test_top1",
    "test_top5",
    "delta_top1_err_pts",
    "delta_top5_err_pts",
    "reported",
]


def plan_text(planned: list[PlannedVariant]) -> str:
    """What `--dry-run` prints: one line per variant, then the exact command lines."""
    lines = [f"{'variant':<24} {'parameters':>12}  {'to do':<16} flags"]
    for item in planned:
        lines.append(
            f"{item.variant.name:<24} {item.params:>12,}  {STATES[item.state]:<16} "
            f"{' '.join(item.variant.flags) or '(none)'}"
        )
    lines.append("\ncommand lines (each prefixed by `convnets`):")
    lines += [shlex.join(cmd) for item in planned for cmd in item.commands]
    return "\n".join(lines)


def collect_rows(planned: list[PlannedVariant], out: Path) -> list[dict]:
    """One row per variant from its run folder's metrics.json, with deltas against `full` when it ran."""
    rows = []
    for item in planned:
        m = json.loads((out / item.variant.name / "metrics.json").read_text())
        rows.append(
            {
                "variant": item.variant.name,
                "change": item.variant.change,
                "flags": item.variant.flags,
                "params": item.params,
                "reported": item.variant.reported,
                "run_dir": str(out / item.variant.name),
                **{
                    k: m.get(k)
                    for k in (
                        "test_top1",
                        "test_top5",
                        "test_top1_1crop",
                        "test_top5_1crop",
                        "fit_seconds",
                        "images_per_s",
                    )
                },
                "epochs": len(m.get("history", [])),  # epochs actually trained
            }
        )
    full = next((r for r in rows if r["variant"] == "full"), None)
    for row in rows:
        for k in ("top1", "top5"):
            # error change = (1 - acc) - (1 - acc_full), in points
            row[f"delta_{k}_err_pts"] = None if full is None else 100 * (full[f"test_{k}"] - row[f"test_{k}"])
    return rows


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _pts(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def markdown_table(rows: list[dict], title: str) -> str:
    lines = [
        f"### {title}",
        "",
        "| variant | what changed | parameters | top-1 | top-5 | Δ top-1 err (pts) | Δ top-5 err (pts) "
        "| reported on ImageNet |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['change']} | {r['params']:,} | {_pct(r['test_top1'])} | "
            f"{_pct(r['test_top5'])} | {_pts(r['delta_top1_err_pts'])} | {_pts(r['delta_top5_err_pts'])} | "
            f"{r['reported']} |"
        )
    epochs = sorted({r["epochs"] for r in rows})
    lines += [
        "",
        f"Test accuracy of the last checkpoint (multi-crop where the data allows flips) after "
        f"{'/'.join(map(str, epochs))} epoch(s); Δ: error minus `full`'s error, positive = worse. "
        "Reported: Zeiler & Fergus 2013 (18.1% top-5 baseline, as on the lecture slides) and "
        "Krizhevsky et al. 2012, on full ImageNet at 224 px.",
    ]
    return "\n".join(lines)


def bar_chart(rows: list[dict], path: Path, title: str) -> Path:
    """Top-1 and top-5 test error (%) per variant, side by side."""
    import numpy as np

    from convnets.utils.figures import plt  # Agg backend: files only

    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.2))
    for offset, k in ((-0.2, "top1"), (0.2, "top5")):
        errors = [100 * (1 - r[f"test_{k}"]) if r[f"test_{k}"] is not None else 0.0 for r in rows]
        bars = ax.bar(x + offset, errors, width=0.4, label=f"{k[:3]}-{k[3:]} error")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, [r["variant"] for r in rows], rotation=25, ha="right")
    ax.set(ylabel="test error (%)", title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_outputs(rows: list[dict], out: Path, *, title: str) -> str:
    """OUT/ablation.json, OUT/ablation.md and OUT/ablation.png; returns the markdown."""
    write_json(out / "ablation.json", rows)  # a list of rows; write_json is atomic for any JSON value
    markdown = markdown_table(rows, title)
    (out / "ablation.md").write_text(markdown + "\n")
    bar_chart(rows, out / "ablation.png", title)
    return markdown


def log_wandb(rows: list[dict], out: Path, *, project: str) -> None:
    """One summary run (offline unless credentials) holding the table and the chart, under OUT/wandb."""
    import wandb

    # WANDB_MODE=disabled is honoured; otherwise offline unless credentials exist.
    mode = "disabled" if os.environ.get("WANDB_MODE") == "disabled" else "offline" if wandb_offline() else "online"
    run = wandb.init(
        project=project,
        name=f"ablation-{out.name}",
        job_type="ablation",
        dir=str(out),
        mode=mode,
        config={"variants": [r["variant"] for r in rows]},
    )
    data = [[r[c] if c != "params" else int(r[c]) for c in COLUMNS] for r in rows]
    run.log(
        {"ablation": wandb.Table(columns=COLUMNS, data=data), "ablation_chart": wandb.Image(str(out / "ablation.png"))}
    )
    run.finish()

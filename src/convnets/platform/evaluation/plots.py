"""Evaluation figures: reliability diagram, example predictions (AlexNet Figure 4), analysis curves."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from convnets.utils.figures import plt, save_figure


def reliability_diagram(calibrations: dict[str, dict], path: Path) -> Path:
    """Accuracy against confidence per bin, one line per prediction rule; the diagonal is perfect calibration."""
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfectly calibrated")
    for k, (name, cal) in enumerate(calibrations.items()):
        bins = cal["bins"]
        count = np.asarray(bins["count"])
        edges = np.linspace(0, 1, len(count) + 1)
        mid = (edges[:-1] + edges[1:]) / 2
        used = count > 0
        ax.plot(
            np.asarray(bins["confidence"])[used],
            np.asarray(bins["accuracy"])[used],
            marker="o",
            ms=4,
            label=f"{name}: ECE {cal['ece']:.3f}, NLL {cal['nll']:.3f}",
            color=f"C{k}",
        )
        hist.bar(
            mid + (k - 0.5) * 0.02,
            count,
            width=0.02 if len(calibrations) > 1 else 1 / len(count),
            color=f"C{k}",
            alpha=0.7,
        )
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title="reliability diagram (15 confidence bins)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    hist.set(xlabel="confidence (top probability)", ylabel="images")
    return save_figure(fig, path)


def _thumbnail(data: bytes, side: int = 160) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        img.thumbnail((side, side))
        return np.asarray(img)


def prediction_grid(
    rows: np.ndarray, split_dir: Path, classes: list[str], path: Path, columns: int = 4, open_path=None
) -> Path:
    """Images with their top-5 classes and probabilities, the true class in red (Krizhevsky et al. 2012, Figure 4).

    rows: (n, 2 + 2k) = sample index, true label, k predicted classes, their probabilities;
    open_path: the node-local cache's `ensure` where the split is read through one (ShardFiles).
    """
    from convnets.data_pipelines.shards.format import load_sample_index
    from convnets.data_pipelines.shards.reader import ShardFiles

    k = (rows.shape[1] - 2) // 2
    files = ShardFiles(load_sample_index(split_dir), open_path=open_path)
    n = len(rows)
    grid_rows = math.ceil(n / columns)
    fig, axes = plt.subplots(
        grid_rows * 2,
        columns,
        figsize=(columns * 2.6, grid_rows * 3.6),
        gridspec_kw={"height_ratios": [3, 1.6] * grid_rows},
        squeeze=False,
    )
    try:
        for j, row in enumerate(rows):
            r, c = divmod(j, columns)
            img_ax, bar_ax = axes[2 * r, c], axes[2 * r + 1, c]
            index, label = int(row[0]), int(row[1])
            top, probs = row[2 : 2 + k].astype(int), row[2 + k : 2 + 2 * k]
            img_ax.imshow(_thumbnail(files.image(index)))
            img_ax.set_title(classes[label][:22], fontsize=8)
            colors = ["C3" if t == label else "C0" for t in top]
            bar_ax.barh(range(k), probs, color=colors)
            bar_ax.set_yticks(range(k), [classes[t][:18] for t in top], fontsize=6)
            bar_ax.invert_yaxis()
            bar_ax.set_xlim(0, 1)
            bar_ax.tick_params(axis="x", labelsize=6)
    finally:
        files.close()
    for r in range(grid_rows):
        for c in range(columns):
            axes[2 * r, c].axis("off")
            if r * columns + c >= n:
                axes[2 * r + 1, c].axis("off")
    fig.subplots_adjust(hspace=0.45, wspace=0.75)  # room for the class-name ticks and the titles
    fig.suptitle("top-5 predictions (true class in red)", fontsize=10, y=0.92)
    return save_figure(fig, path)


def curves(x: np.ndarray, series: dict[str, np.ndarray], *, xlabel: str, ylabel: str, title: str, ax) -> None:
    for name, y in series.items():
        ax.plot(x, y, marker="o", ms=3, label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)

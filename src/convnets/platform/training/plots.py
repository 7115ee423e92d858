"""PNG figures of a run: learning curves, confusion matrix, first-layer filters, input samples."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from convnets.utils.figures import plt, save_figure


def learning_curves(history: list[dict], path: Path) -> Path:
    """Loss and top-1 per epoch, train and validation."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, ax in (("train_loss", ax_loss), ("val_loss", ax_loss), ("train_top1", ax_acc), ("val_top1", ax_acc)):
        points = [(h["epoch"], h[key]) for h in history if key in h]
        if points:
            ax.plot(*zip(*points), marker="o", ms=3, label=key)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


def time_to_accuracy(
    curve: list[tuple[float, float]], final: tuple[float, float], target: float, budget_s: float, path: Path, title: str
) -> Path:
    """Validation top-1 against wall-clock minutes, with the target and the time budget marked."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    if curve:
        ax.plot([t / 60 for t, _ in curve], [a for _, a in curve], marker="o", ms=3, label="val top-1 (centre crop)")
    ax.plot([final[0] / 60], [final[1]], marker="*", ms=12, ls="", color="C3", label="test top-1, 10 crops (end)")
    ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target:.0%}")
    ax.axvline(budget_s / 60, color="grey", ls=":", lw=1, label=f"budget {budget_s / 60:.0f} min")
    ax.set(xlabel="wall time, minutes (shard writing included)", ylabel="top-1 accuracy", title=title, ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


MAX_CONFUSION_CLASSES = 20  # beyond this a full matrix is unreadable (and 1,000 classes would be ~50k px square)


def most_confused(matrix: np.ndarray, k: int = MAX_CONFUSION_CLASSES) -> np.ndarray:
    """Indices (sorted) of the k classes with the most errors, made or received."""
    errors = matrix.sum(0) + matrix.sum(1) - 2 * np.diag(matrix)
    return np.sort(np.argsort(-errors, kind="stable")[:k])


def confusion_matrix(matrix: np.ndarray, classes: list[str], path: Path) -> Path:
    """Rows: true class, columns: predicted class; counts in the cells.

    Above MAX_CONFUSION_CLASSES classes only the most confused ones are drawn, so the figure stays
    small and readable at ImageNet's 1,000 classes.
    """
    total, n_all = int(matrix.sum()), len(classes)
    keep = np.arange(n_all) if n_all <= MAX_CONFUSION_CLASSES else most_confused(matrix)
    matrix, classes = matrix[np.ix_(keep, keep)], [classes[i] for i in keep]
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * n + 2), max(4, 0.45 * n + 1.5)))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(n)
    ax.set_xticks(ticks, [c[:24] for c in classes], rotation=90)
    ax.set_yticks(ticks, [c[:24] for c in classes])
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, int(v), ha="center", va="center", fontsize=7, color="white" if v > matrix.max() / 2 else "black")
    shown = "" if n == n_all else f", the {n} most confused of {n_all} classes"
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion matrix ({total} test images{shown})")
    return save_figure(fig, path)


def _grid(tiles: np.ndarray, columns: int) -> np.ndarray:
    """(N, H, W, C) tiles in [0, 1] -> one image with 1-px gaps."""
    n, h, w, c = tiles.shape
    rows = math.ceil(n / columns)
    out = np.ones((rows * (h + 1) + 1, columns * (w + 1) + 1, c))
    for k in range(n):
        r, col = divmod(k, columns)
        out[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w] = tiles[k]
    return out


def conv_filters(weight: torch.Tensor, path: Path, title: str = "conv1 filters") -> Path:
    """First-layer filters as one grid (Krizhevsky et al. 2012, Figure 3): each scaled to [0, 1]."""
    w = weight.detach().float().cpu()
    lo = w.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = w.flatten(1).max(1).values.view(-1, 1, 1, 1)
    tiles = ((w - lo) / (hi - lo).clamp(min=1e-8)).permute(0, 2, 3, 1).numpy()
    if tiles.shape[-1] not in (1, 3):  # grouped/odd inputs: show the first input channel
        tiles = tiles[..., :1]
    grid = _grid(tiles, columns=min(16, len(tiles)))
    fig, ax = plt.subplots(figsize=(min(16, len(tiles)) * 0.6 + 1, math.ceil(len(tiles) / 16) * 0.6 + 1))
    ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", interpolation="nearest")
    ax.set(title=f"{title} ({w.shape[0]} x {w.shape[1]}x{w.shape[2]}x{w.shape[3]})")
    ax.axis("off")
    return save_figure(fig, path)


def input_samples(images: torch.Tensor, labels: torch.Tensor, classes: list[str], mean, std, path: Path) -> Path:
    """Training images as the pipeline delivered them (augmented), un-normalized for display."""
    x = images[:32].detach().float().cpu()
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    tiles = (x * s + m).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    columns = 8
    fig, axes = plt.subplots(
        math.ceil(len(tiles) / columns), columns, figsize=(columns * 1.3, math.ceil(len(tiles) / columns) * 1.45)
    )
    for ax, tile, label in zip(np.atleast_1d(axes).flat, tiles, labels[: len(tiles)].tolist()):
        ax.imshow(tile.squeeze(-1) if tile.shape[-1] == 1 else tile, cmap="gray")
        ax.set_title(classes[label][:14], fontsize=7)
    for ax in np.atleast_1d(axes).flat:
        ax.axis("off")
    return save_figure(fig, path)

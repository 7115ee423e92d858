"""Matplotlib for files only, and the one way the project saves a figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402

DPI = 110


def save_figure(fig, path: Path) -> Path:
    """Write `fig` as a PNG (parent folders created) and free it: figures are not reused."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


__all__ = ["plt", "save_figure"]

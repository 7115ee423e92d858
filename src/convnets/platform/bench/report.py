"""The benchmarks' results side: timings, intervals and their tables.

Light to import (numpy only): the command line and `scripts/gpu_check.sh`'s summary use it without
loading torch and Lightning.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from convnets.utils.tables import markdown_table, yes_no


@dataclass(frozen=True)
class Timing:
    """One arm's timed steps: host time stamps at each step's start, and the end (device synchronized)."""

    marks: list[float]
    batch: int

    @property
    def window_rate(self) -> float:
        return self.batch * (len(self.marks) - 1) / (self.marks[-1] - self.marks[0])

    @property
    def step_rate(self) -> float:
        """Images/s from the median step: robust to the bursts a shared machine adds to a few steps."""
        return self.batch / statistics.median(b - a for a, b in zip(self.marks, self.marks[1:]))


def median_ci95(values: list[float], resamples: int = 10_000) -> list[float] | None:
    """95% bootstrap interval (percentile, seeded) of the median of per-round values; None under 3 rounds.

    On a shared 2-core VM single rounds of the LeNet-5 ratio range 0.8-1.3: the interval says whether
    a median is evidence for or against a target (e.g. 0.955 [0.915, 1.005] cannot tell 0.97 apart).
    """
    if len(values) < 3:
        return None
    rng = np.random.default_rng(0)
    medians = np.median(rng.choice(np.asarray(values), size=(resamples, len(values))), axis=1)
    return [float(np.quantile(medians, 0.025)), float(np.quantile(medians, 0.975))]


def format_eval_table(results: list[dict]) -> str:
    return markdown_table(
        [
            "arch",
            "batch",
            "crops",
            "precision",
            "NHWC",
            "images/s",
            "crops/s",
            "1-crop images/s",
            "cost ratio",
            "target",
        ],
        [
            [
                r["arch"],
                str(r["batch"]),
                str(r["crops"]),
                r["precision"],
                yes_no(r["channels_last"]),
                f"{r['images_per_s']:.1f}",
                f"{r['crops_per_s']:.1f}",
                f"{r['single_images_per_s']:.1f}",
                f"{r['cost_ratio']:.2f}x",
                f"<= {r['target_cost_ratio']:.2f}x",
            ]
            for r in results
        ],
    )


def format_e2e_table(results: list[dict]) -> str:
    return markdown_table(
        ["arch", "batch", "decode", "data img/s", "model img/s", "both img/s", "bottleneck"],
        [
            [
                r["arch"],
                str(r["batch"]),
                r["decode"],
                f"{r['data_images_per_s']:.1f}",
                f"{r['model_images_per_s']:.1f}",
                f"{r['both_images_per_s']:.1f}",
                r["bottleneck"],
            ]
            for r in results
        ],
    )


def _ratio_cell(r: dict) -> str:
    ci = r.get("ratio_ci95")
    return f"{r['ratio']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def format_table(results: list[dict]) -> str:
    return markdown_table(
        [
            "arch",
            "batch",
            "precision",
            "NHWC",
            "compile",
            "s2d stem",
            "Lightning img/s",
            "bare img/s",
            "ratio [95% CI]",
            "MFU",
        ],
        [
            [
                r["arch"],
                str(r["batch"]),
                r["precision"],
                yes_no(r["channels_last"]),
                yes_no(r["compile"]),
                yes_no(r.get("space_to_depth", False)),
                f"{r['images_per_s']:.1f}",
                f"{r['bare_images_per_s']:.1f}",
                _ratio_cell(r),
                f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "n/a",
            ]
            for r in results
        ],
    )

"""The benchmarks' results side: timings, intervals, versions and hardware, markdown tables.

Light to import (numpy only; torch inside the two functions that read it): the command line, the
evaluation tables and `scripts/gpu_check.sh`'s summary use it without loading torch and Lightning.
"""
from __future__ import annotations

import platform
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


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
        ["arch", "batch", "crops", "precision", "NHWC", "images/s", "crops/s", "1-crop images/s", "cost ratio", "target"],
        [[r["arch"], str(r["batch"]), str(r["crops"]), r["precision"], yes_no(r["channels_last"]),
          f"{r['images_per_s']:.1f}", f"{r['crops_per_s']:.1f}", f"{r['single_images_per_s']:.1f}",
          f"{r['cost_ratio']:.2f}x", f"<= {r['target_cost_ratio']:.2f}x"] for r in results])


def format_e2e_table(results: list[dict]) -> str:
    return markdown_table(
        ["arch", "batch", "decode", "data img/s", "model img/s", "both img/s", "bottleneck"],
        [[r["arch"], str(r["batch"]), r["decode"], f"{r['data_images_per_s']:.1f}", f"{r['model_images_per_s']:.1f}",
          f"{r['both_images_per_s']:.1f}", r["bottleneck"]] for r in results])


def hardware(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {torch.get_num_threads()} CPU threads"
    return f"{_cpu_name()}, {torch.get_num_threads()} threads"


def _cpu_name() -> str:
    try:  # Linux names the model; platform.processor() is often empty there
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "pytorch_lightning": _installed("pytorch-lightning")}
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        out["cudnn"] = str(torch.backends.cudnn.version())
    return out


def _installed(distribution: str) -> str | None:
    """A distribution's version from its metadata, without importing it (Lightning takes seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A markdown table, every column padded to its widest cell (first column left, others right)."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _ratio_cell(r: dict) -> str:
    ci = r.get("ratio_ci95")
    return f"{r['ratio']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def format_table(results: list[dict]) -> str:
    return markdown_table(
        ["arch", "batch", "precision", "NHWC", "compile", "s2d stem", "Lightning img/s", "bare img/s", "ratio [95% CI]", "MFU"],
        [[r["arch"], str(r["batch"]), r["precision"], yes_no(r["channels_last"]), yes_no(r["compile"]),
          yes_no(r.get("space_to_depth", False)),
          f"{r['images_per_s']:.1f}", f"{r['bare_images_per_s']:.1f}", _ratio_cell(r),
          f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "n/a"] for r in results])

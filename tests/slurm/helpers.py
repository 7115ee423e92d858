"""Shared by the slurm tests: `convnets` with the test cluster's environment, and the tiny recipe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.integration.cli_helpers import REPO

CONFIG = REPO / "configs" / "lenet5_digits.yaml"


def convnets_env(cluster: dict, **extra: str) -> dict:
    env = {**cluster["env"], "WANDB_MODE": "offline", "WANDB_SILENT": "true", **extra}
    env.pop("CONVNETS_RUN_NAME", None)
    return env


def run_convnets(
    cluster: dict, *args: object, timeout: int = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "convnets.cli", *map(str, args)],
        env=convnets_env(cluster),
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def fit_flags(data: Path, runs: Path, name: str, *, epochs: int = 2) -> list[str]:
    """LeNet-5 on the real digits: ~45 steps an epoch at 2 ranks x 16 (seconds on 2 CPU cores)."""
    return [
        "--config",
        str(CONFIG),
        "--data.data_dir",
        str(data),
        "--runs_dir",
        str(runs),
        "--run_name",
        name,
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.enable_progress_bar",
        "false",
    ]


def train_count(data: Path) -> int:
    return int(json.loads((data / "train" / "manifest.json").read_text())["num_samples"])


def wandb_run_ids(run_dir: Path) -> set[str]:
    """The run ids W&B wrote: each process's offline folder holds run-<id>.wandb (its transaction log)."""
    return {p.stem.removeprefix("run-") for p in (run_dir / "wandb").glob("offline-run-*/run-*.wandb")}


def squeue_empty(cluster: dict) -> bool:
    out = subprocess.run(["squeue", "--noheader"], env=cluster["env"], capture_output=True, text=True, timeout=30)
    return out.returncode == 0 and not out.stdout.strip()

"""`convnets sweep ablation` stopped mid-way: SIGTERM reaches every DDP rank, no orphan survives, and a
rerun resumes the interrupted variant from its last.ckpt instead of starting it over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.integration.cli_helpers import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.dali]


def _descendants(pid: int) -> set[int]:
    """Every live process below pid (from /proc's parent links)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _sweep_cmd(data: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "convnets.cli",
        "sweep",
        "ablation",
        "--config",
        str(REPO / "configs" / "lenet5_digits.yaml"),
        "--variants",
        "full",
        "--epochs",
        "3",
        "--devices",
        "2",
        "--accelerator",
        "cpu",
        "--out",
        str(out),
        "--",
        "--data.data_dir",
        str(data),
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
    ]


def test_sigterm_reaches_every_rank_and_a_rerun_resumes(digits_shards, tmp_path):
    out = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("CONVNETS_RUN_NAME", None)
    parent = subprocess.Popen(
        _sweep_cmd(digits_shards, out), env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    last = out / "full" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists():  # epoch 0 done: the fit is under way with both ranks
        assert parent.poll() is None, parent.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the first epoch did not finish in time"
        time.sleep(0.2)
    children = _descendants(parent.pid)
    assert len(children) >= 2, "expected the fit child and its second DDP rank"
    parent.send_signal(signal.SIGTERM)
    _, stderr = parent.communicate(timeout=120)
    assert parent.returncode != 0
    survivors = {pid for pid in children if _alive(pid)}
    assert not survivors, f"processes outlived the sweep: {survivors}"

    # Rerun: the interrupted variant resumes from last.ckpt (not deleted), and ends at 3 epochs' steps.
    interrupted = torch.load(last, map_location="cpu", weights_only=False)
    steps_per_epoch = interrupted["global_step"] // (interrupted["epoch"] + 1)  # saved at the end of an epoch
    rerun = subprocess.run(
        _sweep_cmd(digits_shards, out), env=env, cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming the interrupted fit" in rerun.stderr
    final = torch.load(last, map_location="cpu", weights_only=False)
    assert final["global_step"] == 3 * steps_per_epoch  # the rest of the run, not 3 more epochs
    history = json.loads((out / "full" / "metrics.json").read_text())["history"]
    # One history across the stop: each epoch once (epoch 0's row comes from the checkpoint, not a retraining:
    # the step count above says no epoch ran twice).
    assert [h["epoch"] for h in history] == [0, 1, 2]

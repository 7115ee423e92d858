"""A DDP rank killed mid-training: the other exits within seconds naming it, and the run resumes its step count."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.integration.cli_helpers import REPO, last_line

pytestmark = [pytest.mark.integration, pytest.mark.dali, pytest.mark.slow]
BATCH, RANKS = 16, 2
# Generous for a loaded 2-core machine: the watchdog itself exits 5 s after the death (GRACE_S).
EXIT_BOUND_S = 60
# Epochs of 2 training batches and 1 validation batch: last.ckpt (written after each validation) within seconds.
TRAIN_BATCHES = 2
SHORT = ("--trainer.limit_train_batches", str(TRAIN_BATCHES), "--trainer.limit_val_batches", "1")


def fit_cmd(data, runs, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "convnets.cli",
        "fit",
        "--config",
        "lenet5_digits",
        "--data.data_dir",
        str(data),
        "--data.batch_size",
        str(BATCH),
        "--runs_dir",
        str(runs),
        "--run_name",
        "r",
        "--trainer.devices",
        str(RANKS),
        "--trainer.strategy",
        "ddp",
        "--trainer.accelerator",
        "cpu",
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--ddp_timeout_s",
        "30",
        *extra,
    ]


def env() -> dict:
    out = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    out.pop("CONVNETS_RUN_NAME", None)
    return out


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_killed_rank_stops_the_run_with_its_name_and_resume_continues(digits_shards, tmp_path):
    runs = tmp_path / "runs"
    last = runs / "r" / "checkpoints" / "last.ckpt"
    main = subprocess.Popen(
        fit_cmd(digits_shards, runs, "--trainer.max_epochs", "200", *SHORT),
        cwd=REPO,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not last.exists() and main.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        ranks = children(main.pid)
        assert last.exists() and len(ranks) == 1, "no checkpoint, or not exactly one child rank"
        os.kill(ranks[0], signal.SIGKILL)
        killed_at = time.monotonic()
        _, err = main.communicate(timeout=EXIT_BOUND_S + 60)
        took = time.monotonic() - killed_at
    finally:
        if main.poll() is None:
            main.kill()
    assert took < EXIT_BOUND_S, f"rank 0 took {took:.0f} s to stop"
    assert main.returncode == 1, err[-3000:]
    line = last_line(err)  # the watchdog's own line, or the gloo error's summary naming the rank
    assert line.startswith(f"convnets: failed: DDP rank 1 (pid {ranks[0]}) killed by SIGKILL"), err[-3000:]
    assert "--ckpt_path last" in line

    saved = torch.load(last, weights_only=True, map_location="cpu")
    steps_per_epoch = TRAIN_BATCHES
    assert saved["global_step"] == (saved["epoch"] + 1) * steps_per_epoch  # last.ckpt: a whole epoch
    target = saved["epoch"] + 2  # one more epoch
    result = subprocess.run(
        fit_cmd(digits_shards, runs, "--trainer.max_epochs", str(target), "--ckpt_path", "last", *SHORT),
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr + result.stdout
    resumed = torch.load(last, weights_only=True, map_location="cpu")
    assert resumed["global_step"] == saved["global_step"] + steps_per_epoch  # continued, not restarted

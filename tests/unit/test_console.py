"""Quiet by default, everything with --verbose / CONVNETS_DEBUG=1: a real Lightning Trainer in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = """
import logging, warnings
from convnets.utils.console import quiet_console
logging.basicConfig(level=logging.INFO, format="%(message)s")
quiet_console()
import pytorch_lightning as pl
pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
warnings.warn("The number of training batches (3) is smaller than the logging interval Trainer(log_every_n_steps=50)")
warnings.warn("a warning the platform does not know")
"""


def _run(**env) -> str:
    full = {k: v for k, v in os.environ.items() if k != "CONVNETS_DEBUG"} | env
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=full, timeout=120, check=True
    )
    return out.stdout + out.stderr


def test_lightning_banners_and_known_warnings_are_quiet_unknown_warnings_are_not():
    quiet = _run()
    assert "GPU available" not in quiet and "smaller than the logging interval" not in quiet
    assert "a warning the platform does not know" in quiet


def test_debug_brings_everything_back():
    loud = _run(CONVNETS_DEBUG="1")
    assert "GPU available" in loud and "smaller than the logging interval" in loud

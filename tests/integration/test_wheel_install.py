"""The built wheel, installed outside the source tree, runs `convnets models` and `convnets demo`.

The wheel goes into a fresh target folder (pip install --no-deps --target), and the commands run
from a folder outside the checkout with PYTHONPATH naming only that target: the dependencies come
from this interpreter's environment (no second 2 GB torch install), the code only from the wheel,
which the test checks (a missing module or package-data file in the wheel fails here).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.dali]


def pip(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_wheel_installs_and_runs_outside_the_tree(tmp_path):
    wheels, target, away = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    away.mkdir()
    source = tmp_path / "source"  # setuptools builds in place (build/, *.egg-info): not in the checkout
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels), str(source))
    wheel = next(wheels.glob("convnets-*.whl"))
    pip("install", "--no-deps", "--target", str(target), str(wheel))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CONVNETS_RUN_NAME")}
    env.update(PYTHONPATH=str(target), WANDB_MODE="offline", WANDB_SILENT="true")

    def run(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=away, env=env, capture_output=True, text=True, timeout=timeout)

    where = run(sys.executable, "-c", "import convnets; print(convnets.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(target), where.stdout + where.stderr
    models = run(str(target / "bin" / "convnets"), "models")
    assert models.returncode == 0 and "alexnet" in models.stdout, models.stderr[-2000:]
    demo = run(
        str(target / "bin" / "convnets"),
        "demo",
        "--epochs",
        "1",
        "--devices",
        "1",
        "--out",
        str(away / "demo"),
        timeout=900,
    )
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-3000:]
    assert "test top-1, multi-crop" in demo.stdout
    assert (away / "demo" / "checkpoints" / "last.ckpt").is_file()

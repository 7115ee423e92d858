"""scripts/gpu_check.sh on a machine without a GPU: it says so, runs the CPU parts, writes JSON + a table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="with a GPU the script runs the GPU parts (pytest -m gpu covers them)"
)
def test_gpu_check_runs_its_cpu_parts_and_reports_no_gpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "WANDB_MODE": "offline"}
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "no GPU" in result.stdout and "all steps passed" in result.stdout
    env_info = json.loads((tmp_path / "env.json").read_text())
    assert env_info["cuda_available"] is False and env_info["torch"] == torch.__version__
    model = json.loads((tmp_path / "bench_model_cpu.json").read_text())
    assert {"images_per_s", "bare_images_per_s", "ratio"} <= set(model) and model["images_per_s"] > 0
    assert model["ratio"] == pytest.approx(
        model["per_round"][0]["images_per_s"] / model["per_round"][0]["bare_images_per_s"]
    )
    evaluation = json.loads((tmp_path / "bench_eval_cpu.json").read_text())
    assert evaluation["crops"] == 5 and evaluation["crops_per_s"] == pytest.approx(5 * evaluation["images_per_s"])
    assert "| lenet5" in (tmp_path / "summary.md").read_text()

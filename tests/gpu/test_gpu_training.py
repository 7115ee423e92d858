"""The GPU path of training, without DALI: NCCL DDP (world size 1), bf16, channels_last, no syncs.

Each fit runs in a child process (a process group cannot be torn down cleanly inside pytest).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.gpu


def _probe(tmp_path, *args: str) -> dict:
    out = tmp_path / "report.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-m", "tests.sync_probe", "--run-dir", str(tmp_path / "run"), "--out", str(out), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text())


def test_nccl_ddp_world_size_one_bf16_channels_last_batchnorm(tmp_path):
    """The epoch-end all-reduce of the throughput counters runs under NCCL (a CPU tensor would fail)."""
    report = _probe(tmp_path, "--device", "cuda", "--strategy", "ddp", "--precision", "bf16-mixed", "--channels-last")
    assert report["backend"] == "nccl" and report["device"].startswith("cuda")
    assert report["global_step"] == 12
    assert report["throughput"]["images_per_s"] > 0
    assert report["throughput"].get("mfu", 0) > 0 or "H100" not in torch.cuda.get_device_name()


def test_training_step_issues_no_cuda_sync(tmp_path):
    """torch's sync debug mode sees no synchronizing CUDA call between a step's start and end."""
    report = _probe(tmp_path, "--device", "cuda", "--strategy", "auto", "--precision", "bf16-mixed", "--channels-last")
    assert report["syncs"] == [], "\n".join(report["syncs"][:20])


def test_channels_last_bf16_matches_fp32_forward():
    """Same weights, same images: NHWC + bf16 autocast gives fp32's predictions (up to bf16 rounding)."""
    from convnets.platform.training.module import ClassifierModule, PerfConfig

    torch.manual_seed(0)
    plain = ClassifierModule(arch="alexnet_small", num_classes=10).cuda().eval()
    nhwc = ClassifierModule(arch="alexnet_small", num_classes=10, perf=PerfConfig(channels_last=True)).cuda().eval()
    nhwc.load_state_dict(plain.state_dict())
    images = torch.randn(16, 3, 64, 64, device="cuda")
    with torch.no_grad():
        ref = plain(images).float()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fast = nhwc(images).float()
    assert (ref.argmax(-1) == fast.argmax(-1)).float().mean() >= 0.9
    assert torch.allclose(ref, fast, atol=0.05 * ref.abs().max().item())

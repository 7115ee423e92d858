"""Multi-node without Slurm: two torchrun "nodes" on localhost, one process each, gloo (the README's commands)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

from tests.integration.cli_helpers import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.dali]
BATCH = 16  # lenet5_digits.yaml's per-rank batch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_nodes_train_one_run_with_world_size_two(digits_shards, tmp_path):
    port = _free_port()
    # CONVNETS_DEBUG: the ranks' global numbers are read from Lightning's own "Initializing distributed" line,
    # which the platform's quiet console leaves out otherwise.
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "CONVNETS_DEBUG": "1"}
    env.pop("CONVNETS_RUN_NAME", None)
    fit = [
        "-m",
        "convnets.cli",
        "fit",
        "--config",
        str(REPO / "configs" / "lenet5_digits.yaml"),
        "--data.data_dir",
        str(digits_shards),
        "--runs_dir",
        str(tmp_path),
        "--run_name",
        "two-nodes",
        "--trainer.max_epochs",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        "false",
        "--trainer.num_nodes",
        "2",
        "--trainer.devices",
        "1",
        "--trainer.accelerator",
        "cpu",
        "--trainer.strategy",
        "ddp",
    ]
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(rank),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(port),
                *fit,
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=400) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    assert "MEMBER: 1/2" in outputs[0][1] and "MEMBER: 2/2" in outputs[1][1]  # global ranks 0 and 1 of 2
    ckpt = torch.load(tmp_path / "two-nodes" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    import json

    n = json.loads((digits_shards / "train" / "manifest.json").read_text())["num_samples"]
    assert n // (2 * BATCH) <= ckpt["global_step"] <= -(-n // (2 * BATCH))  # the epoch split across 2 ranks

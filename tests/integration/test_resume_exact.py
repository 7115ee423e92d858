"""A plain `convnets fit` killed mid-epoch and resumed with --ckpt_path ends bit-equal to an
uninterrupted run: continuous global step, every step trained on the same samples (so none twice
after the checkpoint, none skipped), the same random crops (DALI: its RNG state restored; torch:
a batch's draws are a function of its position), same weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from convnets.data_pipelines.shards.format import load_sample_index
from tests.integration.cli_helpers import REPO, convnets, last_line

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROBE = "tests.integration.resume_probe"


def _fit(tmp_path, data, name: str, *extra: str, devices: int = 1, backend: str = "dali"):
    ckpts = tmp_path / name / "mid"
    args = [
        "fit",
        "--config",
        REPO / "configs" / "lenet5_digits.yaml",
        "--data.data_dir",
        data,
        "--data.batch_size",
        str(128 // devices),
        "--runs_dir",
        tmp_path,
        "--run_name",
        name,
        "--trainer.logger",
        "false",
        "--trainer.max_epochs",
        "2",
        "--trainer.deterministic",
        "true",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.limit_val_batches",
        "1",
        "--data.backend",
        backend,
        "--trainer.devices",
        str(devices),
        *(["--trainer.strategy", "ddp"] if devices > 1 else []),
        # A checkpoint every 4 steps (12 steps per epoch), all kept: step=24.ckpt is the final state
        # (Lightning 2.6 writes the platform's last.ckpt only when val_top1 improves).
        "--trainer.callbacks+=ModelCheckpoint",
        f"--trainer.callbacks.dirpath={ckpts}",
        "--trainer.callbacks.filename={step}",
        "--trainer.callbacks.every_n_train_steps=4",
        "--trainer.callbacks.save_top_k=-1",
        f"--trainer.callbacks+={PROBE}.IndexRecorder",
        f"--trainer.callbacks.path={tmp_path / name}.jsonl",
        *extra,
    ]
    return convnets(*args, timeout=900), ckpts


def _steps(path) -> dict[int, list[int]]:
    """Step -> sample indices; a step trained again after the resume overwrites the killed run's."""
    out = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        out[record["step"]] = record["index"]
    return out


# The block shuffle: 5 digits shards (4 x 300 + 238) read 2 at a time.
BLOCK = ("--data.shuffle", "block", "--data.shuffle_window", "2")


# DALI: DDP only (one process takes the same save/restore path minus the cross-rank gather; suite
# time). Torch: its state is the position alone, on 1 process (in the block order, which the position
# counts the same way) and on 2 (the global order).
@pytest.mark.parametrize(
    "backend,devices,order",
    [pytest.param("dali", 2, (), marks=pytest.mark.dali), ("torch", 1, BLOCK), ("torch", 2, ())],
    ids=["dali_ddp_2_processes", "torch_1_process_block_shuffle", "torch_ddp_2_processes"],
)
def test_fit_killed_mid_epoch_and_resumed_equals_an_uninterrupted_run(digits_shards, tmp_path, backend, devices, order):
    whole, _ = _fit(tmp_path, digits_shards, "whole", *order, devices=devices, backend=backend)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed, ckpts = _fit(
        tmp_path,
        digits_shards,
        "cut",
        *order,
        f"--trainer.callbacks+={PROBE}.KillAtStep",
        "--trainer.callbacks.step=6",
        f"--trainer.callbacks.after={tmp_path / 'cut' / 'mid' / 'step=4.ckpt'}",
        devices=devices,
        backend=backend,
    )
    assert killed.returncode != 0 and (ckpts / "step=4.ckpt").exists()
    assert not (ckpts / "step=8.ckpt").exists()  # it really died in epoch 0
    if order:  # the position counts samples of the block order: another order cannot continue it
        other, _ = _fit(tmp_path, digits_shards, "other", "--ckpt_path", ckpts / "step=4.ckpt", backend=backend)
        assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr[-3000:]
        assert "mid-epoch 0 in the block of 2 shards shuffle order, this run reads the global order" in last_line(
            other.stderr
        )
    resumed, _ = _fit(
        tmp_path,
        digits_shards,
        "cut",
        *order,
        "--ckpt_path",
        ckpts / "step=4.ckpt",
        devices=devices,
        backend=backend,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a = torch.load(tmp_path / "whole" / "mid" / "step=24.ckpt", weights_only=False)
    b = torch.load(ckpts / "step=24.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 24
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    # Rank 0's record: the resumed run began at step 4 and trained each later step on the samples
    # the uninterrupted run used there; together, each epoch's samples exactly once.
    cut_log = [json.loads(line)["step"] for line in (tmp_path / "cut.jsonl").read_text().splitlines()]
    assert cut_log == list(range(7)) + list(range(4, 24))
    per_rank = []
    for rank in range(devices):
        suffix = ".jsonl" if rank == 0 else f".rank{rank}.jsonl"
        whole_steps, cut_steps = _steps(tmp_path / f"whole{suffix}"), _steps(tmp_path / f"cut{suffix}")
        assert whole_steps == cut_steps, f"rank {rank}"
        per_rank.append(cut_steps)
    for epoch in range(2):  # every training sample exactly once per epoch, across the ranks
        seen = [i for steps in per_rank for s in range(12 * epoch, 12 * epoch + 12) for i in steps[s]]
        assert sorted(seen) == list(range(len(seen))) and len(seen) > 1400
    if order:  # and read 2 shards at a time: the first 4 steps (512 of 600 samples) from the first window's 2
        shard_id = load_sample_index(digits_shards / "train").shard_id
        first = [i for s in range(4) for i in per_rank[0][s]]
        assert len(np.unique(shard_id[first])) == 2

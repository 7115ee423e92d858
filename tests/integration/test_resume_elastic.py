"""A run resumed on another number of processes: `convnets fit` on 2 ranks killed mid-epoch 0,
resumed on 3 ranks and killed mid-epoch 1, resumed on 1 rank to the end. Each epoch's samples are
trained exactly once, the global batch (96) is kept, and the steps and the cosine learning rate
run on as if nothing had happened. Real DDP processes (gloo, CPU) over real digits shards."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from convnets.data_pipelines.shards.format import load_sample_index
from tests.integration.cli_helpers import REPO, convnets

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROBE = "tests.integration.resume_probe"
GLOBAL_BATCH, STEPS_PER_EPOCH, EPOCHS, LR = 96, 15, 2, 0.02  # 1,438 training digits: ceil(1438 / 96) = 15


def _fit(tmp_path, data, backend: str, piece: str, devices: int, *extra):
    if backend == "torch":  # the block order (5 digits shards read 2 at a time); DALI reads the global one
        extra = (*extra, "--data.shuffle", "block", "--data.shuffle_window", "2")
    args = [
        "fit",
        "--config",
        REPO / "configs" / "lenet5_digits.yaml",
        "--data.data_dir",
        data,
        "--data.backend",
        backend,
        "--data.batch_size",
        str(GLOBAL_BATCH // 2),
        "--runs_dir",
        tmp_path,
        "--run_name",
        "run",
        "--trainer.logger",
        "false",
        "--trainer.max_epochs",
        str(EPOCHS),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.num_sanity_val_steps",
        "0",
        "--model.optim.lr",
        str(LR),
        "--trainer.devices",
        str(devices),
        *(["--trainer.strategy", "ddp"] if devices > 1 else []),
        "--trainer.callbacks+=ModelCheckpoint",
        f"--trainer.callbacks.dirpath={tmp_path / 'mid'}",
        "--trainer.callbacks.filename={step}",
        "--trainer.callbacks.every_n_train_steps=4",
        "--trainer.callbacks.save_top_k=-1",
        f"--trainer.callbacks+={PROBE}.IndexRecorder",
        f"--trainer.callbacks.path={tmp_path / piece}.jsonl",
        *map(str, extra),
    ]
    return convnets(*args, timeout=900)


def _kill(step: int, after):
    return (
        f"--trainer.callbacks+={PROBE}.KillAtStep",
        f"--trainer.callbacks.step={step}",
        f"--trainer.callbacks.after={after}",
    )


def _records(tmp_path, piece: str, ranks: int) -> dict[int, list[dict]]:
    """Step -> one record per rank of that run."""
    out: dict[int, list[dict]] = {}
    for rank in range(ranks):
        path = tmp_path / (f"{piece}.jsonl" if rank == 0 else f"{piece}.rank{rank}.jsonl")
        for line in path.read_text().splitlines():
            record = json.loads(line)
            out.setdefault(record["step"], []).append(record)
    return out


# Each engine in one shuffle order (the resume does not depend on the pair; suite time): DALI in
# the global one, torch in the block one.
@pytest.mark.parametrize("backend", [pytest.param("dali", marks=pytest.mark.dali), "torch"])
def test_resumed_on_3_ranks_then_1_each_sample_once_with_the_same_steps_and_schedule(digits_shards, tmp_path, backend):
    mid = tmp_path / "mid"
    a = _fit(tmp_path, digits_shards, backend, "a", 2, *_kill(6, mid / "step=4.ckpt"))
    assert a.returncode != 0 and (mid / "step=4.ckpt").exists() and not (mid / "step=8.ckpt").exists(), a.stderr[-3000:]
    b = _fit(
        tmp_path, digits_shards, backend, "b", 3, "--ckpt_path", mid / "step=4.ckpt", *_kill(22, mid / "step=20.ckpt")
    )
    assert b.returncode != 0 and (mid / "step=20.ckpt").exists() and not (mid / "step=24.ckpt").exists(), b.stderr[
        -3000:
    ]
    assert "global batch 96: 32 per rank on 3 processes" in b.stderr
    c = _fit(tmp_path, digits_shards, backend, "c", 1, "--ckpt_path", mid / "step=20.ckpt")
    assert c.returncode == 0, c.stderr[-3000:]

    pieces = {
        "a": (_records(tmp_path, "a", 2), 2),
        "b": (_records(tmp_path, "b", 3), 3),
        "c": (_records(tmp_path, "c", 1), 1),
    }
    assert sorted(pieces["a"][0]) == list(range(7))  # killed as step 6 began
    assert sorted(pieces["b"][0]) == list(range(4, 23))  # resumed at step 4, killed as step 22 began
    assert sorted(pieces["c"][0]) == list(range(20, 30))  # resumed at step 20, ran to the end
    # What counts is what the run that was resumed from trained: a piece's steps after the
    # checkpoint the next piece resumed from are trained again by that next piece.
    owner = {s: "a" if s < 4 else "b" if s < 20 else "c" for s in range(EPOCHS * STEPS_PER_EPOCH)}
    for epoch in range(EPOCHS):
        seen = []
        for s in range(epoch * STEPS_PER_EPOCH, (epoch + 1) * STEPS_PER_EPOCH):
            records, ranks = pieces[owner[s]]
            assert len(records[s]) == ranks and {r["epoch"] for r in records[s]} == {epoch}, s
            if s % STEPS_PER_EPOCH < STEPS_PER_EPOCH - 1:  # the epoch's last batch is short (1438 = 14 x 96 + 94)
                assert {r["batch"] for r in records[s]} == {GLOBAL_BATCH // ranks}, s  # the global batch kept
            seen += [i for r in records[s] for i in r["index"]]
        assert sorted(seen) == list(range(1438)), f"epoch {epoch}: not every sample exactly once"
        if backend == "torch":  # read a window of 2 shards at a time: the epoch's first 5 steps (480 samples) from 2
            shard_id = load_sample_index(digits_shards / "train").shard_id
            assert len(np.unique(shard_id[seen[: 5 * GLOBAL_BATCH]])) == 2, epoch
    total = EPOCHS * STEPS_PER_EPOCH
    for s in range(total):  # the cosine schedule over 30 steps, stepped per batch, unbroken
        (lr,) = {r["lr"] for r in pieces[owner[s]][0][s]}
        assert lr == pytest.approx(LR * 0.5 * (1 + math.cos(math.pi * s / total)), rel=1e-9, abs=1e-15), s

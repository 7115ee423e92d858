"""Two real DDP processes (gloo) over real MNIST shards whose size does not divide evenly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import shared_data

pytestmark = [pytest.mark.dali, pytest.mark.slow, pytest.mark.integration]

N_TRAIN = 1001  # odd: one rank reads 501 samples, the other 500 plus one masked repeat


def test_each_sample_once_per_epoch_and_equal_steps_under_two_ranks(tmp_path):
    from convnets.data_pipelines.shards.sources import MnistSource
    from convnets.data_pipelines.shards.writer import write_shards

    write_shards(MnistSource(root=shared_data("mnist"), n_train=N_TRAIN), tmp_path / "shards", shard_size=300)
    probe = Path(__file__).with_name("ddp_probe.py")
    epochs, batch = 2, 64
    result = subprocess.run(
        [sys.executable, str(probe), str(tmp_path / "shards"), str(tmp_path / "out"), str(epochs), str(batch)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    orders = []
    for epoch in map(str, range(epochs)):
        steps = [len(r["seen"][epoch]) for r in ranks]
        assert steps[0] == steps[1] == -(-((N_TRAIN + 1) // 2) // batch), f"epoch {epoch}: steps per rank {steps}"
        seen = [i for r in ranks for batch_seen in r["seen"][epoch] for i in batch_seen]
        assert sorted(seen) == list(range(N_TRAIN)), f"epoch {epoch}: not every sample exactly once"
        orders.append([i for batch_seen in ranks[0]["seen"][epoch] for i in batch_seen])
    assert orders[0] != orders[1], "the shuffle must change between epochs"

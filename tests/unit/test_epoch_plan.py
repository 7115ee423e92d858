"""The reading plan: exactly once per epoch across ranks, equal steps, seeded shuffles."""
from __future__ import annotations

import numpy as np
import pytest

from convnets.data_pipelines.loading.epoch_plan import plan_rank


def plans(n, world, batch, epoch=0, seed=0, shuffle=True):
    return [plan_rank(n, rank=r, world_size=world, batch_size=batch, seed=seed, epoch=epoch, shuffle=shuffle)
            for r in range(world)]


@pytest.mark.parametrize("n,world,batch", [(1001, 2, 64), (10, 3, 4), (7, 8, 2), (1797, 2, 16), (5, 1, 10)])
def test_every_sample_once_and_equal_steps(n, world, batch):
    ps = plans(n, world, batch)
    assert len({p.steps for p in ps}) == 1, "ranks disagree on the number of steps: DDP would hang"
    seen = np.concatenate([p.indices[p.valid] for p in ps])
    assert sorted(seen.tolist()) == list(range(n))
    # Batches have equal sizes on every rank at every step (same collective shapes).
    for step in range(ps[0].steps):
        assert len({len(p.batch(step)[0]) for p in ps}) == 1


def test_shuffle_changes_per_epoch_and_repeats_per_seed():
    a0 = plans(100, 2, 8, epoch=0)[0].indices
    a1 = plans(100, 2, 8, epoch=1)[0].indices
    again = plans(100, 2, 8, epoch=0)[0].indices
    other_seed = plans(100, 2, 8, epoch=0, seed=1)[0].indices
    assert not np.array_equal(a0, a1)
    assert np.array_equal(a0, again)
    assert not np.array_equal(a0, other_seed)


def test_eval_plan_keeps_order():
    (p,) = plans(10, 1, 4, shuffle=False)
    assert p.indices.tolist() == list(range(10))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="no samples"):
        plan_rank(0, rank=0, world_size=1, batch_size=1, seed=0, epoch=0, shuffle=True)
    with pytest.raises(ValueError, match="rank 2"):
        plan_rank(5, rank=2, world_size=2, batch_size=1, seed=0, epoch=0, shuffle=True)

"""The reading plan: exactly once per epoch across ranks, equal steps, seeded shuffles."""

from __future__ import annotations

import numpy as np
import pytest

from convnets.data_pipelines.loading.epoch_plan import consumed_samples, epoch_permutation, plan_rank


def plans(n, world, batch, epoch=0, seed=0, shuffle=True):
    return [
        plan_rank(n, rank=r, world_size=world, batch_size=batch, seed=seed, epoch=epoch, shuffle=shuffle)
        for r in range(world)
    ]


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


@pytest.mark.parametrize("n,world,batch", [(1001, 2, 64), (10, 3, 4), (7, 8, 2), (1797, 3, 16)])
def test_ranks_take_every_world_size_th_sample_of_the_permutation(n, world, batch):
    """Not contiguous blocks: after s steps all ranks together have read a prefix of the
    permutation, which is what lets a run resume on another number of ranks."""
    perm = epoch_permutation(n, seed=0, epoch=0)
    ps = plans(n, world, batch)
    for r, p in enumerate(ps):
        assert p.indices[p.valid].tolist() == perm[r::world].tolist()
        assert not p.valid[p.valid.sum() :].any()  # padding only at the end
    real = [int(p.valid.sum()) for p in ps]
    assert max(real) - min(real) <= 1
    for s in range(ps[0].steps + 1):
        read = [i for p in ps for step in range(s) for i in p.batch(step)[0][p.batch(step)[1]]]
        assert sorted(read) == sorted(perm[: consumed_samples(n, steps=s, global_batch=world * batch)])


@pytest.mark.parametrize("n,world,batch", [(1001, 2, 64), (10, 3, 4), (1797, 2, 48)])
def test_a_resumed_epoch_on_the_same_ranks_is_the_tail_of_the_whole_one(n, world, batch):
    whole = plans(n, world, batch)
    for s in range(1, whole[0].steps):
        for r, w in enumerate(whole):
            tail = plan_rank(
                n, rank=r, world_size=world, batch_size=batch, seed=0, epoch=0, shuffle=True, start=s * world * batch
            )
            assert tail.steps == w.steps and tail.first_step == s
            for step in range(s, w.steps):
                assert all(np.array_equal(a, b) for a, b in zip(tail.batch(step), w.batch(step)))


@pytest.mark.parametrize("worlds", [(2, 3, 1), (3, 1, 2), (4, 2, 3)])
def test_resumed_on_other_rank_counts_each_sample_once_in_the_same_steps(worlds):
    """An epoch read on 2 ranks for a while, then 3, then 1 (global batch 24 kept): every sample once."""
    n, global_batch = 250, 24
    steps = -(-n // global_batch)
    cuts = [0, 3, 7, steps]  # steps read on each world size
    seen = []
    for world, lo, hi in zip(worlds, cuts, cuts[1:]):
        ps = [
            plan_rank(
                n,
                rank=r,
                world_size=world,
                batch_size=global_batch // world,
                seed=0,
                epoch=2,
                shuffle=True,
                start=consumed_samples(n, steps=lo, global_batch=global_batch),
            )
            for r in range(world)
        ]
        assert {p.steps for p in ps} == {steps}
        seen += [i for p in ps for s in range(lo, hi) for i in p.batch(s)[0][p.batch(s)[1]]]
    assert sorted(seen) == list(range(n))


def test_a_start_inside_a_global_batch_is_refused():
    with pytest.raises(ValueError, match="after 10: not a multiple of the global batch 8"):
        plan_rank(100, rank=0, world_size=2, batch_size=4, seed=0, epoch=0, shuffle=True, start=10)
    with pytest.raises(IndexError, match="before this plan's first step 2"):
        plan_rank(100, rank=0, world_size=2, batch_size=4, seed=0, epoch=0, shuffle=True, start=16).batch(1)

"""The block shuffle: still one permutation per (seed, epoch) dealt like the global one, but read a
window of shards at a time, so a node-local cache smaller than the split fetches each shard about
once per epoch (the global order fetches most shards many times)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from convnets.data_pipelines.loading.epoch_plan import (
    BlockShuffle,
    block_permutation,
    consumed_samples,
    plan_rank,
    shard_touch_order,
)
from convnets.data_pipelines.loading.loader_config import LoaderConfig
from convnets.data_pipelines.loading.plan_loader import read_state
from convnets.errors import ConfigError


def shards_of(sizes) -> np.ndarray:
    """shard_id per sample for shards of the given sample counts, stored shard after shard."""
    return np.repeat(np.arange(len(sizes)), sizes).astype(np.int32)


def plans(shard_id, world, batch, *, window, epoch=0, seed=0, start=0):
    block = BlockShuffle(shard_id, window) if window else True
    return [
        plan_rank(
            len(shard_id),
            rank=r,
            world_size=world,
            batch_size=batch,
            seed=seed,
            epoch=epoch,
            shuffle=block,
            start=start,
        )
        for r in range(world)
    ]


def read_order(ps) -> np.ndarray:
    """What all ranks read, step after step (rank 0's batch, then rank 1's...), padding included."""
    return np.concatenate([p.batch(s)[0] for s in range(ps[0].first_step, ps[0].steps) for p in ps])


def step_of_read(ps) -> np.ndarray:
    """The step of each entry of read_order(ps)."""
    return np.concatenate([np.full(len(p.batch(s)[0]), s) for s in range(ps[0].first_step, ps[0].steps) for p in ps])


def most_open_shards(shards: np.ndarray, steps: np.ndarray) -> int:
    """The most shards begun and not finished between two steps (all ranks together): what a
    node's cache must hold at once. shards[i] is read at step steps[i] (steps ascending)."""
    ids = np.unique(shards)
    first = np.array([steps[shards == s].min() for s in ids])
    last = np.array([steps[shards == s].max() for s in ids])
    return max(int(((first <= t) & (t < last)).sum()) for t in np.unique(steps))


# Shard sizes as the writer makes them (equal, a short last one), windows that divide the shard
# count, that do not, of one shard and of more shards than there are.
CASES = [
    ([300] * 4 + [238], 2, 2, 64),
    ([100] * 40 + [17], 8, 3, 16),
    ([50] * 12, 1, 8, 5),
    ([7] * 5, 16, 3, 4),
    ([1000] * 3, 2, 1, 100),
    ([100] * 6 + [31], 2, 4, 8),  # 631 samples on 4 ranks: one rank pads its last batch
]


@pytest.mark.parametrize("sizes,window,world,batch", CASES)
def test_each_sample_once_equal_steps_on_every_rank(sizes, window, world, batch):
    shard_id = shards_of(sizes)
    ps = plans(shard_id, world, batch, window=window)
    assert len({p.steps for p in ps}) == 1, "ranks disagree on the number of steps: DDP would hang"
    real = [int(p.valid.sum()) for p in ps]
    assert max(real) - min(real) <= 1
    assert sorted(np.concatenate([p.indices[p.valid] for p in ps]).tolist()) == list(range(len(shard_id)))
    for step in range(ps[0].steps):
        assert len({len(p.batch(step)[0]) for p in ps}) == 1


def test_seeded_by_seed_and_epoch_only_and_new_every_epoch():
    shard_id = shards_of([100] * 30)
    first = block_permutation(shard_id, window=4, seed=3, epoch=0)
    assert np.array_equal(first, block_permutation(shard_id, window=4, seed=3, epoch=0))
    assert not np.array_equal(first, block_permutation(shard_id, window=4, seed=3, epoch=1))
    assert not np.array_equal(first, block_permutation(shard_id, window=4, seed=4, epoch=0))
    # Not only the sample order within windows: the windows group other shards every epoch.
    groups = [
        {frozenset(shard_id[block_permutation(shard_id, window=4, seed=3, epoch=e)][i : i + 400]) for i in (0, 400)}
        for e in (0, 1)
    ]
    assert groups[0] != groups[1]


@pytest.mark.parametrize("sizes,window,world,batch", CASES)
def test_a_window_of_shards_at_a_time(sizes, window, world, batch):
    """The cache-friendliness, from the plan: between steps at most `window` shards are in use
    (padding included), whatever the rank count, and the windows are read one after the other."""
    shard_id = shards_of(sizes)
    ps = plans(shard_id, world, batch, window=window)
    shards, steps = shard_id[read_order(ps)], step_of_read(ps)
    assert most_open_shards(shards, steps) <= window
    for s in np.unique(steps):  # inside one step the ranks may straddle two windows, never more
        assert len(np.unique(shards[steps == s])) <= 2 * window
    # Window by window: the shards in the order they are first read, taken `window` at a time,
    # fill consecutive stretches of the order, each with all of its shards' samples and nothing else.
    order = block_permutation(shard_id, window=window, seed=0, epoch=0)
    position = np.empty(len(order), np.int64)
    position[order] = np.arange(len(order))
    ids, first = np.unique(shard_id[order], return_index=True)
    by_first = ids[np.argsort(first)]
    at = 0
    for w in range(0, len(sizes), window):
        members = by_first[w : w + window]
        where = np.sort(position[np.isin(shard_id, members)])
        assert where.tolist() == list(range(at, at + len(where))), f"window {w // window} is not one stretch"
        at += len(where)
    assert at == len(order)


def test_every_batch_mixes_the_shards_of_its_window():
    """Within a window the samples are shuffled, not read shard after shard: a batch of 64 inside a
    window of 4 shards holds samples of all 4 (by chance all four appear with probability 1 - 4e-8)."""
    shard_id = shards_of([300] * 12)
    (p,) = plans(shard_id, 1, 64, window=4)
    for step in range(p.steps):
        lo, hi = step * 64, step * 64 + 64
        if lo // 1200 == (hi - 1) // 1200:  # the batch lies inside one window (1,200 samples)
            assert len(np.unique(shard_id[p.batch(step)[0]])) == 4, step


def test_the_global_order_keeps_every_shard_open():
    """What the block order avoids: with the global one nearly every shard is in use all epoch."""
    shard_id = shards_of([100] * 40)
    ps = plans(shard_id, 2, 16, window=0)
    assert most_open_shards(shard_id[read_order(ps)], step_of_read(ps)) >= 38


def test_global_stays_the_permutation_of_seed_and_epoch():
    """Runs and checkpoints made before the block shuffle read the same samples."""
    p = plan_rank(1000, rank=0, world_size=1, batch_size=10, seed=5, epoch=2, shuffle=True)
    assert p.indices.tolist() == np.random.default_rng([5, 2]).permutation(1000).tolist()


@pytest.mark.parametrize("worlds", [(2, 3, 1), (4, 1, 2)])
def test_block_order_resumes_on_other_rank_counts_each_sample_once(worlds):
    shard_id = shards_of([60] * 9 + [13])
    n, global_batch = len(shard_id), 24
    steps = -(-n // global_batch)
    cuts = [0, 5, 13, steps]
    whole = block_permutation(shard_id, window=3, seed=0, epoch=1)
    seen = []
    for world, lo, hi in zip(worlds, cuts, cuts[1:]):
        ps = plans(
            shard_id,
            world,
            global_batch // world,
            window=3,
            epoch=1,
            start=consumed_samples(n, steps=lo, global_batch=global_batch),
        )
        assert {p.steps for p in ps} == {steps}
        piece = [i for s in range(lo, hi) for p in ps for i in p.batch(s)[0][p.batch(s)[1]]]
        # What the ranks read between two cuts is that stretch of the one epoch order.
        hi_samples = consumed_samples(n, steps=hi, global_batch=global_batch)
        assert sorted(piece) == sorted(whole[consumed_samples(n, steps=lo, global_batch=global_batch) : hi_samples])
        seen += piece
    assert sorted(seen) == list(range(n))


def test_a_resumed_block_epoch_on_the_same_ranks_is_the_tail_of_the_whole_one():
    shard_id = shards_of([100] * 7 + [31])
    whole = plans(shard_id, 3, 16, window=2, epoch=4)
    for s in (1, 5, whole[0].steps - 1):
        for w, t in zip(whole, plans(shard_id, 3, 16, window=2, epoch=4, start=s * 48)):
            assert t.steps == w.steps
            for step in range(s, w.steps):
                assert all(np.array_equal(a, b) for a, b in zip(t.batch(step), w.batch(step)))


def test_shard_touch_order_is_first_appearance_from_a_step_on():
    shard_id = shards_of([30] * 20)
    for start in (0, 96):
        (p,) = plans(shard_id, 1, 32, window=4, start=start)
        for step in (p.first_step, p.first_step + 2, p.steps - 1):
            expected = []
            for i in p.indices[(step - p.first_step) * 32 :]:  # a plain loop: the first read of each shard
                if int(shard_id[i]) not in expected:
                    expected.append(int(shard_id[i]))
            assert shard_touch_order(p, shard_id, step=step).tolist() == expected
        assert shard_touch_order(p, shard_id).tolist() == shard_touch_order(p, shard_id, step=p.first_step).tolist()
    with pytest.raises(IndexError, match="before this plan's first step 3"):
        shard_touch_order(p, shard_id, step=2)


def fetched_bytes(shards: np.ndarray, shard_bytes: np.ndarray, limit: float) -> int:
    """An LRU cache of whole shards up to `limit` bytes: the bytes fetched for this reading sequence."""
    cache: OrderedDict[int, int] = OrderedDict()
    held = fetched = 0
    for s in shards.tolist():
        if s in cache:
            cache.move_to_end(s)
            continue
        fetched += int(shard_bytes[s])
        cache[s] = int(shard_bytes[s])
        held += cache[s]
        while held > limit and len(cache) > 1:
            held -= cache.popitem(last=False)[1]
    return fetched


def test_a_cache_of_a_quarter_of_the_split_fetches_each_shard_about_once_per_epoch():
    """400 shards of 100 samples (ImageNet's shards hold 1,000), ~110 MB each, 8 ranks, 2 epochs,
    an LRU cache of 25% of the split: block (16-shard windows) fetches 1.00x the split per epoch,
    global about 75x (three quarters of the reads miss, and every miss fetches a whole shard)."""
    shard_id = shards_of([100] * 400)
    shard_bytes = np.random.default_rng(0).integers(100_000_000, 120_000_000, 400)
    split = int(shard_bytes.sum())
    ratios = {}
    for window, name in ((16, "block"), (0, "global")):
        reads = np.concatenate([shard_id[read_order(plans(shard_id, 8, 32, window=window, epoch=e))] for e in (0, 1)])
        ratios[name] = fetched_bytes(reads, shard_bytes, 0.25 * split) / split / 2
    assert ratios["block"] <= 1.1, ratios
    assert ratios["global"] > 50, ratios


def _state(shuffle: str, samples: int) -> dict:
    return {
        "version": 2,
        "epoch": 1,
        "samples": samples,
        "global_batch": 32,
        "rank_count": 1,
        "engine": "torch",
        "shuffle": shuffle,
        "dali": None,
    }


def _cfg(shuffle="global", window=16) -> LoaderConfig:
    return LoaderConfig(
        train=True,
        crops=1,
        batch_size=32,
        num_threads=0,
        device_id=None,
        seed=0,
        rank=0,
        world_size=1,
        shuffle=shuffle,
        shuffle_window=window,
    )


def test_a_mid_epoch_resume_in_another_order_is_refused_in_one_line():
    with pytest.raises(ValueError) as info:
        read_state(_state("block of 16 shards", 64), _cfg("global"), num_samples=1000, engine="torch")
    message = str(info.value)
    assert "\n" not in message
    assert "mid-epoch 1 in the block of 16 shards shuffle order, this run reads the global order" in message
    with pytest.raises(ValueError, match="in the block of 16 shards shuffle order, this run reads the block of 8"):
        read_state(_state("block of 16 shards", 64), _cfg("block", 8), num_samples=1000, engine="torch")
    # A state written before the block shuffle existed was read in the global order.
    old = {k: v for k, v in _state("global", 64).items() if k != "shuffle"}
    with pytest.raises(ValueError, match="in the global shuffle order, this run reads the block of 16"):
        read_state(old, _cfg("block"), num_samples=1000, engine="torch")
    assert read_state(old, _cfg("global"), num_samples=1000, engine="torch").samples == 64


def test_at_an_epoch_boundary_another_order_may_follow():
    for samples in (0, 1000):
        resume = read_state(_state("block of 16 shards", samples), _cfg("global"), num_samples=1000, engine="torch")
        assert resume.samples == samples
    assert read_state(_state("block of 16 shards", 64), _cfg("block"), num_samples=1000, engine="torch").samples == 64


def test_bad_shuffle_options_are_named():
    from convnets.data_pipelines.loading.datamodule import ShardDataModule

    with pytest.raises(ConfigError, match="data.shuffle_window=0: the block shuffle's window is shards, >= 1"):
        ShardDataModule(data_dir="unused", shuffle="block", shuffle_window=0)
    with pytest.raises(ConfigError, match="data.shuffle='blocks' is not one of global, block"):
        ShardDataModule(data_dir="unused", shuffle="blocks")
    with pytest.raises(ValueError, match="window must be >= 1 shard, got 0"):
        block_permutation(shards_of([5, 5]), window=0, seed=0, epoch=0)

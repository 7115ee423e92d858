"""The train/eval loader over real shards: bounded files, one pipeline per split, abandoned epochs,
held batches, and exact mid-epoch resume (position + DALI augmentation state)."""

from __future__ import annotations

import os
import tarfile

import numpy as np
import pytest
import torch

from convnets.data_pipelines.loading.augment import InputSpec
from convnets.data_pipelines.loading.datamodule import ShardDataModule
from convnets.data_pipelines.loading.epoch_plan import BlockShuffle, plan_rank
from convnets.data_pipelines.shards.format import load_sample_index
from convnets.data_pipelines.shards.reader import ShardFiles

pytestmark = pytest.mark.dali

LENET = InputSpec(channels=1, image_size=32, mean=(0.1307,), std=(0.3081,), crop_fraction=28 / 32)


def train_loader(path, *, batch_size=128, epoch=0, device="cpu", spec=LENET, preset="pad", **kw):
    dm = ShardDataModule(
        data_dir=str(path), batch_size=batch_size, num_threads=1, input_spec=spec, preset=preset, device=device, **kw
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.epoch_fn = lambda: epoch
    return loader


def set_epoch(loader, epoch: int) -> None:
    loader.epoch_fn = lambda: epoch


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_shard_files_read_the_tar_members_with_few_files_open(digits_shards):
    index = load_sample_index(digits_shards / "train")
    members = {}  # independent reader: Python's tarfile
    for shard in index.shard_paths:
        with tarfile.open(shard) as tar:
            members.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    files = ShardFiles(index, max_open=2)
    before = open_fds()
    order = np.random.default_rng(0).permutation(len(index))  # random order: every shard, many times
    for i in order:
        name = f"{index.key(int(i))}.{index.image_exts[int(index.img_ext[i])]}"
        assert files.image(int(i)) == members[name]
        assert files.num_open <= 2 and open_fds() <= before + 2
    assert len(index.shard_paths) > 2
    files.close()
    assert open_fds() == before


def test_one_pipeline_for_every_epoch_and_each_sample_once(digits_shards):
    loader = train_loader(digits_shards)
    pipelines = set()
    for epoch in range(2):
        set_epoch(loader, epoch)
        seen = []
        for batch in loader:
            pipelines.add(id(loader._iterator))
            seen += batch["index"][batch["valid"]].tolist()
        assert sorted(seen) == list(range(len(loader.labels)))
    assert len(pipelines) == 1


def test_an_abandoned_epoch_does_not_leak_into_the_next(digits_shards):
    """Lightning's sanity check reads two batches and leaves; the next epoch must start clean."""
    loader = train_loader(digits_shards, batch_size=64)
    first = iter(loader)
    next(first), next(first)
    set_epoch(loader, 1)
    got = np.concatenate([b["index"].numpy() for b in loader])
    plan = plan_rank(len(loader.labels), rank=0, world_size=1, batch_size=64, seed=0, epoch=1, shuffle=True)
    assert np.array_equal(got, plan.indices)  # epoch 1's plan, in order, nothing of epoch 0 in front
    with pytest.raises(StopIteration):
        next(first)  # the abandoned iterator is finished, not resumed


def test_a_held_batch_is_unchanged_while_the_next_ones_are_fetched(digits_shards):
    """Lightning keeps batch k while it fetches k+1 (DALI PR #3239: reused output buffers)."""
    it = iter(train_loader(digits_shards, batch_size=64))
    held = next(it)
    copy = {k: v.clone() for k, v in held.items() if torch.is_tensor(v)}
    later = [next(it) for _ in range(3)]
    for key, value in copy.items():
        assert torch.equal(held[key], value), key
    assert not torch.equal(held["images"], later[0]["images"])


def _run(loader, epochs):
    """(index, images) of every batch of the given epochs."""
    out = []
    for epoch in epochs:
        set_epoch(loader, epoch)
        out += [(b["index"].clone(), b["images"].clone()) for b in loader]
    return out


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


@pytest.mark.parametrize("backend", ["dali", "torch"])
@pytest.mark.parametrize("where", ["mid-epoch", "epoch end", "next epoch start"])
def test_resume_continues_the_batches_and_the_random_crops_exactly(digits_shards, where, backend):
    reference = _run(train_loader(digits_shards, backend=backend), [0, 1])
    steps = len(reference) // 2
    run = train_loader(digits_shards, backend=backend)
    it = iter(run)
    if where == "mid-epoch":
        epoch, trained, done = 0, 3, 3
        for _ in range(trained + 1):  # Lightning fetches one batch ahead of the one it trains
            next(it)
    elif where == "epoch end":
        epoch, trained, done = 0, len(list(it)), steps
    else:  # epoch 1 begun (one batch fetched ahead), none trained
        list(it)
        set_epoch(run, 1)
        next(iter(run))
        epoch, trained, done = 1, 0, steps
    run.consumed_fn = lambda: trained
    state = run.state_dict()
    assert (state["epoch"], state["samples"]) == (epoch, min(trained * 128, len(run.labels)))
    resumed = train_loader(digits_shards, backend=backend)
    resumed.load_state_dict(state)
    rest = _run(resumed, [0, 1] if done < steps else [1])
    assert _same(rest, reference[done:])


def test_resume_restores_the_draws_of_the_cpu_kernels(imagenette_small_shards):
    """Mid-epoch resume of the RGB inception graph with full colour jitter: on the CPU its random
    crops and colour draws feed the Numba kernel (cpu_kernels.train_view); the restored DALI state
    gives the same pixels as the uninterrupted run."""
    rgb = InputSpec(
        channels=3, image_size=64, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_fraction=0.875
    )

    def make():
        return train_loader(
            imagenette_small_shards,
            batch_size=8,
            spec=rgb,
            preset="inception",  # noqa: E731
            jitter=0.4,
            hue=0.1,
        )

    reference = _run(make(), [0])[:5]
    run = make()
    it = iter(run)
    for _ in range(3):  # 2 trained, 1 fetched ahead
        next(it)
    run.consumed_fn = lambda: 2
    resumed = make()
    resumed.load_state_dict(run.state_dict())
    set_epoch(resumed, 0)
    rest = [(b["index"].clone(), b["images"].clone()) for _, b in zip(range(3), resumed)]
    assert _same(rest, reference[2:5])
    assert not torch.equal(reference[2][1], reference[3][1])


def test_without_the_dali_state_the_crops_differ(digits_shards):
    """The resume test can fail: restoring only the position gives other random shifts."""
    reference = _run(train_loader(digits_shards), [0])
    run = train_loader(digits_shards)
    it = iter(run)
    for _ in range(3):
        next(it)
    state = run.state_dict()
    resumed = train_loader(digits_shards)
    resumed.load_state_dict({**state, "dali": None})
    rest = _run(resumed, [0])
    assert all(torch.equal(x[0], y[0]) for x, y in zip(rest, reference[3:]))  # same samples
    assert not _same(rest, reference[3:])  # not the same crops


def test_a_state_from_another_global_batch_is_refused(digits_shards):
    run = train_loader(digits_shards)
    next(iter(run))
    state = run.state_dict()
    with pytest.raises(ValueError, match="global batch of 128, this loader reads 2 x 128 = 256"):
        other = train_loader(digits_shards)
        other.cfg = type(other.cfg)(**{**other.cfg.__dict__, "world_size": 2})
        other.load_state_dict(state)


def test_a_state_written_before_the_position_counted_samples_still_resumes(digits_shards):
    """Checkpoints whose loader state named the next batch (version 1) resume at the same place."""
    reference = _run(train_loader(digits_shards), [0])
    run = train_loader(digits_shards)
    it = iter(run)
    for _ in range(4):
        next(it)
    run.consumed_fn = lambda: 3
    state = run.state_dict()
    old = {"version": 1, "epoch": 0, "next_step": 3, "rank_count": 1, "dali": state["dali"]}
    resumed = train_loader(digits_shards)
    resumed.load_state_dict(old)
    assert _same(_run(resumed, [0]), reference[3:])
    with pytest.raises(ValueError, match="version 7; this code reads 1 and 2"):
        resumed.load_state_dict({**state, "version": 7})


@pytest.mark.gpu
def test_a_held_gpu_batch_is_unchanged_while_the_next_ones_are_fetched(digits_shards):
    loader = train_loader(digits_shards, batch_size=64)
    loader.cfg = type(loader.cfg)(**{**loader.cfg.__dict__, "device_id": 0})
    it = iter(loader)
    held = next(it)
    assert held["images"].is_cuda
    copy = held["images"].clone()
    later = [next(it) for _ in range(3)]
    torch.cuda.synchronize()
    assert torch.equal(held["images"], copy)
    assert not torch.equal(held["images"], later[0]["images"])


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_a_state_from_2_ranks_resumes_on_3_with_each_remaining_sample_once(digits_shards, backend):
    """Rank 0's state after 4 of 15 steps on 2 ranks x 48, loaded by 3 ranks x 32 (global batch 96)."""

    def ranks(world: int):
        out = []
        for rank in range(world):
            loader = train_loader(digits_shards, batch_size=96 // world, backend=backend)
            loader.cfg = type(loader.cfg)(**{**loader.cfg.__dict__, "rank": rank, "world_size": world})
            out.append(loader)
        return out

    seen = []
    two = ranks(2)
    for loader in two:
        it = iter(loader)
        batches = [next(it) for _ in range(5)]  # 4 trained, 1 fetched ahead
        seen += [i for b in batches[:4] for i in b["index"][b["valid"]].tolist()]
    two[0].consumed_fn = lambda: 4
    state = two[0].state_dict()
    assert (state["samples"], state["global_batch"], state["rank_count"]) == (384, 96, 2)
    for loader in ranks(3):
        loader.load_state_dict(state)
        assert len(loader) == 15
        batches = list(loader)
        assert len(batches) == 11 and {len(b["valid"]) for b in batches[:-1]} == {32}
        seen += [i for b in batches for i in b["index"][b["valid"]].tolist()]
    assert sorted(seen) == list(range(len(two[0].labels)))


def test_a_resumed_run_keeps_its_global_batch_on_any_number_of_processes(digits_shards):
    from types import SimpleNamespace

    dm = ShardDataModule(data_dir=str(digits_shards), batch_size=48, input_spec=LENET)
    dm.load_state_dict(
        {
            "train_loader": {
                "version": 2,
                "epoch": 0,
                "samples": 384,
                "global_batch": 96,
                "rank_count": 2,
                "engine": "torch",
                "dali": None,
            }
        }
    )
    for world, per_rank in ((2, 48), (3, 32), (1, 96), (4, 24)):
        dm.trainer = SimpleNamespace(world_size=world)
        assert dm.train_batch_size() == per_rank
    dm.trainer = SimpleNamespace(world_size=5)
    with pytest.raises(ValueError, match="global batch of 96, which does not divide over 5 processes"):
        dm.train_batch_size()


# torch first: its DataLoader forks workers, which must not follow a DALI pipeline left mid-epoch by a failure.
@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_both_engines_read_the_block_order_given_to_the_data_module(digits_shards, backend):
    """--data.shuffle block --data.shuffle_window 2 reaches the plan of either engine."""
    loader = train_loader(digits_shards, batch_size=64, epoch=1, backend=backend, shuffle="block", shuffle_window=2)
    got = np.concatenate([b["index"].numpy() for b in loader])
    shard_id = load_sample_index(digits_shards / "train").shard_id
    block = BlockShuffle(shard_id, 2)
    plan = plan_rank(len(shard_id), rank=0, world_size=1, batch_size=64, seed=0, epoch=1, shuffle=block)
    assert np.array_equal(got, plan.indices)
    assert len(np.unique(shard_id[got[:500]])) == 2  # the first window: 2 of the 5 shards

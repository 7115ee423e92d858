"""The node-local shard cache over a real shard folder (a LocalStore: the same interface as a URL's store).

What a user would notice: the bytes read through the cache are the store's; a damaged or partial
cached file is never used; a store whose shard disagrees with its manifest stops with one line that
names the shard and leaves nothing under its name; the cache stays within its byte limit without
evicting what is about to be read; the ranks of one node download each shard once.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from convnets.data_pipelines.shards.format import load_sample_index, read_labels, read_manifest
from convnets.data_pipelines.shards.mirror import open_cached_split
from convnets.data_pipelines.shards.reader import ShardFiles
from convnets.data_pipelines.storage.cache import ShardCache
from convnets.data_pipelines.storage.store import LocalStore, StoreError

REPO = Path(__file__).resolve().parents[2]


class CountingStore(LocalStore):
    """A real LocalStore that counts downloads (counting, not replacing, the bytes)."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.streams: list[str] = []
        self.reads: list[str] = []

    def read(self, name: str) -> bytes:
        self.reads.append(name)
        return super().read(name)

    def stream(self, name: str, chunk_bytes: int = 8 << 20):
        self.streams.append(name)
        yield from super().stream(name, chunk_bytes=65536)


@pytest.fixture
def cached(digits_shards, tmp_path):
    """A cache of the digits train split; closed at the end."""
    opened = []

    def make(*, store=None, limit=None, threads=0) -> ShardCache:
        cache, _ = open_cached_split(
            store or CountingStore(digits_shards), "train", tmp_path / "cache", limit_bytes=limit, threads=threads
        )
        opened.append(cache)
        return cache

    yield make
    for cache in opened:
        cache.close()


def test_start_up_reuses_current_small_files_and_refetches_stale_ones(digits_shards, tmp_path, cached):
    source = tmp_path / "source"
    shutil.copytree(digits_shards, source)
    first = cached(store=CountingStore(source))
    entries = read_manifest(source / "train").shards
    indexes = [f"train/{e.index}" for e in entries]
    assert sorted(first.store.reads) == sorted(["train/manifest.json", "train/labels.npy", *indexes])
    again = cached(store=CountingStore(source))  # the next run on the node: the manifest is read, nothing else
    assert again.store.reads == ["train/manifest.json"]
    # The data was rewritten at its address: a changed manifest makes every index file stale.
    manifest = source / "train" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"seed": 0', '"seed": 1'))
    changed = cached(store=CountingStore(source))
    # (labels.npy is kept: its sha256 in the manifest still matches)
    assert changed.store.reads[0] == "train/manifest.json" and sorted(changed.store.reads[1:]) == indexes
    assert (changed.folder / "manifest.json").read_bytes() == manifest.read_bytes()


def _same_bytes(cache: ShardCache, source: Path, shard: int) -> bool:
    name = cache.entries[shard].name
    return cache.ensure(shard).read_bytes() == (source / "train" / name).read_bytes()


def test_fetches_verifies_and_reads_like_the_local_folder(digits_shards, cached):
    cache = cached()
    local = load_sample_index(digits_shards / "train")
    mirrored = load_sample_index(cache.folder)  # the small files are there before any shard
    assert not list(cache.folder.glob("*.tar"))
    np.testing.assert_array_equal(mirrored.img_offset, local.img_offset)
    num_classes = read_manifest(cache.folder).num_classes
    np.testing.assert_array_equal(read_labels(mirrored, num_classes=num_classes), read_labels(local, num_classes=10))

    files = ShardFiles(mirrored, open_path=cache.ensure)
    picks = np.random.default_rng(0).choice(len(local), 50, replace=False)
    reference = ShardFiles(local)
    assert [files.image(int(i)) for i in picks] == [reference.image(int(i)) for i in picks]
    touched = sorted(set(local.shard_id[picks].tolist()))
    assert cache.stats.shards_fetched == len(touched) == len(cache.store.streams)
    assert cache.stats.bytes_fetched == sum(cache.entries[s].num_bytes for s in touched)
    cache.ensure(touched[0])
    assert cache.stats.hits >= 1 and cache.stats.shards_fetched == len(touched)


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_a_damaged_cached_shard_is_fetched_again(digits_shards, cached, damage):
    first = cached()
    path = first.ensure(1)
    first.close()
    with open(path, "r+b") as f:
        if damage == "truncated":
            f.truncate(1000)
        else:
            f.seek(5000)
            byte = f.read(1)
            f.seek(5000)
            f.write(bytes([byte[0] ^ 0xFF]))
    again = cached()  # a later run on the node
    assert _same_bytes(again, digits_shards, 1)
    assert again.store.streams == ["train/shard-000001.tar"]


def test_a_leftover_partial_download_is_ignored(digits_shards, cached):
    cache = cached()
    partial = cache.folder / "shard-000002.tar.tmp"
    partial.write_bytes(b"half a shard from a killed process")
    assert _same_bytes(cache, digits_shards, 2)
    assert not partial.exists()


def test_a_store_that_disagrees_with_its_manifest_is_one_line_and_leaves_nothing(digits_shards, tmp_path, cached):
    altered = tmp_path / "altered"
    shutil.copytree(digits_shards, altered)
    with open(altered / "train" / "shard-000003.tar", "r+b") as f:
        f.seek(700)
        f.write(b"X")
    cache = cached(store=LocalStore(altered))
    with pytest.raises(StoreError) as err:
        cache.ensure(3)
    message = str(err.value)
    assert "\n" not in message and "shard-000003.tar" in message and str(altered / "train") in message
    assert not (cache.folder / "shard-000003.tar").exists()
    assert not (cache.folder / "shard-000003.tar.tmp").exists()


def _on_disk(cache: ShardCache) -> set[int]:
    return {s for s, e in enumerate(cache.entries) if (cache.folder / e.name).exists()}


def test_prefetch_follows_the_reading_order_within_the_limit(digits_shards, cached):
    probe = cached()
    size = probe.entries[0].num_bytes  # shards 0-3 have this size, shard 4 is smaller
    probe.close()
    cache = cached(limit=2 * size + size // 2, threads=2)
    order = np.repeat([3, 0, 2, 4, 1], 10)  # the shard of each sample this process will read
    cache.follow(order)
    assert cache.settle()
    assert _on_disk(cache) == {3, 0}  # the next two fit; a third would pass the limit
    seen = []
    for position in (10, 20, 30, 40):
        cache.advance(position)
        assert cache.settle()
        seen.append(_on_disk(cache))
        assert sum(cache.entries[s].num_bytes for s in seen[-1]) <= cache.limit
    # Each time the shard read now and the next one are there; passed shards are evicted first.
    assert seen == [{0, 2}, {2, 4}, {4, 1}, {4, 1}]
    # The first two are fetched at once by the two threads (either may start first), then one at a time.
    streams = cache.store.streams
    assert sorted(streams[:2]) == ["train/shard-000000.tar", "train/shard-000003.tar"]
    assert streams[2:] == [f"train/shard-00000{s}.tar" for s in (2, 4, 1)]


def test_eviction_is_least_recently_used_and_spares_the_lookahead(digits_shards, cached):
    probe = cached()
    size = probe.entries[0].num_bytes
    probe.close()
    cache = cached(limit=3 * size)
    cache.touch_every_s = 0.0
    for shard in (0, 1, 2):
        cache.ensure(shard)
    cache.ensure(0)  # 0 used again: 1 is now the least recently used, then 2
    cache.follow(np.array([1, 3]))  # ...but 1 is read next: it stays
    cache.ensure(3)
    assert _on_disk(cache) == {0, 1, 3}


CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from convnets.data_pipelines.shards.mirror import open_cached_split
    from tests.unit.test_shard_cache import CountingStore

    store = CountingStore(sys.argv[1])
    cache, manifest = open_cached_split(store, "train", Path(sys.argv[2]), limit_bytes=None, threads=2)
    cache.follow(list(range(len(manifest.shards))))
    paths = [str(cache.ensure(s)) for s in range(len(manifest.shards))]
    cache.close()
    print(json.dumps({"streams": store.streams, "paths": paths}))
    """
)


def test_two_processes_sharing_a_cache_folder_download_each_shard_once(digits_shards, tmp_path):
    env = {"PYTHONPATH": f"{REPO / 'src'}:{REPO}", "PATH": "/usr/bin:/bin"}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(digits_shards), str(tmp_path / "cache")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        for _ in range(2)
    ]
    results = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err[-2000:]
        results.append(json.loads(out.splitlines()[-1]))
    downloads = sorted(name for r in results for name in r["streams"])
    manifest = read_manifest(digits_shards / "train")
    assert downloads == sorted(f"train/{e.name}" for e in manifest.shards)  # each once, on the node
    for path, entry in zip(results[0]["paths"], manifest.shards):
        assert Path(path).read_bytes() == (digits_shards / "train" / entry.name).read_bytes()


def test_torch_loader_workers_read_the_same_batches_through_a_small_cache(digits_shards, cached):
    """DataLoader worker processes (forked while the prefetch threads hold shard locks) wait on the
    node's lock files, fetch what the limit evicted, and produce the local folder's batches."""
    from convnets.data_pipelines.loading.augment import InputSpec, preset_spec
    from convnets.data_pipelines.loading.loader_config import LoaderConfig
    from convnets.data_pipelines.loading.torch_loader import TorchLoader

    spec = InputSpec(channels=1, image_size=32, mean=(0.1307,), std=(0.3081,), crop_fraction=28 / 32)
    aug = preset_spec("pad", spec, flip=False)
    cfg = LoaderConfig(train=True, crops=1, batch_size=200, num_threads=2, device_id=None, seed=3, rank=0, world_size=1)
    probe = cached()
    size = probe.entries[0].num_bytes
    probe.close()
    cache = cached(limit=2 * size, threads=2)  # 2 of the 5 shards: a global shuffle keeps refetching

    def batches(index, loader_cache):
        labels = read_labels(index, num_classes=10)
        loader = TorchLoader(index, labels, aug, cfg, epoch_fn=lambda: 0, cache=loader_cache)
        return [(b["images"], b["index"]) for b in loader]

    local = batches(load_sample_index(digits_shards / "train"), None)
    through = batches(load_sample_index(cache.folder), cache)
    assert len(local) == len(through) == -(-read_manifest(cache.folder).num_samples // 200)
    for (a_img, a_idx), (b_img, b_idx) in zip(local, through):
        assert torch.equal(a_idx, b_idx) and torch.equal(a_img, b_img)

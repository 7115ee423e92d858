"""A split folder at any address, read through the node-local cache (storage/cache.py).

Start-up copies the split's small files (manifest.json, every .idx, labels.npy) into the cache folder
in parallel, so the folder reads like a local split (load_sample_index, read_labels unchanged); the
shards land in the same folder when a loader first needs them. The ranks of one node share the folder:
one of them copies the small files while the others wait for it (a lock file), then all reuse them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from convnets.data_pipelines.shards.format import LABELS, MANIFEST, Manifest, ShardError, parse_manifest
from convnets.data_pipelines.storage.cache import META, ShardCache, fetch_small_files, flocked, plain_name
from convnets.data_pipelines.storage.store import Store, is_remote
from convnets.utils.files import atomic_write_bytes

log = logging.getLogger(__name__)

DEFAULT_FREE_SHARE = 0.9  # of the cache disk's free bytes (plus what the cache holds): the default limit


def cache_root(address: str, cache_dir: str | os.PathLike | None) -> Path:
    """Where one shard folder's cache lives: <cache_dir or the temp folder>/convnets-cache/<hash of the address>.

    The default is the system's temp folder ($TMPDIR, else /tmp), node-local on most clusters; one
    folder per address, so two datasets never share files.
    """
    canonical = str(address) if is_remote(address) else str(Path(address).resolve())
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:12]
    base = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "convnets-cache"
    return base / digest


def default_limit(root: Path) -> int:
    """90% of what the cache may occupy on its disk now: its free bytes plus the bytes it already holds.

    Filling the node's local disk would break the job's own checkpoints and logs and other jobs on
    the node, and a split that fits is kept whole (no refetch after the first epoch).
    """
    root.mkdir(parents=True, exist_ok=True)
    held = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    return int(DEFAULT_FREE_SHARE * (shutil.disk_usage(root).free + held))


def read_remote_manifest(store: Store, split: str) -> Manifest:
    """The split's manifest straight from its store (config checks: nothing cached yet)."""
    return parse_manifest(store.read(f"{split}/{MANIFEST}"), where=store.url(f"{split}/{MANIFEST}"))


def mirror_split(store: Store, split: str, folder: Path, *, threads: int = 8) -> Manifest:
    """The split's small files in `folder` (fetched unless the copies there are current); returns its manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    url = store.url(f"{split}/{MANIFEST}")
    with flocked(folder / META / "small.lock"):
        raw = store.read(f"{split}/{MANIFEST}")
        manifest = parse_manifest(raw, where=url)
        current = folder / MANIFEST
        if current.is_file() and current.read_bytes() != raw:  # the data changed: its small files are stale
            log.info("%s changed since it was cached: fetching its index files again", url)
            current.unlink()
            for entry in manifest.shards:
                (folder / plain_name(entry.index, url)).unlink(missing_ok=True)
        names: dict[str, str | None] = {f"{split}/{plain_name(e.index, url)}": None for e in manifest.shards}
        if manifest.labels is not None:
            names[f"{split}/{plain_name(manifest.labels.name, url)}"] = manifest.labels.sha256
        fetch_small_files(store, names, folder, threads=threads)
        if not current.is_file():
            atomic_write_bytes(current, raw)  # last: a folder with manifest.json holds all its small files
    if manifest.labels is None:
        raise ShardError(
            f"{url}: format {manifest.format_version} keeps its labels only inside the shards (no {LABELS}); "
            "reading it through the cache would fetch every shard at start-up: rewrite it with this version"
        )
    return manifest


def open_cached_split(
    store: Store, split: str, root: Path, *, limit_bytes: int | None, threads: int = 4
) -> tuple[ShardCache, Manifest]:
    """The split's cache (small files fetched, shards on demand and ahead of `follow`) and its manifest."""
    folder = root / split
    manifest = mirror_split(store, split, folder)
    cache = ShardCache(store, split, manifest.shards, folder, limit_bytes=limit_bytes, threads=threads)
    return cache, manifest

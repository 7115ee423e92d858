"""`convnets bench data --shards ADDRESS --epochs N`: whole training epochs read from a shard folder at
any address (a local folder, `https://`, `s3://`) through the node-local cache, beside the same epochs
from a local copy of the same shards (`--baseline DIR`) in the same run.

    convnets bench data --shards https://host/shards/imagenette --baseline runs/shards/imagenette --epochs 2
    convnets bench data --shards s3://bucket/imagenette --baseline runs/shards/imagenette --epochs 2 \
        --cache-limit-gb 0.04 --shuffle block --shuffle-window 4

Per epoch and source: images/s over the whole epoch (first epoch: a cold cache, so the fetches are in
it; later epochs: what the cache kept), the bytes fetched (also as a multiple of the split's bytes),
the seconds the reader waited for a shard, and the ratio to the local folder's same epoch. Each
address gets a fresh, empty cache folder, so the first epoch is always cold.

The loader is the data module's train loader (`--backend dali` or `torch`), as `convnets fit` builds
it: the same epoch plan, reader, augmentation and cache.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from convnets.utils.tables import markdown_table


@dataclass(frozen=True)
class EpochBench:
    """One `bench data --epochs` measurement: `address` read through a cache, `baseline` read in place."""

    address: str  # a folder of splits or a split folder, at any address
    baseline: str | None  # a local folder of the same shards (the reference rate), or None
    epochs: int
    backend: str = "dali"
    batch: int = 128
    threads: int = 2
    cache_dir: str | None = None  # parent of the fresh cache folders (default: the system temp)
    cache_limit_gb: float | None = None
    shuffle: str = "global"
    shuffle_window: int = 16
    image_size: int = 224


def epochs_config(args) -> EpochBench:
    """The `bench data --epochs` options; the backend is the data module's (dali or torch)."""
    if args.backend not in ("dali", "torch"):
        raise ValueError(f"--backend {args.backend}: whole epochs run the train loader, dali or torch")
    return EpochBench(
        address=str(args.shards),
        baseline=args.baseline,
        epochs=args.epochs,
        backend=args.backend,
        batch=args.batch,
        threads=args.threads,
        cache_dir=args.cache_dir,
        cache_limit_gb=args.cache_limit_gb,
        shuffle=args.shuffle,
        shuffle_window=args.shuffle_window,
        image_size=args.image_size,
    )


def split_of(address: str) -> tuple[str, str]:
    """(folder of splits, split) for a folder of splits (its train split) or a split folder itself."""
    from convnets.data_pipelines.storage.store import StoreError, open_store

    store, address = open_store(address), str(address).rstrip("/")
    if store.exists("train/manifest.json"):
        return address, "train"
    if store.exists("manifest.json"):
        parent, _, split = address.rpartition("/")
        return parent, split
    raise StoreError(
        f"--shards {address}: no manifest.json there nor in its train/ (write shards with `convnets shards`)"
    )


def _module(cfg: EpochBench, address: str, cache_dir: Path | None):
    from convnets.data_pipelines.loading.datamodule import ShardDataModule
    from convnets.platform.bench.data import _rgb

    return ShardDataModule(
        data_dir=address,
        batch_size=cfg.batch,
        num_threads=cfg.threads,
        input_spec=_rgb(cfg.image_size),
        device="cpu",
        backend=cfg.backend,
        shuffle=cfg.shuffle,
        shuffle_window=cfg.shuffle_window,
        cache_dir=None if cache_dir is None else str(cache_dir),
        cache_limit_gb=cfg.cache_limit_gb if cache_dir is not None else None,
    )


def _epochs(cfg: EpochBench, address: str, *, source: str, cache_dir: Path | None) -> list[dict]:
    """Time `cfg.epochs` whole epochs of the train loader; the cache's counters per epoch."""
    root, split = split_of(address)
    dm = _module(cfg, root, cache_dir)
    split_bytes = sum(s.num_bytes for s in dm.manifest(split).shards)
    loader = dm.loader(split, train=True)
    cache = dm.cache(split) if dm.cached else None
    rows = []
    try:
        for epoch in range(cfg.epochs):
            before = asdict(cache.stats) if cache else None
            loader.epoch_fn = lambda e=epoch: e
            # Timed from the first batch on: the pipeline's start-up (and the first shard's wait) is
            # reported apart, so a small split's epoch rate is not a measure of start-up.
            start, first, images, first_images = time.perf_counter(), None, 0, 0
            for batch in loader:
                images += int(batch["n_valid"])
                if first is None:
                    first, first_images = time.perf_counter(), images
            seconds = time.perf_counter() - first
            after = asdict(cache.stats) if cache else None
            fetched = after["bytes_fetched"] - before["bytes_fetched"] if cache else 0
            rows.append(
                {
                    "source": source,
                    "epoch": epoch,
                    "images": images,
                    "seconds": seconds,
                    "startup_s": first - start,
                    "images_per_s": (images - first_images) / max(seconds, 1e-9),
                    "bytes_fetched": fetched,
                    "fetched_per_split": fetched / split_bytes,
                    "reader_wait_s": after["wait_s"] - before["wait_s"] if cache else 0.0,
                    "split_bytes": split_bytes,
                }
            )
    finally:
        dm.teardown("fit")
    return rows


def bench_epochs(cfg: EpochBench) -> dict:
    from convnets.platform.bench.data import _dali_version, hardware_cpu
    from convnets.utils.environment import runtime_versions

    if cfg.epochs < 1:
        raise ValueError(f"--epochs {cfg.epochs}: at least one epoch")
    rows = []
    if cfg.baseline is not None:
        rows += _epochs(cfg, cfg.baseline, source="local folder", cache_dir=None)
    scratch = Path(tempfile.mkdtemp(prefix="convnets-bench-cache-", dir=cfg.cache_dir))
    try:  # a fresh cache: the first epoch fetches everything it reads
        rows += _epochs(cfg, cfg.address, source="through the cache", cache_dir=scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    local = {r["epoch"]: r["images_per_s"] for r in rows if r["source"] == "local folder"}
    for r in rows:
        r["ratio_to_local"] = r["images_per_s"] / local[r["epoch"]] if r["epoch"] in local else None
    return {
        "bench": "data-epochs",
        **asdict(cfg),
        "epochs_measured": rows,
        "hardware": hardware_cpu(),
        "versions": {**runtime_versions(), "nvidia_dali": _dali_version()},
    }


def format_epochs_table(results: list[dict]) -> str:
    return markdown_table(
        [
            "source",
            "epoch",
            "images",
            "start-up (s)",
            "images/s",
            "x local",
            "MB fetched",
            "x split",
            "reader waited (s)",
        ],
        [
            [
                r["source"],
                str(r["epoch"] + 1),
                str(r["images"]),
                f"{r['startup_s']:.2f}",
                f"{r['images_per_s']:.0f}",
                "-" if r["ratio_to_local"] is None else f"{r['ratio_to_local']:.2f}",
                f"{r['bytes_fetched'] / 1e6:.1f}",
                f"{r['fetched_per_split']:.2f}",
                f"{r['reader_wait_s']:.2f}",
            ]
            for result in results
            for r in result["epochs_measured"]
        ],
    )

"""obstore vs fsspec (HTTP through aiohttp, S3 through s3fs) on the shard workload, on localhost servers.

    PYTHONPATH=.:src .venv/bin/python scripts/compare_store_libraries.py --out results/store-libraries/DAY.json

The workload of a shard folder: whole-shard GETs (~100 MB objects, streamed in 8 MB chunks as the cache
hashes and writes them; 1 and 4 threads), 110 kB range reads (one ImageNet-sized sample) and small-file
reads (a 20 kB .idx). Servers: Debian's nginx and moto's S3 stand-in (tests/servers.py), both on
localhost, so the numbers compare client overhead (CPU per byte, per request), not a network.
Each cell: n rounds; the table gives the median and the min-max over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import numpy as np

from tests.servers import MotoS3, Nginx

MB = 1 << 20
CHUNK = 8 * MB
RANGE = 110_000


def _obstore_ops(url: str) -> dict:
    import obstore
    from obstore.store import HTTPStore, S3Store

    if url.startswith("s3://"):
        bucket, prefix = url[5:].split("/", 1)
        store = S3Store(bucket, prefix=prefix, client_options={"allow_http": True})
    else:
        store = HTTPStore.from_url(url + "/", client_options={"allow_http": True})

    def whole(name: str) -> int:
        return sum(len(c) for c in obstore.get(store, name).stream(min_chunk_size=CHUNK))

    def ranged(name: str, start: int) -> int:
        return len(obstore.get_range(store, name, start=start, length=RANGE))

    def small(name: str) -> int:
        return len(obstore.get(store, name).bytes())

    return {"whole": whole, "range": ranged, "small": small}


def _fsspec_ops(url: str) -> dict:
    import fsspec

    if url.startswith("s3://"):
        fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})
    else:
        fs = fsspec.filesystem("http")

    def whole(name: str) -> int:
        total = 0
        with fs.open(f"{url}/{name}", "rb", block_size=CHUNK) as f:
            while chunk := f.read(CHUNK):
                total += len(chunk)
        return total

    def ranged(name: str, start: int) -> int:
        return len(fs.cat_file(f"{url}/{name}", start=start, end=start + RANGE))

    def small(name: str) -> int:
        return len(fs.cat_file(f"{url}/{name}"))

    return {"whole": whole, "range": ranged, "small": small}


def _round(ops: dict, *, kind: str, threads: int, shards: list[str], shard_bytes: int, rng) -> float:
    """One round; returns MB/s (whole) or requests/s (range, small)."""
    start = time.perf_counter()
    if kind == "whole":
        with ThreadPoolExecutor(threads) as pool:
            got = list(pool.map(ops["whole"], shards[:threads]))
        assert got == [shard_bytes] * threads, got
        return threads * shard_bytes / MB / (time.perf_counter() - start)
    n = 100
    if kind == "range":
        for offset in rng.integers(0, shard_bytes - RANGE, size=n):
            assert ops["range"](shards[0], int(offset)) == RANGE
    else:
        for _ in range(n):
            ops["small"]("shard-000000.idx")
    return n / (time.perf_counter() - start)


def _cells(ops: dict, *, shards: list[str], shard_bytes: int, rounds: int) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for kind, threads in [("whole", 1), ("whole", 4), ("range", 1), ("small", 1)]:
        _round(ops, kind=kind, threads=threads, shards=shards, shard_bytes=shard_bytes, rng=rng)  # warm-up
        values = [
            _round(ops, kind=kind, threads=threads, shards=shards, shard_bytes=shard_bytes, rng=rng)
            for _ in range(rounds)
        ]
        unit = "MB/s" if kind == "whole" else "requests/s"
        out[f"{kind}-{threads}t"] = {"unit": unit, "n": rounds, "values": values, "median": statistics.median(values)}
    return out


def _folder(root: Path, *, shard_mb: int, count: int) -> list[str]:
    rng = np.random.default_rng(1)
    names = [f"shard-{i:06d}.tar" for i in range(count)]
    for name in names:
        (root / name).write_bytes(rng.integers(0, 256, size=shard_mb * MB, dtype=np.uint8).tobytes())
    (root / "shard-000000.idx").write_bytes(rng.integers(0, 256, size=20_000, dtype=np.uint8).tobytes())
    return names


def _table(results: dict) -> str:
    lines = ["| server | library | cell | median | min-max | n |", "|---|---|---|---|---|---|"]
    for server, libs in results.items():
        for lib, cells in libs.items():
            for cell, r in cells.items():
                lo, hi = min(r["values"]), max(r["values"])
                lines.append(
                    f"| {server} | {lib} | {cell} | {r['median']:,.0f} {r['unit']} | {lo:,.0f}-{hi:,.0f} | {r['n']} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file (a .md table is written beside it)")
    parser.add_argument("--shard-mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shards = _folder(root, shard_mb=args.shard_mb, count=4)
        shard_bytes = args.shard_mb * MB
        nginx = Nginx(root)
        try:
            results["nginx"] = {
                lib: _cells(make(nginx.url), shards=shards, shard_bytes=shard_bytes, rounds=args.rounds)
                for lib, make in [("obstore", _obstore_ops), ("fsspec-http", _fsspec_ops)]
            }
        finally:
            nginx.stop()
        moto = MotoS3()
        try:
            os.environ.update(moto.env)  # this process only: fake credentials for the stand-in
            moto.create_bucket("bench")
            moto.put_folder(root, "bench", "shards")
            results["moto-s3"] = {
                lib: _cells(make("s3://bench/shards"), shards=shards, shard_bytes=shard_bytes, rounds=args.rounds)
                for lib, make in [("obstore", _obstore_ops), ("fsspec-s3fs", _fsspec_ops)]
            }
        finally:
            moto.stop()
    record = {
        "hardware": f"{platform.machine()}, {os.cpu_count()} CPUs ({platform.processor() or 'unknown'})",
        "python": platform.python_version(),
        "load_average_1_5_15min": os.getloadavg(),  # other work on the machine: the rounds' spread grows with it
        "versions": {p: version(p) for p in ("obstore", "fsspec", "s3fs", "aiohttp", "moto")},
        "settings": {"shard_mb": args.shard_mb, "chunk_mb": CHUNK // MB, "range_bytes": RANGE, "rounds": args.rounds},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    table = _table(results)
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()

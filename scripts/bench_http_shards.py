"""Serve a shard folder with a real nginx on localhost and run `convnets bench data --epochs` against it.

    .venv/bin/python scripts/bench_http_shards.py runs/shards/imagenette --out results/remote-data --runs 3

For each run and setting it writes `<setting>-run<k>.json` (the bench's own JSON) and prints its table:
- `whole-cache`: the default cache (room for the split), global shuffle: the first epoch fetches over
  HTTP, the second reads the cache; both against the local folder's same epochs.
- `quarter-cache-block`: a cache of 25% of the split's bytes, block shuffle (window 4 shards): bytes
  fetched per epoch against the split.
nginx (Debian's package; `make nginx` installs it) is started by the tests' own helper on a free port.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.servers import Nginx  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shards", type=Path, help="a folder of splits written by `convnets shards` (train/ is read)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    shards = args.shards.resolve()
    split_bytes = sum(s["num_bytes"] for s in json.loads((shards / "train" / "manifest.json").read_text())["shards"])
    settings = {
        "whole-cache": [],
        "quarter-cache-block": [
            "--cache-limit-gb",
            f"{split_bytes / 4 / 1e9:.6f}",
            "--shuffle",
            "block",
            "--shuffle-window",
            "4",
        ],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    server = Nginx(shards.parent)
    try:
        for run in range(1, args.runs + 1):
            for name, extra in settings.items():
                out = args.out / f"{name}-run{run}.json"
                cmd = [
                    sys.executable,
                    "-m",
                    "convnets.cli",
                    "bench",
                    "data",
                    "--shards",
                    f"{server.url}/{shards.name}",
                    "--baseline",
                    str(shards),
                    "--epochs",
                    str(args.epochs),
                    *extra,
                    "--json",
                    str(out),
                ]
                print(f"== {name}, run {run}", flush=True)
                subprocess.run(cmd, check=True, cwd=REPO)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

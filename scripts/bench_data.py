"""The data-path table of docs/benchmarks.md: `convnets bench data` for every row below on each shard folder, the
whole list `--reps` times in turn (so a burst on a shared machine hits one run of a row, not all),
all in one process (no interpreter start per run), then the median of each row.

    python scripts/bench_data.py OUT_DIR SHARDS_DIR [SHARDS_DIR ...] [--reps 3] [--seconds 10]

Writes OUT_DIR/rep<i>/<kind>-<row>.json (kind: the shard folder's name) for every run, and
OUT_DIR/<kind>-<row>.json: the run with the median images/s (median batch) of its row, plus every
run's rate under "runs". Each run: 2 threads (DALI threads; torch: 2 worker processes), batch 64.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from convnets.platform.bench.data import add_data_arguments, bench_data, config_from_args, format_data_table

ROWS: dict[str, list[str]] = {
    "feed": ["--backend", "feed"],
    "decode": ["--backend", "decode"],
    "decode-crop": ["--backend", "decode-crop"],
    "dali-inception": ["--backend", "dali", "--preset", "inception"],
    "dali-inception-uint8": ["--backend", "dali", "--preset", "inception", "--uint8"],
    "dali-inception-jitter": ["--backend", "dali", "--preset", "inception", "--jitter", "0.4"],
    "dali-inception-jitter-uint8": ["--backend", "dali", "--preset", "inception", "--jitter", "0.4", "--uint8"],
    "dali-inception-jitter-bc-uint8": [
        "--backend",
        "dali",
        "--preset",
        "inception",
        "--jitter",
        "0.4",
        "0.4",
        "0",
        "--uint8",
    ],
    "dali-alexnet": ["--backend", "dali", "--preset", "alexnet"],
    "dali-alexnet-uint8": ["--backend", "dali", "--preset", "alexnet", "--uint8"],
    "torch-inception": ["--backend", "torch", "--preset", "inception"],
    "torch-inception-uint8": ["--backend", "torch", "--preset", "inception", "--uint8"],
    "torch-inception-jitter": ["--backend", "torch", "--preset", "inception", "--jitter", "0.4"],
    "torch-alexnet": ["--backend", "torch", "--preset", "alexnet"],
}
RATE = "images_per_s_median_batch"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("shards", type=Path, nargs="+")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    args = p.parse_args()
    runs: dict[str, list[dict]] = {}
    for rep in range(1, args.reps + 1):
        for shards in args.shards:
            for row in args.rows:
                name = f"{shards.name}-{row}"
                result = bench_data(_config(shards, row, args.seconds))
                _write(args.out / f"rep{rep}" / f"{name}.json", result)
                runs.setdefault(name, []).append(result)
                logging.warning("rep %d %s: %.0f images/s", rep, name, result[RATE])
    medians = []
    for name, results in runs.items():
        ordered = sorted(results, key=lambda r: r[RATE])
        median = dict(ordered[(len(ordered) - 1) // 2])  # a real run: the lower middle for an even n
        median["runs"] = [{k: r[k] for k in (RATE, "images_per_s", "images_per_cpu_second")} for r in results]
        _write(args.out / f"{name}.json", median)
        medians.append(median)
    print(format_data_table(medians))


def _config(shards: Path, row: str, seconds: float):
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    flags = ["--shards", str(shards), "--threads", "2", "--batch", "64", "--seconds", str(seconds), *ROWS[row]]
    return config_from_args(parser.parse_args(flags))


def _write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""A run's W&B history read back with W&B's own reader (`wandb leet inspect --json` over each .wandb log)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def records(log: Path) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def history(run_dir: Path) -> list[list[dict]]:
    """One list of history rows per process that logged to the run (offline: one folder each), oldest first."""
    per_process = []
    for log in (Path(run_dir) / "wandb").glob("offline-run-*/run-*.wandb"):
        rows = [r["history"]["item"] for r in records(log) if r.get("type") == "history"]
        if rows:
            per_process.append(rows)
    return sorted(per_process, key=lambda rows: min(r.get("_timestamp", 0.0) for r in rows))

"""Shared fixtures: where the real shared data lives, and skips when it is absent."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(sub: str) -> Path:
    """Path to ../shared/data/<sub>; skips the test (with the reason) when it is missing."""
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real data {path} is absent (only present in the project's workspace and CI)")
    return path

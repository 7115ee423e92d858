"""Atomic file writes: a reader (or the next run after a crash) sees the old file or the whole new one.

Every write goes to "<name>.tmp" in the same folder, is fsynced, then renamed over the final name
(rename is atomic within a file system), and the folder is fsynced so the rename itself survives a
crash. A SIGKILL mid-write leaves the previous file intact and at most a ".tmp" that the next write
overwrites. Shards, indexes, manifests, checkpoints and every JSON record go through here.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

TMP_SUFFIX = ".tmp"


def fsync_dir(folder: Path) -> None:
    """The rename is only durable once the directory entry is on disk too."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Write `path` through "<name>.tmp" + fsync + rename; on any error the .tmp is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def sha256_file(path: Path, chunk_bytes: int = 8 << 20) -> str:
    """Hex sha256 of a file, read in 8 MB chunks (a shard is ~110 MB: never whole in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def write_json(path: Path, payload: Any) -> None:
    """Atomic JSON write of any JSON value (sorted keys, two-space indent, str() for the rest)."""
    atomic_write_bytes(Path(path), (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode())

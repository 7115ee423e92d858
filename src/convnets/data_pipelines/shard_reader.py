"""Random access to the samples of a shard folder: bytes by offset, labels checked up front."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from convnets.data_pipelines.shard_format import Manifest, SampleIndex, ShardError


def describe(index: SampleIndex, i: int) -> str:
    """'<shard path>: sample <key>' for error messages."""
    return f"{index.shard_paths[int(index.shard_id[i])]}: sample {index.key(i)!r}"


def check_shard_sizes(split_dir: Path, manifest: Manifest) -> None:
    """Cheap completeness check (one stat per shard): a missing or truncated shard fails here.

    Checksums are `convnets shards verify`'s job; hashing 140 GB at every start is not.
    """
    for entry in manifest.shards:
        path = Path(split_dir) / entry.name
        if not path.exists():
            raise ShardError(f"{path}: shard listed in the manifest is missing")
        size = path.stat().st_size
        if size != entry.num_bytes:
            raise ShardError(f"{path}: {size} bytes, the manifest says {entry.num_bytes} (truncated or rewritten shard)")


class ShardFiles:
    """Open shard files, read with pread: one syscall, no seek state shared between threads."""

    def __init__(self, index: SampleIndex) -> None:
        self.index = index
        self._fds: dict[int, int] = {}

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self.index.shard_paths[shard], os.O_RDONLY)
        return fd

    def _read(self, i: int, size: np.ndarray, offset: np.ndarray) -> bytes:
        want = int(size[i])
        data = os.pread(self._fd(int(self.index.shard_id[i])), want, int(offset[i]))
        if len(data) != want:
            raise ShardError(f"{describe(self.index, i)}: shard ends early (truncated)")
        return data

    def image(self, i: int) -> bytes:
        return self._read(i, self.index.img_size, self.index.img_offset)

    def label_text(self, i: int) -> bytes:
        return self._read(i, self.index.cls_size, self.index.cls_offset)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


"""Shards written straight to a remote folder (s3://, gs://): written in a local staging folder, each shard
uploaded as soon as it is finished (while the next ones are written), labels.npy next and manifest.json
LAST, so a reader never finds a manifest whose shards are not all there.

Resume: rerunning the same command finds the staging folder's finished shards (the writer skips them)
and skips every object already uploaded whose recorded sha256 (user metadata set at upload) and size
match the local file; only the shard cut off mid-upload, and those never written, are sent again.
The remote manifest is deleted before the first upload, so a folder being rewritten is never mistaken
for a finished one.
"""

from __future__ import annotations

import logging
from pathlib import Path

from convnets.data_pipelines.shards.format import LABELS, MANIFEST, Manifest, ShardEntry
from convnets.data_pipelines.storage.store import Store
from convnets.utils.files import sha256_file

log = logging.getLogger(__name__)


class UploadSink:
    """The writer's ShardSink for a remote output: staging_root/<split>/<file> goes to <store>/<split>/<file>."""

    def __init__(self, store: Store, staging_root: Path) -> None:
        self.store, self.root = store, Path(staging_root)
        self.uploaded: list[str] = []  # names sent, in order
        self.skipped: list[str] = []  # names already there with the same sha256 and size

    def _name(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _put(self, path: Path, sha256: str) -> None:
        name = self._name(path)
        if self.store.stored_sha256(name) == sha256 and self.store.size(name) == path.stat().st_size:
            self.skipped.append(name)
            return
        self.store.upload(path, name, sha256=sha256)
        self.uploaded.append(name)
        log.info("uploaded %s (%.1f MB)", self.store.url(name), path.stat().st_size / 1e6)

    def split_started(self, split_dir: Path) -> None:
        self.store.delete(self._name(Path(split_dir) / MANIFEST))

    def shard_finished(self, split_dir: Path, entry: ShardEntry) -> None:
        self._put(Path(split_dir) / entry.name, entry.sha256)
        index = Path(split_dir) / entry.index
        self._put(index, sha256_file(index))

    def split_finished(self, split_dir: Path, manifest: Manifest) -> None:
        if manifest.labels is not None:
            self._put(Path(split_dir) / LABELS, manifest.labels.sha256)
        path = Path(split_dir) / MANIFEST
        self.store.upload(path, self._name(path), sha256=sha256_file(path))  # always, and last
        self.uploaded.append(self._name(path))

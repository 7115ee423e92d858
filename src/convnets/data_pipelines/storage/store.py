"""A shard folder by its address: a local path, `https://host/prefix`, `s3://bucket/prefix`, `gs://...`.

Every reader of shards (the loaders through the node-local cache, `convnets shards verify`,
`evaluate --data`, `bench data --shards`) and the shard writer's upload go through one small
interface, `Store`: whole objects and byte ranges by name relative to the folder, sizes, and
uploads. Names are relative POSIX paths ("train/manifest.json", "train/shard-000000.tar").

Credentials are never taken as options or written anywhere: the store's library reads them from
the usual places (environment, ~/.aws, instance roles).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from convnets.data_pipelines.storage.errors import ObjectMissing, StoreError

__all__ = ["REMOTE_SCHEMES", "LocalStore", "ObjectMissing", "Store", "StoreError", "is_remote", "open_store"]

REMOTE_SCHEMES = ("http://", "https://", "s3://", "gs://")


def is_remote(address: str | os.PathLike) -> bool:
    """True for an address a local path cannot express (http(s)://, s3://, gs://)."""
    return str(address).startswith(REMOTE_SCHEMES)


class Store(Protocol):
    """A folder of objects at one address; `name` is relative to it."""

    address: str

    def url(self, name: str) -> str:
        """The full address of `name` (for messages)."""

    def size(self, name: str) -> int:
        """Bytes of `name`; StoreError (naming the URL) if it does not exist."""

    def exists(self, name: str) -> bool: ...

    def read(self, name: str) -> bytes:
        """The whole object (small files: manifests, .idx, labels.npy)."""

    def read_range(self, name: str, start: int, length: int) -> bytes:
        """`length` bytes from `start` (exactly that many, else StoreError)."""

    def stream(self, name: str, chunk_bytes: int = 8 << 20) -> Iterator[bytes]:
        """The whole object in chunks (shards: hashed and written as they arrive)."""

    def upload(self, local: Path, name: str, *, sha256: str | None = None) -> None:
        """Put a local file at `name`, visible whole or not at all; `sha256` (hex) is recorded with it."""

    def stored_sha256(self, name: str) -> str | None:
        """The sha256 recorded by upload() (a local file: computed); None when `name` is absent or has none."""

    def delete(self, name: str) -> None:
        """Remove `name`; nothing happens when it is absent."""

    def subfolders(self) -> list[str]:
        """Names of the folders directly under this one, sorted (a folder of splits: ["train", "val"])."""


class LocalStore:
    """A folder on this machine (or a shared file system): the reference the remote stores match."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.address = str(self.root)

    def _path(self, name: str) -> Path:
        return self.root / name

    def url(self, name: str) -> str:
        return str(self._path(name))

    def size(self, name: str) -> int:
        try:
            return self._path(name).stat().st_size
        except FileNotFoundError:
            raise ObjectMissing(f"{self.url(name)}: no such file") from None

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def read(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            raise ObjectMissing(f"{self.url(name)}: no such file") from None

    def read_range(self, name: str, start: int, length: int) -> bytes:
        with open(self._path(name), "rb") as f:
            data = os.pread(f.fileno(), length, start)
        if len(data) != length:
            raise StoreError(f"{self.url(name)}: {len(data)} bytes at {start}, wanted {length} (file ends early)")
        return data

    def stream(self, name: str, chunk_bytes: int = 8 << 20) -> Iterator[bytes]:
        with open(self._path(name), "rb") as f:
            while chunk := f.read(chunk_bytes):
                yield chunk

    def subfolders(self) -> list[str]:
        if not self.root.is_dir():
            raise StoreError(f"{self.root}: not a directory")
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def upload(self, local: Path, name: str, *, sha256: str | None = None) -> None:
        from convnets.utils.files import atomic_file

        self._path(name).parent.mkdir(parents=True, exist_ok=True)
        with open(local, "rb") as src, atomic_file(self._path(name)) as dst:
            shutil.copyfileobj(src, dst, 8 << 20)

    def stored_sha256(self, name: str) -> str | None:
        import hashlib

        if not self.exists(name):
            return None
        with open(self._path(name), "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)


def open_store(address: str | os.PathLike) -> Store:
    """The store for an address; a local path gives a LocalStore."""
    if not is_remote(address):
        return LocalStore(address)
    from convnets.data_pipelines.storage import remote  # obstore is an optional extra: imported on use

    address = str(address)
    if address.startswith(("http://", "https://")):
        return remote.open_http(address)
    if address.startswith("s3://"):
        return remote.open_s3(address)
    return remote.open_gcs(address)


def copy_stream(store: Store, name: str, out: BinaryIO) -> int:
    """Write `name` into `out`; returns the bytes written."""
    total = 0
    for chunk in store.stream(name):
        out.write(chunk)
        total += len(chunk)
    return total

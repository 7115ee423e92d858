"""Files inside a tar (and inside the tars inside it) located by byte offset, never unpacked.

ILSVRC2012_img_train.tar is 138 GB holding 1,000 per-class tars; unpacking it needs the space twice and an
hour. Here only the headers are read (one 512-byte read per member, seeking over the data), and each image
is later read with one pread at its offset, from any process. Member names are checked as if they were
going to be extracted, since they become sample names: no absolute paths, no "..", no links or devices.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from convnets.errors import ConvnetsInputError


class UnsafeMemberError(ConvnetsInputError):
    """A tar member that could write outside the target if extracted (or is no regular file)."""


@dataclass(frozen=True)
class TarMember:
    tar: Path  # the file on disk (the outer tar for a member of a nested tar)
    name: str  # the member's path, nested names joined with "/": "n01440764.tar/n01440764_10026.JPEG"
    offset: int  # of the member's data in `tar`, in bytes
    size: int

    @property
    def where(self) -> str:
        return f"{self.tar}/{self.name}"


class _Window(io.RawIOBase):
    """Bytes [start, start + size) of an open file as a seekable file of its own (positions relative)."""

    def __init__(self, file: io.BufferedReader, start: int, size: int) -> None:
        self._file, self._start, self._size, self._pos = file, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self._size - self._pos))
        data = os.pread(self._file.fileno(), n, self._start + self._pos) if n else b""
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


def check_member(tar: str, member: tarfile.TarInfo) -> None:
    """UnsafeMemberError (one line naming the member) for links, devices, absolute names and "..": the
    path-traversal shapes of CVE-2007-4559, refused although nothing is extracted."""
    path = PurePosixPath(member.name)
    kind = (
        "a symbolic link"
        if member.issym()
        else "a hard link"
        if member.islnk()
        else "a device or fifo"
        if member.isdev()
        else None
    )
    if kind is not None:
        raise UnsafeMemberError(f"{tar}: member {member.name!r} is {kind}; refusing it (expected regular files)")
    if path.is_absolute() or ".." in path.parts:
        raise UnsafeMemberError(
            f"{tar}: member {member.name!r} is an absolute or '..' path; refusing it (path traversal)"
        )


def list_members(path: Path, *, start: int = 0, size: int | None = None, prefix: str = "") -> list[TarMember]:
    """Regular-file members of the tar at `path` (or of the tar stored at [start, start + size) in it),
    in archive order, with absolute offsets into `path`. Directories are skipped; see check_member."""
    path = Path(path)
    where = f"{path}/{prefix}".rstrip("/")
    members = []
    try:
        with open(path, "rb") as file:
            window = _Window(file, start, os.fstat(file.fileno()).st_size - start if size is None else size)
            with tarfile.open(fileobj=window, mode="r:") as tar:
                for member in tar:
                    check_member(where, member)
                    if member.isfile():
                        members.append(TarMember(path, prefix + member.name, start + member.offset_data, member.size))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ValueError(f"{where}: not a readable tar ({type(exc).__name__}: {exc})") from None
    return members


def read_member(member: TarMember) -> bytes:
    with open(member.tar, "rb") as file:
        data = os.pread(file.fileno(), member.size, member.offset)
    if len(data) != member.size:
        raise ValueError(f"{member.where}: the tar ends {member.size - len(data)} bytes early (truncated)")
    return data

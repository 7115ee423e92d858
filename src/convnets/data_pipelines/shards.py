"""Write, index and verify webdataset shards: OUT/<split>/shard-NNNNNN.{tar,idx} + manifest.json.

Layout of one split folder:
  shard-000000.tar   members <key>.<jpg|png> then <key>.cls (label as ASCII decimal), keys "<split>_<8 digits>"
  shard-000000.idx   DALI's webdataset index, byte-identical to what DALI's `wds2idx` tool writes:
                     "v1.2 <num_samples>\\n", then per sample one line of space-separated
                     "<ext> <data offset> <size> <member name>" groups (offsets point past the 512-byte header)
  manifest.json      written LAST: a split folder without it is an incomplete write, never a dataset

Samples are shuffled across classes with the seed before sharding, so every shard holds a class mix and a
reader that takes whole shards per rank still sees every class. Every file is written to "<name>.tmp" in
the same folder, fsynced, then os.replace()d, so a crash leaves no half-written .tar/.idx/manifest.json.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from convnets.data_pipelines.errors import ConvnetsInputError
from convnets.data_pipelines.sources import Sample, Source

log = logging.getLogger(__name__)

FORMAT = "convnets-shards"
FORMAT_VERSION = 1
IDX_VERSION = "v1.2"  # wds2idx's IndexCreator.index_file_version in nvidia-dali 2.4
IMAGE_EXTS = ("jpg", "png")
TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK  # GNU tar and Python's tarfile pad archives to 10 KiB records
MANIFEST = "manifest.json"
_SPLIT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")  # no dots: webdataset cuts key/ext at the first dot


class ShardError(ConvnetsInputError):
    """A shard folder that is incomplete, corrupt or disagrees with its manifest; the message names the file."""


@dataclass(frozen=True, kw_only=True)
class ShardEntry:
    name: str  # "shard-000000.tar", relative to the split folder
    index: str  # "shard-000000.idx"
    num_samples: int
    num_bytes: int
    sha256: str


@dataclass(frozen=True, kw_only=True)
class Manifest:
    split: str
    num_samples: int
    classes: tuple[str, ...]  # names in label order: label i is classes[i]
    class_counts: tuple[int, ...]
    flip_ok: bool  # False for digits, where a mirror image is a different class
    source: str
    seed: int
    shard_size: int
    shards: tuple[ShardEntry, ...]
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> str:
        fields = asdict(self)
        fields["num_classes"] = self.num_classes
        order = ("format", "format_version", "split", "num_samples", "num_classes", "classes", "class_counts",
                 "flip_ok", "source", "seed", "shard_size", "shards")
        ordered = {k: fields[k] for k in order}
        # One line per field and per shard: readable, diffable, and short even for 1,000 classes.
        body = "".join(f" {json.dumps(k)}: {json.dumps(v)},\n" for k, v in ordered.items() if k != "shards")
        shards = ",\n".join(f"  {json.dumps(s)}" for s in ordered["shards"])
        return "{\n" + body + ' "shards": [\n' + shards + "\n ]\n}\n"


# ---------------------------------------------------------------- atomic files


def _fsync_dir(path: Path) -> None:
    # The rename is only durable once the directory entry is on disk too.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class _ShardWriter:
    """Streams one tar to "<name>.tmp", hashing as it goes and recording the .idx line per sample."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self._file = open(self.tmp, "wb")
        self._sha = hashlib.sha256()
        self._pos = 0
        self._idx_lines: list[str] = []

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._sha.update(data)
        self._pos += len(data)

    def _member(self, name: str, data: bytes) -> str:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o444  # fixed mtime: same input + seed, same bytes
        header = info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")
        self._write(header)
        offset = self._pos
        self._write(data + b"\0" * (-len(data) % TAR_BLOCK))
        return f"{name.split('.', 1)[1]} {offset} {len(data)} {name}"

    def add(self, key: str, image: bytes, ext: str, label: int) -> None:
        parts = [self._member(f"{key}.{ext}", image), self._member(f"{key}.cls", str(label).encode("ascii"))]
        self._idx_lines.append(" ".join(parts))

    def finish(self) -> ShardEntry:
        self._write(b"\0" * (2 * TAR_BLOCK))  # end-of-archive marker
        self._write(b"\0" * (-self._pos % TAR_RECORD))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        idx_path = self.path.with_suffix(".idx")
        _atomic_write_bytes(idx_path, index_text(self._idx_lines).encode("utf-8"))
        return ShardEntry(name=self.path.name, index=idx_path.name, num_samples=len(self._idx_lines),
                          num_bytes=self._pos, sha256=self._sha.hexdigest())

    def abort(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)


def index_text(lines: list[str]) -> str:
    """The .idx file body exactly as DALI's wds2idx writes it: header line, then one line per sample."""
    return f"{IDX_VERSION} {len(lines)}\n" + "".join(line + "\n" for line in lines)


# ---------------------------------------------------------------- writing


def _check_source(source: Source, splits: dict[str, list[Sample]]) -> None:
    """Everything that can be checked before a byte is written (labels need no image decode)."""
    if not source.classes:
        raise ValueError(f"{source.description}: no classes")
    for split, samples in splits.items():
        if not _SPLIT_NAME.match(split):
            raise ValueError(f"split name {split!r} must match {_SPLIT_NAME.pattern} "
                             "(no dots: a dot ends a webdataset key)")
        if not samples:
            raise ValueError(f"{source.description}: split {split!r} has no samples")
        for sample in samples:
            if not 0 <= sample.label < len(source.classes):
                raise ValueError(f"{sample.key}: label {sample.label} outside [0, {len(source.classes)})")


def _check_no_stale_splits(out_dir: Path, splits: dict[str, list[Sample]]) -> None:
    """An old split folder this source does not rewrite (say test/) would be read as part of the new dataset."""
    if not out_dir.is_dir():
        return
    for sub in sorted(out_dir.iterdir()):
        if sub.is_dir() and sub.name not in splits and ((sub / MANIFEST).exists() or any(sub.glob("shard-*"))):
            raise ValueError(f"{sub}: shards of a split this source does not write ({', '.join(splits)}); "
                             f"remove that folder or write to another directory")


def _clear_split_dir(split_dir: Path) -> None:
    """Remove the manifest FIRST (the folder is incomplete from here on), then our old shards and temp files."""
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / MANIFEST).unlink(missing_ok=True)
    for path in split_dir.iterdir():
        if re.fullmatch(r"shard-\d{6}\.(tar|idx)(\.tmp)?|manifest\.json\.tmp", path.name):
            path.unlink()


def _shuffled(n: int, *, seed: int, split: str) -> np.ndarray:
    # The split name enters the seed so equal-sized splits are not shuffled identically.
    return np.random.default_rng([seed, zlib.crc32(split.encode())]).permutation(n)


def _write_shard(path: Path, items: list[tuple[str, Sample]]) -> ShardEntry:
    writer = _ShardWriter(path)
    try:
        for key, sample in items:
            image, ext = sample.read()
            if ext not in IMAGE_EXTS:
                raise ValueError(f"{sample.key}: source produced extension {ext!r}, expected one of {IMAGE_EXTS}")
            writer.add(key, image, ext, sample.label)
        return writer.finish()
    except BaseException:
        writer.abort()
        raise


def _write_split(source: Source, split: str, samples: list[Sample], split_dir: Path, *,
                 shard_size: int, seed: int) -> Manifest:
    _clear_split_dir(split_dir)
    order = _shuffled(len(samples), seed=seed, split=split)
    entries = []
    for shard_id, start in enumerate(range(0, len(samples), shard_size)):
        items = [(f"{split}_{start + j:08d}", samples[k]) for j, k in enumerate(order[start:start + shard_size])]
        entries.append(_write_shard(split_dir / f"shard-{shard_id:06d}.tar", items))
        log.info("%s: wrote %s (%d samples)", split_dir, entries[-1].name, entries[-1].num_samples)
    counts = np.bincount([s.label for s in samples], minlength=len(source.classes))
    manifest = Manifest(split=split, num_samples=len(samples), classes=tuple(source.classes),
                        class_counts=tuple(int(c) for c in counts), flip_ok=bool(source.flip_ok),
                        source=source.description, seed=seed, shard_size=shard_size, shards=tuple(entries))
    _atomic_write_bytes(split_dir / MANIFEST, manifest.to_json().encode("utf-8"))
    return manifest


def write_shards(source: Source, out_dir: Path, *, shard_size: int = 1000, seed: int = 0) -> dict[str, Manifest]:
    """Write every split of `source` to out_dir/<split>/; returns split -> Manifest.

    shard_size 1000 gives ~110 MB shards for ImageNet-sized JPEGs (1,282 train shards), enough shards
    that 8 nodes x 8 GPUs each get ~20, and small enough to rewrite one cheaply.
    """
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size={shard_size!r} must be a positive integer")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer")
    splits = source.splits()
    _check_source(source, splits)
    out_dir = Path(out_dir)
    _check_no_stale_splits(out_dir, splits)
    return {split: _write_split(source, split, samples, out_dir / split, shard_size=shard_size, seed=seed)
            for split, samples in splits.items()}


# ---------------------------------------------------------------- reading the manifest and the .idx files


def _manifest_from_dict(raw: dict) -> Manifest:
    shards = tuple(ShardEntry(name=str(s["name"]), index=str(s["index"]), num_samples=int(s["num_samples"]),
                              num_bytes=int(s["num_bytes"]), sha256=str(s["sha256"])) for s in raw["shards"])
    return Manifest(split=str(raw["split"]), num_samples=int(raw["num_samples"]),
                    classes=tuple(str(c) for c in raw["classes"]),
                    class_counts=tuple(int(c) for c in raw["class_counts"]), flip_ok=bool(raw["flip_ok"]),
                    source=str(raw["source"]), seed=int(raw["seed"]), shard_size=int(raw["shard_size"]),
                    shards=shards, format=str(raw["format"]), format_version=int(raw["format_version"]))


def read_manifest(split_dir: Path) -> Manifest:
    """The split's manifest.json; a missing, unparsable or inconsistent one raises ShardError naming it."""
    path = Path(split_dir) / MANIFEST
    if not path.is_file():
        raise ShardError(f"{path}: missing (an incomplete or never-run write); rerun `convnets shards ...`")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("format_version") != FORMAT_VERSION:
        found = (raw.get("format"), raw.get("format_version")) if isinstance(raw, dict) else type(raw).__name__
        raise ShardError(f"{path}: format {found} is not ({FORMAT!r}, {FORMAT_VERSION}); "
                         "rewrite the shards with this version")
    try:
        manifest = _manifest_from_dict(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise ShardError(f"{path}: invalid manifest ({type(exc).__name__}: {exc})") from None
    if raw.get("num_classes") != manifest.num_classes or len(manifest.class_counts) != manifest.num_classes:
        raise ShardError(f"{path}: num_classes {raw.get('num_classes')} disagrees with {manifest.num_classes} classes "
                         f"/ {len(manifest.class_counts)} class_counts")
    if not manifest.shards:
        raise ShardError(f"{path}: lists no shards")
    if sum(s.num_samples for s in manifest.shards) != manifest.num_samples:
        raise ShardError(f"{path}: shards hold {sum(s.num_samples for s in manifest.shards)} samples, "
                         f"num_samples says {manifest.num_samples}")
    return manifest


@dataclass(frozen=True)
class IdxRecord:
    key: str
    img_ext: str
    img_offset: int
    img_size: int
    cls_offset: int
    cls_size: int


def parse_idx(path: Path) -> list[IdxRecord]:
    """Records of one .idx file in the wds2idx v1.2 format, image + cls per sample; ShardError naming the file."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ShardError(f"{path}: unreadable index ({exc})") from None
    header = lines[0].split() if lines else []
    if len(header) != 2 or header[0] != IDX_VERSION or not header[1].isdigit() or int(header[1]) != len(lines) - 1:
        raise ShardError(f"{path}: bad header {lines[0] if lines else ''!r} (expected '{IDX_VERSION} <n>' "
                         f"with n = {len(lines) - 1} sample lines)")
    return [_parse_idx_line(path, number, line) for number, line in enumerate(lines[1:], start=2)]


def _parse_idx_line(path: Path, number: int, line: str) -> IdxRecord:
    tokens = line.split(" ")
    parts = {}
    try:
        for i in range(0, len(tokens), 4):
            ext, offset, size, name = tokens[i:i + 4]
            parts[ext] = (int(offset), int(size), name.split(".", 1)[0])
        (img_ext,) = [e for e in parts if e in IMAGE_EXTS]
        cls_offset, cls_size, key = parts["cls"]
        img_offset, img_size, img_key = parts[img_ext]
    except (ValueError, KeyError) as exc:
        raise ShardError(f"{path}: line {number} is not '<img ext> <offset> <size> <name> cls <offset> <size> <name>' "
                         f"({type(exc).__name__}: {exc}): {line[:120]!r}") from None
    if img_key != key or len(parts) != 2:
        raise ShardError(f"{path}: line {number} does not pair one image with one .cls of the same key: {line[:120]!r}")
    return IdxRecord(key, img_ext, img_offset, img_size, cls_offset, cls_size)


@dataclass(frozen=True)
class SampleIndex:
    """Where every sample's bytes live, as flat arrays (a 1.28M-sample ImageNet index is ~50 MB, not GBs of objects).

    Sample i's image is os.pread(fd of shard_paths[shard_id[i]], img_size[i], img_offset[i]), encoded as
    image_exts[img_ext[i]]; its label is the ASCII integer at cls_offset[i] (cls_size[i] bytes).
    """

    shard_paths: list[Path]
    image_exts: tuple[str, ...]
    shard_id: np.ndarray  # int32
    img_offset: np.ndarray  # int64, bytes from the start of the tar
    img_size: np.ndarray  # int64
    img_ext: np.ndarray  # uint8 index into image_exts
    cls_offset: np.ndarray  # int64
    cls_size: np.ndarray  # int64
    keys: np.ndarray  # bytes ("S") keys, e.g. b"train_00000042"

    def __len__(self) -> int:
        return len(self.shard_id)

    def key(self, i: int) -> str:
        return self.keys[i].decode("ascii")


_IDX_PAD = 64  # zero bytes after an .idx body, more than any key or number is wide


def _fixed_width(body: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """Fields as a zero-padded (n, width) uint8 matrix, left-aligned; .view(f"S{width}") gives bytes strings.

    body must end in at least `width` spare zero bytes: each row is a gather of one sliding window.
    """
    rows = sliding_window_view(body, width)[starts]
    rows[np.arange(width) >= lengths[:, None]] = 0
    return rows


def _uints(body: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray | None:
    """Decimal fields as int64, vectorised digit by digit; None if any field is not 1-18 digits."""
    width = int(lengths.max())
    if width > 18 or lengths.min() < 1:
        return None
    used = np.arange(width) < lengths[:, None]
    digits = sliding_window_view(body, width)[starts] - np.uint8(ord("0"))  # wraps: below "0" becomes > 9
    if (digits[used] > 9).any():
        return None
    value = np.zeros(len(starts), dtype=np.int64)
    for column in range(width):
        value = np.where(used[:, column], value * 10 + digits[:, column], value)
    return value


def _idx_columns_fast(data: bytes) -> dict[str, np.ndarray] | None:
    """Columns of an .idx in exactly the layout this module writes, with numpy only; None for anything else,
    which parse_idx then handles. No per-sample Python: a 1.28M-sample ImageNet index is ~7x faster this way."""
    header, _, rest = data.partition(b"\n")
    version, _, count = header.partition(b" ")
    if version != IDX_VERSION.encode() or not count.isdigit() or not rest.endswith(b"\n") or int(count) == 0:
        return None
    n, body = int(count), np.frombuffer(rest + bytes(_IDX_PAD), dtype=np.uint8)  # pad: see _fixed_width
    ends = np.flatnonzero((body == ord(" ")) | (body == ord("\n")))
    if len(ends) != 8 * n:
        return None
    ends = ends.reshape(n, 8)
    if (body[ends[:, 7]] != ord("\n")).any() or (body[ends[:, :7]] == ord("\n")).any():
        return None
    starts = np.concatenate([[0], ends.ravel()[:-1] + 1]).reshape(n, 8)
    lengths = ends - starts  # fields: 0 ext, 1 offset, 2 size, 3 name, 4 "cls", 5 offset, 6 size, 7 name
    ext = _fixed_width(body, starts[:, 0], lengths[:, 0], 4).view("S4").ravel()
    cls = _fixed_width(body, starts[:, 4], lengths[:, 4], 4).view("S4").ravel()
    key_len = lengths[:, 3] - 4  # "<key>.jpg" / "<key>.png"
    if not (np.isin(ext, [e.encode() for e in IMAGE_EXTS]).all() and (cls == b"cls").all()
            and (lengths[:, 7] - 4 == key_len).all() and key_len.min() > 0):
        return None
    width = int(key_len.max())
    if width > _IDX_PAD - 4:
        return None
    keys = _fixed_width(body, starts[:, 3], key_len, width)
    suffix_img = _fixed_width(body, starts[:, 3] + key_len, np.full_like(key_len, 4), 4).view("S4").ravel()
    suffix_cls = _fixed_width(body, starts[:, 7] + key_len, np.full_like(key_len, 4), 4).view("S4").ravel()
    same_key = (keys == _fixed_width(body, starts[:, 7], key_len, width)).all()
    if not same_key or (keys == ord(".")).any() or (suffix_img != b"." + ext).any() or (suffix_cls != b".cls").any():
        return None
    numbers = [_uints(body, starts[:, i], lengths[:, i]) for i in (1, 2, 5, 6)]
    if any(column is None for column in numbers):
        return None
    return {"img_offset": numbers[0], "img_size": numbers[1], "cls_offset": numbers[2], "cls_size": numbers[3],
            "img_ext": (ext == IMAGE_EXTS[1].encode()).astype(np.uint8), "keys": keys.view(f"S{width}").ravel()}


def _idx_columns(path: Path) -> dict[str, np.ndarray]:
    """One .idx file as columns: the vectorised fast path, else parse_idx (which names a bad line)."""
    columns = _idx_columns_fast(Path(path).read_bytes())
    if columns is not None:
        return columns
    records = parse_idx(path)
    return {"img_offset": np.array([r.img_offset for r in records], np.int64),
            "img_size": np.array([r.img_size for r in records], np.int64),
            "cls_offset": np.array([r.cls_offset for r in records], np.int64),
            "cls_size": np.array([r.cls_size for r in records], np.int64),
            "img_ext": np.array([IMAGE_EXTS.index(r.img_ext) for r in records], np.uint8),
            "keys": np.array([r.key for r in records], dtype="S")}


def load_sample_index(split_dir: Path) -> SampleIndex:
    """Every sample of a split in shard order, from the manifest's .idx files (counts checked against it)."""
    split_dir = Path(split_dir)
    manifest = read_manifest(split_dir)
    per_shard = []
    for entry in manifest.shards:
        try:
            columns = _idx_columns(split_dir / entry.index)
        except (OSError, UnicodeDecodeError) as exc:
            raise ShardError(f"{split_dir / entry.index}: unreadable index ({exc})") from None
        if len(columns["keys"]) != entry.num_samples:
            raise ShardError(f"{split_dir / entry.index}: {len(columns['keys'])} samples, "
                             f"manifest says {entry.num_samples}")
        per_shard.append(columns)
    joined = {name: np.concatenate([c[name] for c in per_shard]) for name in per_shard[0]}
    shard_id = np.repeat(np.arange(len(per_shard), dtype=np.int32), [len(c["keys"]) for c in per_shard])
    return SampleIndex(shard_paths=[split_dir / e.name for e in manifest.shards], image_exts=IMAGE_EXTS,
                       shard_id=shard_id, **joined)


# ---------------------------------------------------------------- verifying


@dataclass(frozen=True)
class VerifyReport:
    split_dir: Path
    num_shards: int
    num_samples: int
    class_counts: tuple[int, ...]
    deep: bool  # True: every image was decoded too


class _HashingReader(io.RawIOBase):
    """Feeds every byte tarfile reads into sha256, so structure and hash come from one pass over the file."""

    def __init__(self, raw: io.BufferedReader) -> None:
        self._raw, self.sha = raw, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.sha.update(data)
        return data

    def drain(self) -> str:
        while self.read(1 << 20):
            pass
        return self.sha.hexdigest()


def _tar_members(tar: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, bytes]]:
    for member in tar:
        if not member.isfile():
            continue
        data = tar.extractfile(member).read()
        if len(data) != member.size:
            raise tarfile.ReadError(f"member data ends after {len(data)} of {member.size} bytes")
        yield member, data


def _check_member(shard: Path, member: tarfile.TarInfo, name: str, offset: int, size: int) -> None:
    if (member.name, member.offset_data, member.size) != (name, offset, size):
        raise ShardError(f"{shard}: member {member.name!r} (offset {member.offset_data}, {member.size} bytes) "
                         f"disagrees with {shard.with_suffix('.idx').name}: {name!r} (offset {offset}, {size} bytes)")


def _check_sample(shard: Path, record: IdxRecord, image: bytes, cls: bytes, *, num_classes: int, deep: bool) -> int:
    text = cls.decode("ascii", errors="replace")
    if not text.isdigit() or not 0 <= int(text) < num_classes:
        raise ShardError(f"{shard}: sample {record.key!r} has label {text!r} outside [0, {num_classes}) "
                         "(the manifest.json classes)")
    if deep:
        try:
            with Image.open(io.BytesIO(image)) as decoded:
                decoded.load()
                fmt = decoded.format
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
            raise ShardError(f"{shard}: image {record.key}.{record.img_ext} does not decode ({exc})") from None
        if {"jpg": "JPEG", "png": "PNG"}[record.img_ext] != fmt:
            raise ShardError(f"{shard}: image {record.key}.{record.img_ext} is actually {fmt}")
    return int(text)


def _scan_shard(shard: Path, records: list[IdxRecord], *, num_classes: int, deep: bool) -> tuple[str, list[int]]:
    """One streaming pass: (sha256, labels), checking every member against the .idx records."""
    labels: list[int] = []
    expected = f"{records[0].key}.{records[0].img_ext}" if records else "(none)"
    with open(shard, "rb") as raw:
        reader = _HashingReader(raw)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                members = _tar_members(tar)
                for record in records:
                    expected = f"{record.key}.{record.img_ext}"
                    img, image = next(members)
                    _check_member(shard, img, expected, record.img_offset, record.img_size)
                    expected = f"{record.key}.cls"
                    cls, label = next(members)
                    _check_member(shard, cls, expected, record.cls_offset, record.cls_size)
                    labels.append(_check_sample(shard, record, image, label, num_classes=num_classes, deep=deep))
                extra = next(members, None)
                if extra is not None:
                    raise ShardError(f"{shard}: extra member {extra[0].name!r} "
                                     f"after the {len(records)} indexed samples")
        except (tarfile.TarError, EOFError, StopIteration) as exc:
            why = "the archive ends early" if isinstance(exc, StopIteration) else f"{type(exc).__name__}: {exc}"
            raise ShardError(f"{shard}: truncated or corrupt at member {expected!r} "
                             f"(expected {len(records):,} samples, read {len(labels):,}; {why})") from None
        return reader.drain(), labels


def verify_shards(split_dir: Path, *, deep: bool = False) -> VerifyReport:
    """Check a split folder against its manifest; raise ShardError naming the first bad shard (and sample).

    Checks: every .tar/.idx exists; the .idx counts match the manifest; every tar member matches its .idx
    entry (name, offset, size) to the end of the archive; labels are in range; sha256 matches; class counts
    match. deep=True also decodes every image (about 2 ms per ImageNet JPEG on one core).
    """
    split_dir = Path(split_dir)
    manifest = read_manifest(split_dir)
    for entry in manifest.shards:
        for name in (entry.name, entry.index):
            if not (split_dir / name).is_file():
                raise ShardError(f"{split_dir / name}: missing (listed in {split_dir / MANIFEST})")
    counts = np.zeros(manifest.num_classes, dtype=np.int64)
    for entry in manifest.shards:
        shard = split_dir / entry.name
        records = parse_idx(split_dir / entry.index)
        if len(records) != entry.num_samples:
            raise ShardError(f"{split_dir / entry.index}: {len(records)} samples, manifest says {entry.num_samples}")
        sha, labels = _scan_shard(shard, records, num_classes=manifest.num_classes, deep=deep)
        if sha != entry.sha256:
            raise ShardError(f"{shard}: sha256 {sha[:16]}... differs from the manifest's {entry.sha256[:16]}...; "
                             f"the file changed after writing: rewrite the shards")
        counts += np.bincount(labels, minlength=manifest.num_classes)
    if tuple(int(c) for c in counts) != manifest.class_counts:
        raise ShardError(f"{split_dir / MANIFEST}: class_counts {manifest.class_counts} "
                         f"but the shards hold {tuple(int(c) for c in counts)}")
    return VerifyReport(split_dir=split_dir, num_shards=len(manifest.shards), num_samples=manifest.num_samples,
                        class_counts=manifest.class_counts, deep=deep)

"""The shard format: constants, manifest.json, the DALI .idx files, and the split's labels, read back.

Layout of one split folder (written by shard_writer, checked by shard_verify):
  shard-000000.tar   members <key>.<jpg|png> then <key>.cls (label as ASCII decimal), keys "<split>_<8 digits>"
  shard-000000.idx   DALI's webdataset index, byte-identical to what DALI's `wds2idx` tool writes:
                     "v1.2 <num_samples>\\n", then per sample one line of space-separated
                     "<ext> <data offset> <size> <member name>" groups (offsets point past the 512-byte header)
  shard-000000.done  the writer's record that this shard is finished (its plan digest, entry, labels): resume
  labels.npy         (format 2) every label of the split in shard order, int16/int32, sha256 in the manifest:
                     one 2.5 MB read per rank at start-up instead of 1.28 M preads of the .cls members
  manifest.json      written LAST: a split folder without it is an incomplete write, never a dataset

Format version 1 folders (no labels.npy) are still read: their labels come from the .cls members.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from convnets.errors import ConvnetsInputError

FORMAT = "convnets-shards"
FORMAT_VERSION = 2  # 2: labels.npy, class_names, skipped; 1 (still read): labels only in the .cls members
READABLE_VERSIONS = (1, 2)
IDX_VERSION = "v1.2"  # wds2idx's IndexCreator.index_file_version in nvidia-dali 2.4
IMAGE_EXTS = ("jpg", "png")
TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK  # GNU tar and Python's tarfile pad archives to 10 KiB records
MANIFEST = "manifest.json"
LABELS = "labels.npy"
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPLIT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")  # no dots: webdataset cuts key/ext at the first dot


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
class LabelsEntry:
    name: str  # "labels.npy", relative to the split folder
    dtype: str  # "int16" up to 32,767 classes, else "int32"
    sha256: str


@dataclass(frozen=True, kw_only=True)
class Skipped:
    path: str  # the source file (or tar member) that was not written
    reason: str


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
    class_names: tuple[str, ...] = ()  # human-readable, beside classes (e.g. ImageNet wnid -> "tench, Tinca tinca")
    labels: LabelsEntry | None = None  # None only in format-1 folders
    small_images: int = 0  # stored images whose shorter side is below SMALL_SIDE px (kept: never upscaled)
    skipped: tuple[Skipped, ...] = ()  # unreadable source files, left out of the shards
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def display_names(self) -> tuple[str, ...]:
        """What a person calls each class: the first synonym of its human-readable name ("tench" for
        n01440764's "tench, Tinca tinca"), else its id. For plots and reports; ids stay in the JSON."""
        if len(self.class_names) != len(self.classes):
            return self.classes
        return tuple(name.split(",")[0].strip() or cid for cid, name in zip(self.classes, self.class_names))

    def to_json(self) -> str:
        fields = asdict(self)
        fields["num_classes"] = self.num_classes
        order = (
            "format",
            "format_version",
            "split",
            "num_samples",
            "num_classes",
            "classes",
            "class_names",
            "class_counts",
            "flip_ok",
            "source",
            "seed",
            "shard_size",
            "labels",
            "small_images",
            "skipped",
            "shards",
        )
        ordered = {k: fields[k] for k in order}
        # One line per field, per shard and per skipped file: readable, diffable, short even for 1,000 classes.
        body = "".join(
            f" {json.dumps(k)}: {json.dumps(v)},\n" for k, v in ordered.items() if k not in ("shards", "skipped")
        )
        skipped = ",\n".join(f"  {json.dumps(s)}" for s in ordered["skipped"])
        body += ' "skipped": [' + (f"\n{skipped}\n ],\n" if skipped else "],\n")
        shards = ",\n".join(f"  {json.dumps(s)}" for s in ordered["shards"])
        return "{\n" + body + ' "shards": [\n' + shards + "\n ]\n}\n"


SMALL_SIDE = 224  # px: the usual train crop; smaller images are counted in the manifest, upscaled by the pipeline


# ---------------------------------------------------------------- reading the manifest


def _manifest_from_dict(raw: dict) -> Manifest:
    shards = tuple(
        ShardEntry(
            name=str(s["name"]),
            index=str(s["index"]),
            num_samples=int(s["num_samples"]),
            num_bytes=int(s["num_bytes"]),
            sha256=str(s["sha256"]),
        )
        for s in raw["shards"]
    )
    labels = raw.get("labels")
    return Manifest(
        split=str(raw["split"]),
        num_samples=int(raw["num_samples"]),
        classes=tuple(str(c) for c in raw["classes"]),
        class_counts=tuple(int(c) for c in raw["class_counts"]),
        flip_ok=bool(raw["flip_ok"]),
        source=str(raw["source"]),
        seed=int(raw["seed"]),
        shard_size=int(raw["shard_size"]),
        shards=shards,
        class_names=tuple(str(c) for c in raw.get("class_names", ())),
        labels=None
        if labels is None
        else LabelsEntry(name=str(labels["name"]), dtype=str(labels["dtype"]), sha256=str(labels["sha256"])),
        small_images=int(raw.get("small_images", 0)),
        skipped=tuple(Skipped(path=str(s["path"]), reason=str(s["reason"])) for s in raw.get("skipped", ())),
        format=str(raw["format"]),
        format_version=int(raw["format_version"]),
    )


def read_manifest(split_dir: Path) -> Manifest:
    """The split's manifest.json; a missing, unparsable or inconsistent one raises ShardError naming it."""
    path = Path(split_dir) / MANIFEST
    if not path.is_file():
        raise ShardError(f"{path}: missing (an incomplete or never-run write); rerun `convnets shards ...`")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ShardError(f"{path}: not valid JSON ({exc})") from None
    return parse_manifest(raw, str(path))


def parse_manifest(raw: bytes, where: str) -> Manifest:
    """A manifest.json's bytes, read from `where` (a path or URL, for messages), checked as read_manifest does."""
    path = where
    try:
        raw = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("format_version") not in READABLE_VERSIONS:
        found = (raw.get("format"), raw.get("format_version")) if isinstance(raw, dict) else type(raw).__name__
        raise ShardError(
            f"{path}: format {found} is not ({FORMAT!r}, {' or '.join(map(str, READABLE_VERSIONS))}); "
            "rewrite the shards with this version"
        )
    try:
        manifest = _manifest_from_dict(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise ShardError(f"{path}: invalid manifest ({type(exc).__name__}: {exc})") from None
    if raw.get("num_classes") != manifest.num_classes or len(manifest.class_counts) != manifest.num_classes:
        raise ShardError(
            f"{path}: num_classes {raw.get('num_classes')} disagrees with {manifest.num_classes} classes "
            f"/ {len(manifest.class_counts)} class_counts"
        )
    if manifest.format_version >= 2 and manifest.labels is None:
        raise ShardError(f"{path}: format {manifest.format_version} but no labels entry; rewrite the shards")
    if not manifest.shards:
        raise ShardError(f"{path}: lists no shards")
    if sum(s.num_samples for s in manifest.shards) != manifest.num_samples:
        raise ShardError(
            f"{path}: shards hold {sum(s.num_samples for s in manifest.shards)} samples, "
            f"num_samples says {manifest.num_samples}"
        )
    return manifest


def check_same_classes(split_dir: Path, manifest: Manifest, reference_dir: Path, reference: Manifest) -> None:
    """Label i must mean the same class in every split (shards of two datasets side by side would not)."""
    if manifest.classes == reference.classes:
        return
    if manifest.num_classes != reference.num_classes:
        raise ShardError(
            f"{split_dir}: {manifest.num_classes} classes, but {reference_dir} has {reference.num_classes}"
        )
    i = next(i for i, (a, b) in enumerate(zip(manifest.classes, reference.classes)) if a != b)
    raise ShardError(
        f"{split_dir}: label {i} is class {manifest.classes[i]!r}, but in {reference_dir} it is "
        f"{reference.classes[i]!r}: the splits were written from different class lists "
        "(rewrite them together with `convnets shards ...`)"
    )


# ---------------------------------------------------------------- the .idx files


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
        raise ShardError(
            f"{path}: bad header {lines[0] if lines else ''!r} (expected '{IDX_VERSION} <n>' "
            f"with n = {len(lines) - 1} sample lines)"
        )
    return [_parse_idx_line(path, number, line) for number, line in enumerate(lines[1:], start=2)]


def _parse_idx_line(path: Path, number: int, line: str) -> IdxRecord:
    tokens = line.split(" ")
    parts = {}
    try:
        for i in range(0, len(tokens), 4):
            ext, offset, size, name = tokens[i : i + 4]
            parts[ext] = (int(offset), int(size), name.split(".", 1)[0])
        (img_ext,) = [e for e in parts if e in IMAGE_EXTS]
        cls_offset, cls_size, key = parts["cls"]
        img_offset, img_size, img_key = parts[img_ext]
    except (ValueError, KeyError) as exc:
        raise ShardError(
            f"{path}: line {number} is not '<img ext> <offset> <size> <name> cls <offset> <size> <name>' "
            f"({type(exc).__name__}: {exc}): {line[:120]!r}"
        ) from None
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
    split_dir: Path | None = None  # where labels.npy lives
    labels: LabelsEntry | None = None  # the manifest's labels.npy entry; None: format 1, labels only in .cls

    def __len__(self) -> int:
        return len(self.shard_id)

    def key(self, i: int) -> str:
        return self.keys[i].decode("ascii")

    def where(self, i: int) -> str:
        """'<shard path>: sample <key>' for error messages."""
        return f"{self.shard_paths[int(self.shard_id[i])]}: sample {self.key(i)!r}"


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
    if not (
        np.isin(ext, [e.encode() for e in IMAGE_EXTS]).all()
        and (cls == b"cls").all()
        and (lengths[:, 7] - 4 == key_len).all()
        and key_len.min() > 0
    ):
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
    return {
        "img_offset": numbers[0],
        "img_size": numbers[1],
        "cls_offset": numbers[2],
        "cls_size": numbers[3],
        "img_ext": (ext == IMAGE_EXTS[1].encode()).astype(np.uint8),
        "keys": keys.view(f"S{width}").ravel(),
    }


def _idx_columns(path: Path) -> dict[str, np.ndarray]:
    """One .idx file as columns: the vectorised fast path, else parse_idx (which names a bad line)."""
    columns = _idx_columns_fast(Path(path).read_bytes())
    if columns is not None:
        return columns
    records = parse_idx(path)
    return {
        "img_offset": np.array([r.img_offset for r in records], np.int64),
        "img_size": np.array([r.img_size for r in records], np.int64),
        "cls_offset": np.array([r.cls_offset for r in records], np.int64),
        "cls_size": np.array([r.cls_size for r in records], np.int64),
        "img_ext": np.array([IMAGE_EXTS.index(r.img_ext) for r in records], np.uint8),
        "keys": np.array([r.key for r in records], dtype="S"),
    }


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
            raise ShardError(
                f"{split_dir / entry.index}: {len(columns['keys'])} samples, manifest says {entry.num_samples}"
            )
        per_shard.append(columns)
    joined = {name: np.concatenate([c[name] for c in per_shard]) for name in per_shard[0]}
    shard_id = np.repeat(np.arange(len(per_shard), dtype=np.int32), [len(c["keys"]) for c in per_shard])
    return SampleIndex(
        shard_paths=[split_dir / e.name for e in manifest.shards],
        image_exts=IMAGE_EXTS,
        shard_id=shard_id,
        split_dir=split_dir,
        labels=manifest.labels,
        **joined,
    )


# ---------------------------------------------------------------- labels


def labels_dtype(num_classes: int) -> np.dtype:
    """int16 (2 bytes a sample, 2.5 MB for ImageNet train) unless the classes need more."""
    return np.dtype(np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32)


def load_labels_file(split_dir: Path, entry: LabelsEntry, *, num_samples: int) -> np.ndarray:
    """labels.npy as listed in the manifest: sha256, dtype and length checked; ShardError naming the file."""
    path = Path(split_dir) / entry.name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ShardError(f"{path}: unreadable ({exc}); rewrite the shards") from None
    sha = hashlib.sha256(data).hexdigest()
    if sha != entry.sha256:
        raise ShardError(
            f"{path}: sha256 {sha[:16]}... differs from the manifest's {entry.sha256[:16]}...; "
            "the file changed after writing: rewrite the shards"
        )
    try:
        labels = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ShardError(f"{path}: not a .npy array ({exc})") from None
    if labels.dtype != np.dtype(entry.dtype) or labels.shape != (num_samples,):
        raise ShardError(f"{path}: {labels.dtype} {labels.shape}, the manifest says {entry.dtype} ({num_samples},)")
    return labels


def parse_label(text: bytes) -> int | None:
    """A .cls member's label (ASCII decimal digits, as the writer stores it); None if it is not one."""
    return int(text) if text.isdigit() else None


def _labels_from_cls(index: SampleIndex) -> np.ndarray:
    """Format 1: one pread per .cls member (1.28 M small reads for ImageNet: why format 2 has labels.npy)."""
    labels = np.empty(len(index), dtype=np.int64)
    fds = [os.open(p, os.O_RDONLY) for p in index.shard_paths]
    try:
        for i in range(len(index)):
            want = int(index.cls_size[i])
            text = os.pread(fds[int(index.shard_id[i])], want, int(index.cls_offset[i]))
            if len(text) != want:
                raise ShardError(f"{index.where(i)}: shard ends early (truncated)")
            label = parse_label(text)
            if label is None:
                raise ShardError(f"{index.where(i)}: label {text!r} is not an integer")
            labels[i] = label
    finally:
        for fd in fds:
            os.close(fd)
    return labels


def read_labels(index: SampleIndex | Path, *, num_classes: int) -> np.ndarray:
    """Every label of the split (int64) in SampleIndex order, each checked to lie in [0, num_classes).

    Format 2 reads the one labels.npy (its sha256 checked); format 1 preads every .cls member.
    A bad label raises ShardError naming its shard and sample key.
    """
    if not isinstance(index, SampleIndex):
        index = load_sample_index(Path(index))
    if index.labels is not None and index.split_dir is not None:
        labels = load_labels_file(index.split_dir, index.labels, num_samples=len(index)).astype(np.int64)
    else:
        labels = _labels_from_cls(index)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        i = int(bad[0])
        raise ShardError(
            f"{index.where(i)}: label {labels[i]} outside the {num_classes} classes "
            f"[0, {num_classes - 1}] ({len(bad)} such labels)"
        )
    return labels

"""`convnets shards verify`: check a split folder against its manifest, and optionally decode every image.

The fast path reads each shard once as a stream (tarfile + sha256, no image decoding, no PIL). --deep also
decodes every image with DALI's CPU decoder, the decoder training uses, in parallel over all cores.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convnets.data_pipelines.shards.format import (
    JPEG_MAGIC,
    MANIFEST,
    PNG_MAGIC,
    IdxRecord,
    Manifest,
    ShardError,
    parse_idx_text,
    parse_label,
    parse_labels_file,
    parse_manifest,
)
from convnets.data_pipelines.storage.store import Store, open_store

_MAGIC = {"jpg": JPEG_MAGIC, "png": PNG_MAGIC}


@dataclass(frozen=True)
class VerifyReport:
    split_dir: Path | str  # a local folder, or the URL of a remote one
    num_shards: int
    num_samples: int
    class_counts: tuple[int, ...]
    deep: bool  # True: every image was decoded too


class _HashingReader(io.RawIOBase):
    """Feeds every byte tarfile reads into sha256, so structure and hash come from one pass over the shard,
    read as a stream of chunks from its store (a local file or a remote object, resumed if cut)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._chunk, self._pos, self.sha = chunks, b"", 0, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        """At most `size` bytes, from the current chunk only (callers loop; slicing across chunks would copy
        each 1 MB chunk once per 10 kB tar record)."""
        if size < 0:
            data = self._chunk[self._pos :] + b"".join(self._chunks)
            self._chunk, self._pos = b"", 0
        else:
            if self._pos >= len(self._chunk):
                self._chunk, self._pos = next(self._chunks, b""), 0
            data = self._chunk[self._pos : self._pos + size]
            self._pos += len(data)
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


def _check_member(shard: str, member: tarfile.TarInfo, name: str, offset: int, size: int) -> None:
    if (member.name, member.offset_data, member.size) != (name, offset, size):
        raise ShardError(
            f"{shard}: member {member.name!r} (offset {member.offset_data}, {member.size} bytes) "
            f"disagrees with {Path(shard).with_suffix('.idx').name}: {name!r} (offset {offset}, {size} bytes)"
        )


def _check_label(shard: Path, record: IdxRecord, cls: bytes, *, num_classes: int) -> int:
    label = parse_label(cls)
    if label is None or not 0 <= label < num_classes:
        raise ShardError(
            f"{shard}: sample {record.key!r} has label {cls.decode('ascii', errors='replace')!r} "
            f"outside [0, {num_classes}) (the manifest.json classes)"
        )
    return label


class DeepDecoder:
    """Decodes images in batches with DALI's CPU decoder (fn.decoders.image, as in training), num_threads = cores.

    DALI reports a bad image for the whole batch and the pipeline is then unusable, so a failing batch
    is decoded again one image at a time in fresh pipelines to name the culprit's shard and key.
    """

    def __init__(self, *, num_threads: int | None = None) -> None:
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            raise ShardError(
                "verify --deep decodes with DALI, the decoder training uses, but nvidia-dali is not "
                "installed; install it or verify without --deep"
            ) from None
        self.num_threads = num_threads or len(os.sched_getaffinity(0))
        self.batch_size = max(64, 8 * self.num_threads)  # enough images per run() to keep every thread busy
        self.pending: list[tuple[Path, str, bytes]] = []
        self._pipe = None

    def _build(self, batch_size: int):
        from nvidia.dali import fn, types
        from nvidia.dali.pipeline import Pipeline

        pipe = Pipeline(
            batch_size=batch_size,
            num_threads=self.num_threads,
            device_id=None,
            prefetch_queue_depth=1,
            exec_async=False,
            exec_pipelined=False,
        )
        with pipe:
            raw = fn.external_source(name="raw", dtype=types.UINT8, ndim=1)
            pipe.set_outputs(fn.decoders.image(raw, device="cpu", output_type=types.RGB))
        pipe.build()
        return pipe

    def _run(self, pipe, images: list[bytes]) -> None:
        pipe.feed_input("raw", [np.frombuffer(image, dtype=np.uint8) for image in images])
        pipe.run()

    def add(self, shard: Path, name: str, image: bytes) -> None:
        self.pending.append((shard, name, image))
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        if not batch:
            return
        try:
            self._pipe = self._pipe or self._build(self.batch_size)
            self._run(self._pipe, [image for *_, image in batch])
        except RuntimeError:
            self._pipe = None  # "Current pipeline object is no longer valid"
            self._name_culprit(batch)

    def first_refused(self, items: Iterable[tuple[Path, str, bytes]]) -> None:
        """Decode each image alone, all in ONE pipeline built up front; ShardError for the first refused. No
        pipeline is built after a failure in this process (after one, DALI 2.4.0 at times segfaults)."""
        pipe = self._build(1)
        for shard, name, image in items:
            try:
                self._run(pipe, [image])
            except RuntimeError as exc:
                raise ShardError(f"{shard}: image {name} does not decode with DALI ({_dali_reason(exc)})") from None

    def _name_culprit(self, batch: list[tuple[Path, str, bytes]]) -> None:
        for shard, name, image in batch:
            try:
                self._run(self._build(1), [image])
            except RuntimeError as exc:
                raise ShardError(f"{shard}: image {name} does not decode with DALI ({_dali_reason(exc)})") from None
        raise ShardError(
            f"{batch[0][0]}: a batch of {len(batch)} images from {batch[0][1]} on failed to decode "
            "with DALI, but each decodes alone"
        )


def _dali_reason(exc: RuntimeError) -> str:
    """The decoder's own words from DALI's multi-line error (the line after 'encountered:')."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    after = lines[lines.index("encountered:") + 1 :] if "encountered:" in lines else lines
    useful = [line for line in after if "no longer valid" not in line]
    return (useful[0] if useful else lines[-1] if lines else type(exc).__name__).rstrip(" :")


def _scan_shard(
    store: Store, name: str, records: list[IdxRecord], *, num_classes: int, decoder: DeepDecoder | None
) -> tuple[str, list[int]]:
    """One streaming pass: (sha256, labels), checking every member against the .idx records."""
    labels: list[int] = []
    shard = store.url(name)
    expected = f"{records[0].key}.{records[0].img_ext}" if records else "(none)"
    chunks = store.stream(name, chunk_bytes=1 << 20)
    try:
        reader = _HashingReader(chunks)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                members = _tar_members(tar)
                for record in records:
                    expected = f"{record.key}.{record.img_ext}"
                    img, image = next(members)
                    _check_member(shard, img, expected, record.img_offset, record.img_size)
                    if decoder is not None:
                        if not image.startswith(_MAGIC[record.img_ext]):
                            raise ShardError(f"{shard}: image {expected} is not a {record.img_ext} (magic bytes)")
                        decoder.add(shard, expected, image)
                    expected = f"{record.key}.cls"
                    cls, label = next(members)
                    _check_member(shard, cls, expected, record.cls_offset, record.cls_size)
                    labels.append(_check_label(shard, record, label, num_classes=num_classes))
                extra = next(members, None)
                if extra is not None:
                    raise ShardError(
                        f"{shard}: extra member {extra[0].name!r} after the {len(records)} indexed samples"
                    )
        except (tarfile.TarError, EOFError, StopIteration) as exc:
            why = "the archive ends early" if isinstance(exc, StopIteration) else f"{type(exc).__name__}: {exc}"
            raise ShardError(
                f"{shard}: truncated or corrupt at member {expected!r} "
                f"(expected {len(records):,} samples, read {len(labels):,}; {why})"
            ) from None
        return reader.drain(), labels
    finally:
        chunks.close()  # a remote stream stops downloading the rest of a shard that failed early


def _check_labels_file(store: Store, manifest: Manifest, labels: list[int], keys: list[str]) -> None:
    """labels.npy (format 2) must hold exactly the .cls labels, in shard order."""
    if manifest.labels is None:
        return
    where = store.url(manifest.labels.name)
    stored = parse_labels_file(
        store.read(manifest.labels.name), manifest.labels, num_samples=manifest.num_samples, where=where
    )
    differ = np.flatnonzero(stored.astype(np.int64) != np.asarray(labels, dtype=np.int64))
    if len(differ):
        i = int(differ[0])
        raise ShardError(
            f"{where}: sample {keys[i]!r} has label {int(stored[i])}, "
            f"its .cls member says {labels[i]} ({len(differ)} such samples)"
        )


def read_store_manifest(store: Store) -> Manifest:
    """The split's manifest.json read through its store (a local folder or a remote one)."""
    if not store.exists(MANIFEST):
        raise ShardError(
            f"{store.url(MANIFEST)}: missing (an incomplete or never-run write); rerun `convnets shards ...`"
        )
    return parse_manifest(store.read(MANIFEST), where=store.url(MANIFEST))


def verify_shards(split_dir: Path | str, *, deep: bool = False) -> VerifyReport:
    """Check a split folder (a path or an http(s)://, s3://, gs:// URL) against its manifest; raise ShardError
    naming the first bad shard (and sample).

    Checks: every .tar/.idx exists; the .idx counts match the manifest; every tar member matches its .idx
    entry (name, offset, size) to the end of the archive; labels are in range and agree with labels.npy;
    sha256 matches; class counts match. deep=True also decodes every image with DALI (CPU, all cores).
    A remote shard is streamed once (never stored) and hashed as it arrives.
    """
    store = open_store(split_dir)
    manifest = read_store_manifest(store)
    for entry in manifest.shards:
        for name in (entry.name, entry.index):
            if not store.exists(name):
                raise ShardError(f"{store.url(name)}: missing (listed in {store.url(MANIFEST)})")
    decoder = DeepDecoder() if deep else None
    labels: list[int] = []
    keys: list[str] = []
    for entry in manifest.shards:
        shard, index = store.url(entry.name), store.url(entry.index)
        try:
            text = store.read(entry.index).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ShardError(f"{index}: unreadable index ({exc})") from None
        records = parse_idx_text(text, where=index)
        if len(records) != entry.num_samples:
            raise ShardError(f"{index}: {len(records)} samples, manifest says {entry.num_samples}")
        sha, shard_labels = _scan_shard(store, entry.name, records, num_classes=manifest.num_classes, decoder=decoder)
        if sha != entry.sha256:
            raise ShardError(
                f"{shard}: sha256 {sha[:16]}... differs from the manifest's {entry.sha256[:16]}...; "
                f"the file changed after writing: rewrite the shards"
            )
        labels += shard_labels
        keys += [r.key for r in records]
    if decoder is not None:
        decoder.flush()
    counts = tuple(int(c) for c in np.bincount(np.asarray(labels, dtype=np.int64), minlength=manifest.num_classes))
    if counts != manifest.class_counts:
        raise ShardError(f"{store.url(MANIFEST)}: class_counts {manifest.class_counts} but the shards hold {counts}")
    _check_labels_file(store, manifest, labels, keys)
    return VerifyReport(
        split_dir=Path(split_dir) if isinstance(split_dir, Path) else split_dir,
        num_shards=len(manifest.shards),
        num_samples=manifest.num_samples,
        class_counts=manifest.class_counts,
        deep=deep,
    )

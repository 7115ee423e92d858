"""Write a Source's splits as shards (format in shard_format): planned, parallel, resumable, deterministic.

The plan: each split's samples are shuffled across classes with the seed (so every shard holds a class
mix and a reader that takes whole shards per rank still sees every class), then cut into shards of
`shard_size`. Shard k's bytes depend only on the plan, never on the worker that wrote it, so any
`workers` count gives the same files.

Resume: a shard is finished when its .tar, .idx and then its .done record (plan digest, entry, labels)
are all in place; a rerun of the same plan leaves such shards untouched and writes the others. The
split's labels.npy and manifest.json are written last; the manifest is removed first, so a folder
without one is never mistaken for a dataset. Every file goes through atomic_file: "<name>.tmp" in the
same folder, fsynced, then os.replace()d, so a crash (even SIGKILL) leaves no half-written file.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import re
import tarfile
import time
import zlib
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
from PIL import Image

from convnets.data_pipelines.shards.format import (
    FORMAT_VERSION,
    IDX_VERSION,
    IMAGE_EXTS,
    LABELS,
    MANIFEST,
    SMALL_SIDE,
    SPLIT_NAME,
    TAR_BLOCK,
    TAR_RECORD,
    LabelsEntry,
    Manifest,
    ShardEntry,
    Skipped,
    labels_dtype,
)
from convnets.data_pipelines.shards.sources import Sample, Source, UnreadableImage
from convnets.utils.files import atomic_file, atomic_write_bytes

log = logging.getLogger(__name__)

_SHARD_FILE = re.compile(r"shard-(\d{6})\.(tar|idx|done)")

# ---------------------------------------------------------------- one tar


class _TarStream:
    """Streams tar members into an open file, hashing as it goes and recording the .idx line per sample."""

    def __init__(self, file: BinaryIO) -> None:
        self._file, self._sha, self._pos = file, hashlib.sha256(), 0
        self.idx_lines: list[str] = []

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._sha.update(data)
        self._pos += len(data)

    def _member(self, name: str, data: bytes) -> str:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o444  # fixed mtime: same input + seed, same bytes
        self._write(info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict"))
        offset = self._pos
        self._write(data + b"\0" * (-len(data) % TAR_BLOCK))
        return f"{name.split('.', 1)[1]} {offset} {len(data)} {name}"

    def add(self, key: str, image: bytes, ext: str, label: int) -> None:
        parts = [self._member(f"{key}.{ext}", image), self._member(f"{key}.cls", str(label).encode("ascii"))]
        self.idx_lines.append(" ".join(parts))

    def finish(self) -> tuple[int, str]:
        """(bytes written, sha256) after the end-of-archive marker and record padding."""
        self._write(b"\0" * (2 * TAR_BLOCK))
        self._write(b"\0" * (-self._pos % TAR_RECORD))
        return self._pos, self._sha.hexdigest()


def index_text(lines: list[str]) -> str:
    """The .idx file body exactly as DALI's wds2idx writes it: header line, then one line per sample."""
    return f"{IDX_VERSION} {len(lines)}\n" + "".join(line + "\n" for line in lines)


# ---------------------------------------------------------------- shard jobs


@dataclass(frozen=True)
class _ShardJob:
    path: Path  # .../shard-000042.tar
    items: list[tuple[str, Sample]]  # (key in the shard, source sample)
    digest: str  # of everything that decides the shard's bytes
    skip_unreadable: bool  # UnreadableImage: skip and report (True) or fail the write (False)


@dataclass(frozen=True)
class _ShardResult:
    entry: ShardEntry
    labels: list[int]
    skipped: list[Skipped]
    small_images: int

    def to_json(self, digest: str) -> str:
        return json.dumps(
            {
                "plan": digest,
                "entry": asdict(self.entry),
                "labels": self.labels,
                "skipped": [asdict(s) for s in self.skipped],
                "small_images": self.small_images,
            }
        )


def _done_path(tar: Path) -> Path:
    return tar.with_suffix(".done")


def _finished(job: _ShardJob) -> _ShardResult | None:
    """The shard's result if a previous run finished this very plan (done record, .idx, .tar of the right size)."""
    try:
        raw = json.loads(_done_path(job.path).read_text(encoding="utf-8"))
        if raw["plan"] != job.digest:
            return None
        entry = ShardEntry(**raw["entry"])
        if job.path.stat().st_size != entry.num_bytes or not job.path.with_suffix(".idx").is_file():
            return None
        return _ShardResult(
            entry=entry,
            labels=[int(x) for x in raw["labels"]],
            skipped=[Skipped(**s) for s in raw["skipped"]],
            small_images=int(raw["small_images"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _read_sample(job: _ShardJob, sample: Sample, skipped: list[Skipped]) -> tuple[bytes, str] | None:
    try:
        image, ext = sample.read()
    except UnreadableImage as exc:
        if not job.skip_unreadable:
            raise
        log.warning("skipped %s", exc)  # exc names the file and the reason
        skipped.append(Skipped(path=sample.key, reason=str(exc).removeprefix(f"{sample.key}: ")))
        return None
    if ext not in IMAGE_EXTS:
        raise ValueError(f"{sample.key}: source produced extension {ext!r}, expected one of {IMAGE_EXTS}")
    return image, ext


def _shorter_side(image: bytes) -> int | None:
    """From the header only (microseconds); None where even the header does not parse (not this module's
    check: sources decide what is readable, `verify --deep` decodes)."""
    try:
        with Image.open(io.BytesIO(image)) as header:
            return min(header.size)
    except (OSError, SyntaxError, ValueError, EOFError):
        return None


def _write_shard(job: _ShardJob) -> _ShardResult:
    """Write one shard: .tar, then .idx, then the .done record, each atomically."""
    _done_path(job.path).unlink(missing_ok=True)  # from here until the end the shard counts as unfinished
    labels, skipped, small = [], [], 0
    with atomic_file(job.path) as f:
        stream = _TarStream(f)
        for key, sample in job.items:
            read = _read_sample(job, sample, skipped)
            if read is None:
                continue
            stream.add(key, read[0], read[1], sample.label)
            labels.append(sample.label)
            side = _shorter_side(read[0])
            small += side is not None and side < SMALL_SIDE
        num_bytes, sha = stream.finish()
    idx = job.path.with_suffix(".idx")
    atomic_write_bytes(idx, index_text(stream.idx_lines).encode("utf-8"))
    entry = ShardEntry(name=job.path.name, index=idx.name, num_samples=len(labels), num_bytes=num_bytes, sha256=sha)
    result = _ShardResult(entry=entry, labels=labels, skipped=skipped, small_images=small)
    atomic_write_bytes(_done_path(job.path), result.to_json(job.digest).encode("utf-8"))
    return result


_WORKER_JOBS: list[_ShardJob] = []  # set in each forked worker by _init_worker; empty in the parent


def _init_worker(jobs: list[_ShardJob]) -> None:
    # Forked workers inherit the jobs (and the samples' read callables, lambdas included) without pickling.
    global _WORKER_JOBS
    _WORKER_JOBS = jobs


def _run_job(i: int) -> _ShardResult:
    return _write_shard(_WORKER_JOBS[i])


class _Progress:
    """A tqdm bar on a terminal; otherwise one log line per shard (Slurm logs, tests)."""

    def __init__(self, *, total: int, desc: str) -> None:
        from tqdm import tqdm  # a Lightning dependency

        self.bar = tqdm(total=total, desc=desc, unit="img", disable=None, smoothing=0.1)
        self.desc, self.start, self.done = desc, time.perf_counter(), 0

    def update(self, result: _ShardResult, *, skipped_total: int) -> None:
        self.done += len(result.labels) + len(result.skipped)
        self.bar.update(len(result.labels) + len(result.skipped))
        if self.bar.disable:
            rate = self.done / max(time.perf_counter() - self.start, 1e-9)
            log.info(
                "%s: %s done (%d/%d images, %.0f images/s, %d skipped so far)",
                self.desc,
                result.entry.name,
                self.done,
                self.bar.total,
                rate,
                skipped_total,
            )

    def close(self) -> None:
        self.bar.close()


def _run_jobs(
    jobs: list[_ShardJob], *, workers: int, progress: _Progress, on_done: Callable[[ShardEntry], None] | None = None
) -> dict[int, _ShardResult]:
    """Write the jobs, in this process (workers 1) or a fork pool; on any error no new shard is started.
    on_done(entry) runs in this process as each shard finishes (an upload), while the pool writes on."""
    results: dict[int, _ShardResult] = {}

    def record(i: int, result: _ShardResult) -> None:
        results[i] = result
        progress.update(result, skipped_total=sum(len(r.skipped) for r in results.values()))
        if on_done is not None:
            on_done(result.entry)

    if workers <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            record(i, _write_shard(job))
        return results
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)),
        mp_context=multiprocessing.get_context("fork"),
        initializer=_init_worker,
        initargs=(jobs,),
    )
    try:
        pending = {pool.submit(_run_job, i): i for i in range(len(jobs))}
        while pending:
            done, _ = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                record(pending.pop(future), future.result())  # raises the first worker error
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # shards already running finish; none start
    return results


# ---------------------------------------------------------------- planning a split


def _check_source(source: Source, splits: dict[str, list[Sample]]) -> None:
    """Everything that can be checked before a byte is written (labels need no image decode)."""
    if not source.classes:
        raise ValueError(f"{source.description}: no classes")
    for split, samples in splits.items():
        if not SPLIT_NAME.match(split):
            raise ValueError(
                f"split name {split!r} must match {SPLIT_NAME.pattern} (no dots: a dot ends a webdataset key)"
            )
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
            raise ValueError(
                f"{sub}: shards of a split this source does not write ({', '.join(splits)}); "
                f"remove that folder or write to another directory"
            )


def _shuffled(n: int, *, seed: int, split: str) -> np.ndarray:
    # The split name enters the seed so equal-sized splits are not shuffled identically.
    return np.random.default_rng([seed, zlib.crc32(split.encode())]).permutation(n)


def _plan(
    source: Source, split: str, samples: list[Sample], split_dir: Path, *, shard_size: int, seed: int
) -> list[_ShardJob]:
    order = _shuffled(len(samples), seed=seed, split=split)
    skip = bool(getattr(source, "skip_unreadable", False))
    jobs = []
    for shard_id, start in enumerate(range(0, len(samples), shard_size)):
        items = [(f"{split}_{start + j:08d}", samples[k]) for j, k in enumerate(order[start : start + shard_size])]
        # The digest covers what decides the bytes: format, source settings (root, resize, quality), the items.
        plan = [FORMAT_VERSION, source.description, skip, [(key, s.key, s.label) for key, s in items]]
        digest = hashlib.sha256(json.dumps(plan).encode("utf-8")).hexdigest()
        jobs.append(
            _ShardJob(path=split_dir / f"shard-{shard_id:06d}.tar", items=items, digest=digest, skip_unreadable=skip)
        )
    return jobs


def _prepare_split_dir(split_dir: Path, jobs: list[_ShardJob]) -> dict[int, _ShardResult]:
    """Remove the manifest FIRST (the folder is incomplete from here on), then every file no finished shard
    of this plan owns; returns the finished shards to keep, by shard number."""
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / MANIFEST).unlink(missing_ok=True)
    (split_dir / LABELS).unlink(missing_ok=True)
    kept = {i: r for i, job in enumerate(jobs) if (r := _finished(job)) is not None}
    for path in split_dir.iterdir():
        match = _SHARD_FILE.fullmatch(path.name)
        if path.name.endswith(".tmp") or (match and int(match.group(1)) not in kept):
            path.unlink()
    return kept


def _write_labels(split_dir: Path, labels: np.ndarray) -> LabelsEntry:
    buf = io.BytesIO()
    np.save(buf, labels, allow_pickle=False)  # deterministic: the header holds only dtype, order and shape
    atomic_write_bytes(split_dir / LABELS, buf.getvalue())
    return LabelsEntry(name=LABELS, dtype=str(labels.dtype), sha256=hashlib.sha256(buf.getvalue()).hexdigest())


class ShardSink(Protocol):
    """Told about each split's files as they are finished (an upload to a remote folder): the manifest last."""

    def split_started(self, split_dir: Path) -> None: ...

    def shard_finished(self, split_dir: Path, entry: ShardEntry) -> None: ...

    def split_finished(self, split_dir: Path, manifest: Manifest) -> None: ...


@dataclass(frozen=True, kw_only=True)
class WriteOptions:
    shard_size: int = 1000  # samples per shard
    seed: int = 0  # of the shuffle across classes
    workers: int = 1  # processes writing shards; the bytes do not depend on it
    sink: ShardSink | None = None  # told of each finished shard (and, last, of the manifest)


def _write_split(source: Source, split: str, samples: list[Sample], split_dir: Path, options: WriteOptions) -> Manifest:
    shard_size, seed = options.shard_size, options.seed
    jobs = _plan(source, split, samples, split_dir, shard_size=shard_size, seed=seed)
    results = _prepare_split_dir(split_dir, jobs)
    if results:
        log.info("%s: resuming, %d of %d shards already written", split_dir, len(results), len(jobs))
    sink = options.sink
    on_done = None if sink is None else (lambda entry: sink.shard_finished(split_dir, entry))
    if sink is not None:
        sink.split_started(split_dir)
        for i in sorted(results):
            on_done(results[i].entry)
    todo = [i for i in range(len(jobs)) if i not in results]
    progress = _Progress(total=sum(len(jobs[i].items) for i in todo), desc=str(split_dir))
    try:
        new = _run_jobs([jobs[i] for i in todo], workers=options.workers, progress=progress, on_done=on_done)
    finally:
        progress.close()
    results.update({todo[j]: result for j, result in new.items()})
    ordered = [results[i] for i in range(len(jobs))]
    labels = np.array([y for r in ordered for y in r.labels], dtype=labels_dtype(len(source.classes)))
    if len(labels) == 0:
        raise ValueError(f"{source.description}: every sample of split {split!r} was skipped as unreadable")
    skipped = tuple(s for r in ordered for s in r.skipped)
    if skipped:
        log.warning("%s: %d unreadable files skipped (listed in %s)", split_dir, len(skipped), MANIFEST)
    manifest = Manifest(
        split=split,
        num_samples=len(labels),
        classes=tuple(source.classes),
        class_counts=tuple(int(c) for c in np.bincount(labels, minlength=len(source.classes))),
        flip_ok=bool(source.flip_ok),
        source=source.description,
        seed=seed,
        shard_size=shard_size,
        shards=tuple(r.entry for r in ordered),
        class_names=tuple(getattr(source, "class_names", None) or ()),
        labels=_write_labels(split_dir, labels),
        small_images=sum(r.small_images for r in ordered),
        skipped=skipped,
    )
    atomic_write_bytes(split_dir / MANIFEST, manifest.to_json().encode("utf-8"))
    if sink is not None:
        sink.split_finished(split_dir, manifest)
    return manifest


def _positive_int(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    return value


def write_shards(
    source: Source,
    out_dir: Path,
    *,
    shard_size: int = 1000,
    seed: int = 0,
    workers: int = 1,
    sink: ShardSink | None = None,
) -> dict[str, Manifest]:
    """Write every split of `source` to out_dir/<split>/; returns split -> Manifest.

    shard_size 1000 gives ~110 MB shards for ImageNet-sized JPEGs (1,282 train shards), enough shards
    that 8 nodes x 8 GPUs each get ~20, and small enough to rewrite one cheaply. workers > 1 writes
    shards in that many forked processes (`convnets shards` defaults to every core); the bytes are the same.
    sink (an upload to a remote folder) is told of each shard as it is finished, and of the manifest last.
    """
    _positive_int("shard_size", shard_size, minimum=1)
    _positive_int("seed", seed, minimum=0)
    _positive_int("workers", workers, minimum=1)
    splits = source.splits()
    _check_source(source, splits)
    out_dir = Path(out_dir)
    _check_no_stale_splits(out_dir, splits)
    options = WriteOptions(shard_size=shard_size, seed=seed, workers=workers, sink=sink)
    return {split: _write_split(source, split, samples, out_dir / split, options) for split, samples in splits.items()}

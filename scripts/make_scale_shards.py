"""ImageNet-sized shards from a few hundred real photos, for throughput benchmarks ONLY.

    python scripts/make_scale_shards.py OUT --from ../shared/data/imagenet-sample --samples 1281167 \\
        --resize 256 [--val-samples 50000] [--quality 90] [--workers N]

Each photo is resized (shorter side to --resize px) and re-encoded (JPEG, --quality) once, exactly
as `convnets shards imagenet --resize 256` stores it, then repeated: sample i of a split is photo
i mod P under its own key, with label i mod --classes (1,000 by default, ImageNet's count).
The project's shard writer writes them (manifest, .idx, labels, every core), so the files are
the kind a user writes, read the way training reads them, and `convnets shards verify OUT` checks
them. The repeats are the same bytes, so no image is encoded twice: a 1.28 M-sample split costs
the writer's tar and hashing work (and the disk: ~20-30 KB per 256-px photo, ~30 GB at ImageNet
scale), not 1.28 M JPEG encodes.

The labels are synthetic (the same photo carries several labels): accuracy on these shards means
nothing. The manifest's `source` field and OUT/README.txt say so.
"""

from __future__ import annotations

import argparse
import logging
import operator
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from convnets.data_pipelines.shards.format import IMAGE_EXTS
from convnets.data_pipelines.shards.sources import Encoding, Sample, check_reencode, list_images, read_image_file
from convnets.data_pipelines.shards.writer import atomic_write_bytes, write_shards

log = logging.getLogger("make_scale_shards")
WARNING = "SCALE TEST DATA, for throughput benchmarks only: labels are synthetic, accuracy on it means nothing"
PHOTO_SUFFIXES = (".jpeg", ".jpg", ".png")


def find_photos(folder: Path) -> list[Path]:
    """Every photo under `folder` (recursively, sorted): the listing every run repeats in the same order."""
    if not folder.is_dir():
        raise ValueError(f"--from {folder}: not a directory")
    photos = [p for p in list_images(folder) if p.suffix.lower() in PHOTO_SUFFIXES]
    if not photos:
        raise ValueError(f"--from {folder}: no .jpeg/.jpg/.png photos in it")
    return photos


def encode_photos(photos: list[Path], encoding: Encoding, *, workers: int) -> list[tuple[bytes, str]]:
    """Each photo resized and re-encoded once, on `workers` processes, in the order given."""
    with ProcessPoolExecutor(max_workers=max(1, min(workers, len(photos)))) as pool:
        encoded = list(pool.map(partial(read_image_file, encoding=encoding), photos, chunksize=8))
    for path, (_, ext) in zip(photos, encoded):
        if ext not in IMAGE_EXTS:
            raise ValueError(f"{path}: stored as {ext!r}, expected one of {IMAGE_EXTS}")
    return encoded


@dataclass(kw_only=True)
class ScaleSource:
    """A writer Source whose samples repeat already-encoded photos: sample i is photo i mod P, label i mod C."""

    photos: list[Path]
    encoded: list[tuple[bytes, str]]
    counts: dict[str, int]  # split -> samples
    num_classes: int
    resize: int | None
    quality: int
    folder: Path
    flip_ok: bool = True
    classes: list[str] = field(init=False)  # a list, not a property: the writer reads it once per sample

    def __post_init__(self) -> None:
        self.classes = [f"scale{c:04d}" for c in range(self.num_classes)]

    @property
    def description(self) -> str:
        # The manifest's free-form field: whoever opens the manifest reads what these shards are.
        size = f"resized to {self.resize} px, " if self.resize else ""
        return (
            f"{WARNING}. {len(self.photos)} real photos from {self.folder} ({size}JPEG q{self.quality}) repeated "
            f"to {', '.join(f'{n} {s}' for s, n in self.counts.items())} samples, labels i mod {self.num_classes}"
        )

    def splits(self) -> dict[str, list[Sample]]:
        out, offset, n_photos = {}, 0, len(self.photos)
        for split, count in self.counts.items():
            # Splits continue the numbering, so val's photo/label pairs follow on from train's.
            out[split] = [
                Sample(
                    key=f"{self.photos[(offset + i) % n_photos].name}#{split}{i}",
                    label=(offset + i) % self.num_classes,
                    read=partial(operator.getitem, self.encoded, (offset + i) % n_photos),
                )
                for i in range(count)
            ]
            offset += count
        return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0))
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("out", type=Path, help="output folder (train/ and val/ splits)")
    p.add_argument("--from", dest="source", type=Path, required=True, help="folder of real photos")
    p.add_argument("--samples", type=int, default=1_281_167, help="train samples (default: ImageNet's 1,281,167)")
    p.add_argument("--val-samples", type=int, default=50_000, help="val samples (default: ImageNet's 50,000; 0: none)")
    p.add_argument("--classes", type=int, default=1000, help="label count (default: 1000)")
    p.add_argument("--resize", type=int, default=256, help="shorter side at most N px (default: 256)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default: 90)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default: 1000)")
    p.add_argument("--workers", type=int, default=cores, help=f"processes (default: every core, {cores})")
    args = p.parse_args(argv)
    for name in ("samples", "classes", "shard_size", "workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    if args.val_samples < 0:
        p.error(f"--val-samples {args.val_samples}: must be at least 0")
    try:
        check_reencode(resize=args.resize, quality=args.quality)
    except ValueError as exc:
        p.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    photos = find_photos(args.source)
    encoding = Encoding(resize=args.resize, quality=args.quality, rgb_jpeg=True)  # as `convnets shards imagenet`
    encoded = encode_photos(photos, encoding, workers=args.workers)
    log.info(
        "%d photos re-encoded in %.1f s (%.1f KB on average)",
        len(photos),
        time.perf_counter() - start,
        sum(len(b) for b, _ in encoded) / len(encoded) / 1e3,
    )
    counts = {"train": args.samples, **({"val": args.val_samples} if args.val_samples else {})}
    source = ScaleSource(
        photos=photos,
        encoded=encoded,
        counts=counts,
        num_classes=args.classes,
        resize=args.resize,
        quality=args.quality,
        folder=args.source,
    )
    log.warning(WARNING)
    manifests = write_shards(source, args.out, shard_size=args.shard_size, workers=args.workers)
    atomic_write_bytes(
        args.out / "README.txt",
        (f"{WARNING}.\n\n{source.description}.\nWritten by scripts/make_scale_shards.py.\n").encode(),
    )
    seconds = time.perf_counter() - start
    total = sum(m.num_samples for m in manifests.values())
    log.info(
        "%s: %s in %.1f s (%.0f samples/s, %d workers)",
        args.out,
        ", ".join(f"{s} {m.num_samples} samples in {len(m.shards)} shards" for s, m in manifests.items()),
        seconds,
        total / seconds,
        args.workers,
    )
    log.warning(WARNING)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as exc:  # bad input: one line naming it
        print(f"make_scale_shards: error: {exc}", file=sys.stderr)
        sys.exit(2)

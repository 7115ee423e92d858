"""`convnets shards ...`: argparse wiring for writing and verifying shards.

    convnets shards imagefolder SRC OUT [--val-fraction 0.1] [--shard-size 1000] [--seed 0] [--resize N --quality Q]
    convnets shards mnist SRC OUT [--n-train 8000] [--shard-size 1000] [--seed 0]
    convnets shards digits OUT [--val-fraction 0.2] [--shard-size 1000] [--seed 0]
    convnets shards imagenet ROOT OUT [--val-labels FILE] [--synsets FILE] [--resize N --quality Q]
    (every write command: [--workers N], default every core; rerunning an interrupted command resumes it;
     OUT may be s3://BUCKET/PREFIX or gs://...: each shard is uploaded as it is finished, the manifest last)
    convnets shards verify OUT [--deep]      (OUT: a split folder, or a folder of split folders; a path or URL)

The front door calls add_shards_subcommands(subparsers) and, for args.command == "shards",
run_shards_command(args); errors are ValueError (ShardError included) with a one-line message.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from convnets.data_pipelines.shards.format import MANIFEST, Manifest, ShardError, check_same_classes
from convnets.data_pipelines.shards.imagenet import ImagenetSource
from convnets.data_pipelines.shards.sources import DigitsSource, ImageFolderSource, MnistSource, Source
from convnets.data_pipelines.shards.upload import UploadSink
from convnets.data_pipelines.shards.verify import VerifyReport, read_store_manifest, verify_shards
from convnets.data_pipelines.shards.writer import write_shards
from convnets.data_pipelines.storage.store import is_remote, open_store

log = logging.getLogger(__name__)


_OUT_HELP = (
    "output folder: a path, or s3://BUCKET/PREFIX or gs://BUCKET/PREFIX to upload each shard as it is finished "
    "(manifest.json last; rerunning the same command skips the objects already uploaded with the same sha256 "
    "and size). http(s):// folders are read-only"
)


def _output(text: str) -> Path | str:
    """A path, or a writable remote URL (kept as text: Path() would fold the '//')."""
    if text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(
            f"{text}: http(s):// shard folders are read-only; write to a local folder or s3:// and serve that"
        )
    return text if is_remote(text) else Path(text)


def _add_write_options(parser: argparse.ArgumentParser, *, val_fraction: float | None) -> None:
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and of the shuffle (default: 0)")
    cores = len(os.sched_getaffinity(0))  # the cores this process may use (a Slurm allocation, not the node)
    parser.add_argument(
        "--workers",
        type=int,
        default=cores,
        help=f"processes writing shards in parallel; the bytes do not depend on it (default: {cores})",
    )
    parser.add_argument(
        "--staging",
        type=Path,
        default=None,
        help="with an s3:// or gs:// OUT: the local folder shards are written in before each is uploaded "
        "(needs room for the dataset; kept for a rerun to resume); default: a folder under the system temp "
        "named after OUT, removed once every split is uploaded",
    )
    if val_fraction is not None:
        parser.add_argument(
            "--val-fraction",
            type=float,
            default=val_fraction,
            help=f"stratified val share when there is no val/ folder (default: {val_fraction})",
        )


def _add_encoding_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--resize",
        type=int,
        default=None,
        help="re-encode with the shorter side at most N px (cheaper decoding every epoch); default: keep the bytes",
    )
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded images (default: 90)")


def _add_imagenet(sub: argparse._SubParsersAction) -> None:
    imagenet = sub.add_parser(
        "imagenet",
        help="ILSVRC-2012: ROOT/train/<wnid>/ or ILSVRC2012_img_train.tar, "
        "ROOT/val/ILSVRC2012_val_*.JPEG or ILSVRC2012_img_val.tar",
    )
    imagenet.add_argument("src", type=Path, metavar="ROOT")
    imagenet.add_argument("out", type=_output, help=_OUT_HELP)
    imagenet.add_argument(
        "--val-labels",
        type=Path,
        default=None,
        help="ILSVRC2012_validation_ground_truth.txt (+ meta.mat beside it), LOC_val_solution.csv "
        "or Caffe val.txt; default: found in ROOT or its devkit folder",
    )
    imagenet.add_argument(
        "--synsets",
        type=Path,
        default=None,
        help="synset list '<wnid> <names>' per line (synset_words.txt, LOC_synset_mapping.txt); default: found in ROOT",
    )
    _add_write_options(imagenet, val_fraction=None)
    _add_encoding_options(imagenet)


def add_shards_subcommands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `shards {imagefolder,imagenet,mnist,digits,verify}` to a parent's subparsers; returns the `shards` parser."""
    shards = subparsers.add_parser("shards", help="write or verify webdataset shards (+ DALI .idx + manifest.json)")
    sub = shards.add_subparsers(
        dest="shards_command", required=True, metavar="{imagefolder,imagenet,mnist,digits,verify}"
    )
    folder = sub.add_parser("imagefolder", help="SRC/<class>/<image> or SRC/{train,val}/<class>/<image>")
    folder.add_argument("src", type=Path)
    folder.add_argument("out", type=_output, help=_OUT_HELP)
    _add_write_options(folder, val_fraction=0.1)
    _add_encoding_options(folder)
    _add_imagenet(sub)
    mnist = sub.add_parser("mnist", help="MNIST idx files (.gz or plain) in SRC")
    mnist.add_argument("src", type=Path)
    mnist.add_argument("out", type=_output, help=_OUT_HELP)
    mnist.add_argument(
        "--n-train",
        type=int,
        default=8000,
        help="with only the t10k set present: its first N are train, the rest val (default: 8000)",
    )
    _add_write_options(mnist, val_fraction=None)
    digits = sub.add_parser("digits", help="scikit-learn's bundled 8x8 digits (1,797 images)")
    digits.add_argument("out", type=_output, help=_OUT_HELP)
    _add_write_options(digits, val_fraction=0.2)
    verify = sub.add_parser("verify", help="check shards against manifest.json (sha256, counts, .idx, labels)")
    verify.add_argument("out", help="a split folder or a folder of splits: a path, http(s)://, s3:// or gs:// URL")
    verify.add_argument(
        "--deep",
        action="store_true",
        help="also decode every image with DALI's CPU decoder (the one training uses), on every core",
    )
    return shards


def _source(args: argparse.Namespace) -> Source:
    if args.shards_command == "imagefolder":
        return ImageFolderSource(
            root=args.src, val_fraction=args.val_fraction, seed=args.seed, resize=args.resize, quality=args.quality
        )
    if args.shards_command == "imagenet":
        return ImagenetSource(
            root=args.src, val_labels=args.val_labels, synsets=args.synsets, resize=args.resize, quality=args.quality
        )
    if args.shards_command == "mnist":
        return MnistSource(root=args.src, n_train=args.n_train)
    if args.shards_command == "digits":
        return DigitsSource(val_fraction=args.val_fraction, seed=args.seed)
    raise ValueError(
        f"unknown shards command {args.shards_command!r}; choose imagefolder, imagenet, mnist, digits or verify"
    )


def split_dirs(out: Path | str) -> list[Path] | list[str]:
    """[out] if it is a split folder, else its split subfolders; a subfolder without a manifest is an error."""
    if is_remote(out):
        return _remote_split_dirs(str(out))
    out = Path(out)
    if (out / MANIFEST).is_file():
        return [out]
    if not out.is_dir():
        raise ShardError(f"{out}: not a directory")
    found = []
    for sub in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (sub / MANIFEST).is_file():  # write_shards made this folder: without a manifest it is unfinished
            raise ShardError(f"{sub / MANIFEST}: missing (an incomplete write); rerun `convnets shards ...`")
        found.append(sub)
    if not found:
        raise ShardError(f"{out}: no {MANIFEST} in it or in any subfolder; not a shard folder")
    return found


def _remote_split_dirs(out: str) -> list[str]:
    store = open_store(out)
    if store.exists(MANIFEST):
        return [out]
    subs = store.subfolders()
    for sub in subs:
        if not store.exists(f"{sub}/{MANIFEST}"):
            raise ShardError(f"{store.url(sub)}/{MANIFEST}: missing (an incomplete write); rerun `convnets shards ...`")
    if not subs:
        raise ShardError(f"{out}: no {MANIFEST} in it or in any split folder under it; not a shard folder")
    return [store.url(sub) for sub in subs]


def verify_output(out: Path | str, *, deep: bool = False) -> list[VerifyReport]:
    reports = [verify_shards(split_dir, deep=deep) for split_dir in split_dirs(out)]
    first = reports[0].split_dir if reports else None
    for report in reports[1:]:  # a folder of splits: one class list for all of them
        manifest, reference = read_store_manifest(open_store(report.split_dir)), read_store_manifest(open_store(first))
        check_same_classes(report.split_dir, manifest, first, reference)
    return reports


def run_shards_command(args: argparse.Namespace) -> int:
    """Run a parsed `convnets shards ...` command; returns 0 or raises ValueError/ShardError (one line)."""
    if args.shards_command == "verify":
        for report in verify_output(args.out, deep=args.deep):
            log.info(
                "%s: OK, %d shards, %d samples%s",
                report.split_dir,
                report.num_shards,
                report.num_samples,
                ", every image decoded" if report.deep else "",
            )
        return 0
    if is_remote(args.out):
        return _write_remote(args)
    manifests: dict[str, Manifest] = write_shards(
        _source(args), args.out, shard_size=args.shard_size, seed=args.seed, workers=args.workers
    )
    _log_written(manifests, lambda split: Path(args.out) / split)
    return 0


def _write_remote(args: argparse.Namespace) -> int:
    """Write in a staging folder, uploading each shard as it is finished; the staging folder is kept on
    failure (the rerun resumes from it) and, unless given with --staging, removed after success."""
    store = open_store(args.out)
    default = Path(tempfile.gettempdir()) / f"convnets-staging-{hashlib.sha256(args.out.encode()).hexdigest()[:12]}"
    staging = args.staging or default
    sink = UploadSink(store, staging)
    manifests = write_shards(
        _source(args), staging, shard_size=args.shard_size, seed=args.seed, workers=args.workers, sink=sink
    )
    log.info("%s: %d files uploaded, %d already there", args.out, len(sink.uploaded), len(sink.skipped))
    _log_written(manifests, store.url)
    if args.staging is None:
        shutil.rmtree(staging, ignore_errors=True)
    return 0


def _log_written(manifests: dict[str, Manifest], where) -> None:
    for split, manifest in manifests.items():
        log.info(
            "%s: %d samples, %d classes, %d shards, %d unreadable files skipped",
            where(split),
            manifest.num_samples,
            manifest.num_classes,
            len(manifest.shards),
            len(manifest.skipped),
        )
    return 0

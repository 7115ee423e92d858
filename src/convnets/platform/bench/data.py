"""`convnets bench data`: images/s of the data path alone, no model.

    convnets bench data --shards runs/shards/imagenette --backend feed   --threads 2 --json feed.json
    convnets bench data --shards runs/shards/imagenette --backend decode --threads 2 --json decode.json
    convnets bench data --shards runs/shards/imagenette --backend dali   --threads 2 --json dali.json
    convnets bench data --shards runs/shards/imagenette --backend torch  --threads 2 --preset alexnet --jitter 0.4
    convnets bench data --shards runs/shards/imagenette --backend dali   --threads 2 --jitter 0.4 0.4 0 --uint8

Backends (one small function each in BACKENDS; a new one is one more entry):
- feed: the shard reader (threaded read-ahead, epoch plan) handing encoded bytes to a DALI
  pipeline that does nothing with them: what the reading side can sustain.
- decode: the same source plus DALI's full-image CPU decoder on `--threads` threads, nothing else:
  the ceiling any augmentation on those threads can reach.
- decode-crop: the same with the inception preset's fused random-crop decoder instead (it decodes
  only the crop's window): the ceiling of the DALI inception graph, and with `decode` the share of
  its time that is JPEG decoding.
- dali: the train loader as the data module builds it (pipeline, augmentation, normalization).
- torch: the pure-PyTorch loader (torchvision.transforms.v2) with the same preset, `--threads`
  DataLoader worker processes: the fallback engine, and DALI's speed baseline.
`--uint8` ships uint8 pixels as `data.normalize_on_device` does: the normalization then runs on
the accelerator after the copy and is not part of what is timed here.

Rates come from the median batch time (robust to the bursts of a shared machine) and, beside
it, the whole window; the first `--warmup` batches (pipeline start, page cache) are not timed.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from convnets.platform.bench.report import Timing
from convnets.utils.environment import hardware, runtime_versions
from convnets.utils.tables import markdown_table


@dataclass(frozen=True)
class DataBench:
    """One `bench data` measurement."""

    shards: Path  # a split folder (with manifest.json)
    backend: str
    batch: int
    threads: int
    seconds: float
    warmup: int = 3
    preset: str = "inception"
    image_size: int = 224
    # brightness, contrast and saturation strength, one for all three or one each (hue stays off)
    jitter: float | tuple[float, float, float] = 0.0
    uint8: bool = False  # ship uint8 pixels, normalized later on the device (data.normalize_on_device)


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shards",
        required=True,
        help="a split folder, or a folder of splits (train is used); with --epochs also https:// or s3://",
    )
    p.add_argument("--backend", choices=sorted(BACKENDS), default="dali")
    p.add_argument(
        "--preset",
        choices=("alexnet", "inception", "pad"),
        default="inception",
        help="augmentation (dali and torch backends)",
    )
    p.add_argument(
        "--jitter",
        type=float,
        nargs="+",
        default=[0.0],
        help="colour jitter strength, or three: brightness contrast saturation (dali and torch backends)",
    )
    p.add_argument(
        "--uint8",
        action="store_true",
        help="uint8 output, normalized on the device afterwards (data.normalize_on_device; dali and torch)",
    )
    p.add_argument("--threads", type=int, default=2, help="DALI threads and reader threads; torch: worker processes")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seconds", type=float, default=10.0, help="timed window, after the warm-up batches")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    p.add_argument("--image-size", type=int, default=224, help="network input side (dali backend)")
    p.add_argument("--json", type=Path, default=None)
    whole = p.add_argument_group(
        "whole epochs through the node-local cache (--epochs): cold-cache and cached epochs, bytes fetched"
    )
    whole.add_argument("--epochs", type=int, default=None, help="time this many whole epochs instead of a window")
    whole.add_argument("--baseline", default=None, help="a local folder of the same shards, timed first (the 1.0x)")
    whole.add_argument("--cache-dir", default=None, help="where the fresh cache folder goes (default: system temp)")
    whole.add_argument("--cache-limit-gb", type=float, default=None, help="the cache's limit (default: 90%% of free)")
    whole.add_argument("--shuffle", choices=("global", "block"), default="global", help="the epoch's order")
    whole.add_argument("--shuffle-window", type=int, default=16, help="block shuffle: shards per window")


def config_from_args(args: argparse.Namespace) -> DataBench:
    from convnets.data_pipelines.storage.store import is_remote

    if is_remote(args.shards):
        raise ValueError(f"--shards {args.shards}: a remote folder is measured in whole epochs: add --epochs N")
    cfg = DataBench(
        shards=split_dir(args.shards),
        backend=args.backend,
        batch=args.batch,
        threads=args.threads,
        seconds=args.seconds,
        warmup=args.warmup,
        preset=args.preset,
        image_size=args.image_size,
        jitter=_jitter_arg(args.jitter),
        uint8=args.uint8,
    )
    if min(cfg.batch, cfg.threads) < 1 or cfg.seconds <= 0 or cfg.warmup < 0:
        raise ValueError("--batch and --threads must be >= 1, --seconds > 0 and --warmup >= 0")
    return cfg


def _jitter_arg(values: list[float]) -> float | tuple[float, float, float]:
    if len(values) not in (1, 3):
        raise ValueError(
            f"--jitter {' '.join(map(str, values))}: one strength, or three (brightness contrast saturation)"
        )
    return values[0] if len(values) == 1 else tuple(values)


def split_dir(path: Path) -> Path:
    """`path` itself when it holds a split's manifest, else its train split."""
    path = Path(path)
    for candidate in (path, path / "train"):
        if (candidate / "manifest.json").exists():
            return candidate
    raise ValueError(
        f"--shards {path}: no manifest.json there nor in {path / 'train'} (write shards with `convnets shards`)"
    )


# -- backends: each yields the number of images in every batch it delivers, forever --------------
def _source(cfg: DataBench):
    """The loader's own reader over the split's train plan, cycling epochs; and the labels."""
    from convnets.data_pipelines.loading.dali_loader import ReadAhead, ShardSource
    from convnets.data_pipelines.shards.format import load_sample_index

    index = load_sample_index(cfg.shards)
    labels = np.zeros(len(index), dtype=np.int64)  # labels are not what is measured here
    return ShardSource(index, labels, ReadAhead(threads=cfg.threads))


def _long_plan(n: int, batch: int, first_epoch: int):
    """Several shuffled epochs in one plan (at least 200 batches): on a small sample (500 images)
    epoch boundaries would otherwise dominate what is timed. Returns (plan, epochs in it)."""
    from convnets.data_pipelines.loading.epoch_plan import RankPlan, epoch_permutation

    reps = max(1, -(-200 * batch // n))
    order = np.concatenate([epoch_permutation(n, seed=0, epoch=first_epoch + e) for e in range(reps)])
    return RankPlan(indices=order.astype(np.int64), valid=np.ones(len(order), dtype=bool), batch_size=batch), reps


def _plain_pipeline(cfg: DataBench, *, decode: str | None) -> Iterator[int]:
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    source = _source(cfg)
    n = len(source.labels)

    @pipeline_def(batch_size=cfg.batch, num_threads=cfg.threads, device_id=None, seed=0)
    def graph():
        encoded, labels, valid, index = fn.external_source(
            source=source,
            num_outputs=4,
            batch=True,
            batch_info=True,
            no_copy=True,
            dtype=[types.UINT8, types.INT64, types.UINT8, types.INT64],
        )
        # feed returns only each sample's byte count: the bytes stop inside DALI, as in training
        # (where the decoder takes them); returning them would time one more 14 MB copy per batch.
        if decode == "full":
            out = fn.decoders.image(encoded, device="cpu", output_type=types.RGB)
        elif decode == "crop":  # the inception preset's fused decoder, same window distribution
            out = fn.decoders.image_random_crop(
                encoded,
                device="cpu",
                output_type=types.RGB,
                num_attempts=10,
                random_area=[0.08, 1.0],
                random_aspect_ratio=[3 / 4, 4 / 3],
            )
        else:
            out = fn.shapes(encoded)
        return out, valid, labels, index

    plan, epoch = _long_plan(n, cfg.batch, 0)
    source.start(plan)
    pipe = graph()
    pipe.build()
    try:
        while True:
            try:
                _, valid, _, _ = pipe.run()
            except StopIteration:
                plan, reps = _long_plan(n, cfg.batch, epoch)
                epoch += reps
                source.start(plan)
                pipe.reset()
                continue
            yield len(valid)
    finally:
        source.close()


def feed(cfg: DataBench) -> Iterator[int]:
    return _plain_pipeline(cfg, decode=None)


def decode(cfg: DataBench) -> Iterator[int]:
    return _plain_pipeline(cfg, decode="full")


def decode_crop(cfg: DataBench) -> Iterator[int]:
    return _plain_pipeline(cfg, decode="crop")


def _augmenting_loader(cfg: DataBench, *, backend: str) -> Iterator[int]:
    from convnets.data_pipelines.loading.datamodule import ShardDataModule

    dm = ShardDataModule(
        data_dir=str(cfg.shards.parent),
        batch_size=cfg.batch,
        num_threads=cfg.threads,
        input_spec=_rgb(cfg.image_size),
        preset=cfg.preset,
        jitter=cfg.jitter,
        device="cpu",
        backend=backend,
        normalize_on_device=cfg.uint8,
    )
    loader = dm.loader(cfg.shards.name, train=True)
    epoch = 0
    while True:
        loader.epoch_fn = lambda e=epoch: e
        for batch in loader:
            yield int(batch["n_valid"])
        epoch += 1


def dali(cfg: DataBench) -> Iterator[int]:
    return _augmenting_loader(cfg, backend="dali")


def torch_backend(cfg: DataBench) -> Iterator[int]:
    return _augmenting_loader(cfg, backend="torch")


def _rgb(size: int):
    from convnets.data_pipelines.loading.augment import InputSpec

    return InputSpec(
        channels=3, image_size=size, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_fraction=0.875
    )


BACKENDS: dict[str, Callable[[DataBench], Iterator[int]]] = {
    "feed": feed,
    "decode": decode,
    "decode-crop": decode_crop,
    "dali": dali,
    "torch": torch_backend,
}


# -- measuring -----------------------------------------------------------------------------------
def bench_data(cfg: DataBench) -> dict:
    batches = BACKENDS[cfg.backend](cfg)
    for _ in range(cfg.warmup):
        next(batches)
    cpu0 = _cpu_seconds()
    marks, counts = [time.perf_counter()], []
    while marks[-1] - marks[0] < cfg.seconds or len(counts) < 2:
        counts.append(next(batches))
        marks.append(time.perf_counter())
    cpu = _cpu_seconds() - cpu0
    batches.close()
    window = marks[-1] - marks[0]
    median_rate = Timing(marks=marks, batch=cfg.batch).step_rate  # an epoch's short last batch: an outlier
    return {
        "bench": "data",
        **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "images": int(sum(counts)),
        "batches": len(counts),
        "window_s": window,
        "images_per_s": sum(counts) / window,
        "images_per_s_median_batch": median_rate,
        # CPU time of this process (all threads) and its children (the torch backend's worker
        # processes): images per CPU-second hardly depends on what else runs on a shared machine,
        # unlike images/s; 2 x this is the rate 2 free cores could reach.
        "cpu_seconds": cpu,
        "images_per_cpu_second": sum(counts) / max(cpu, 1e-9),
        "cpu_includes_children": True,
        "hardware": hardware_cpu(),
        "versions": {**runtime_versions(), "nvidia_dali": _dali_version()},
    }


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its children: finished ones (os.times) and live ones (Linux /proc)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system + _live_children_cpu_seconds()


def _live_children_cpu_seconds() -> float:
    ticks = 0
    for children in Path("/proc/self/task").glob("*/children"):  # absent outside Linux: counted as 0
        for pid in children.read_text().split():
            try:  # fields after the ")" closing the command name: utime and stime are the 12th and 13th
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):  # the child ended meanwhile: os.times has it now
                pass
    return ticks / os.sysconf("SC_CLK_TCK")


def hardware_cpu() -> str:
    import torch

    return hardware(torch.device("cpu"))


def _dali_version() -> str:
    import nvidia.dali

    return nvidia.dali.__version__


def format_data_table(results: list[dict]) -> str:
    return markdown_table(
        [
            "backend",
            "preset",
            "threads",
            "batch",
            "images",
            "images/s (median batch)",
            "images/s (window)",
            "images/CPU-s",
        ],
        [
            [
                r["backend"],
                _augmentation(r) if r["backend"] in ("dali", "torch") else "-",
                str(r["threads"]),
                str(r["batch"]),
                str(r["images"]),
                f"{r['images_per_s_median_batch']:.0f}",
                f"{r['images_per_s']:.0f}",
                f"{r['images_per_cpu_second']:.0f}",
            ]
            for r in results
        ],
    )


def _augmentation(r: dict) -> str:
    jitter = r.get("jitter")
    jitter = "/".join(f"{v:g}" for v in jitter) if isinstance(jitter, (list, tuple)) else jitter
    return (
        r["preset"]
        + (f" + jitter {jitter}" if jitter and jitter != "0/0/0" else "")
        + (", uint8" if r.get("uint8") else "")
    )

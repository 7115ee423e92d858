"""`convnets bench epoch`: whole epochs of `convnets fit`, timed by phase, and the recipe's wall time projected.

The fit is `convnets fit` itself: the same LightningCLI, Trainer, loader, callbacks (checkpoints,
throughput, run record, report, progress bar) and W&B logger (offline), started from a packaged
recipe (`--recipe`, default alexnet2012_imagenet: its augmentation, optimiser and precision), with
the model, batch and speed switches of the command line on top, on one device. One more callback
stamps the time (device synchronized) at a few points, so every second of the fit lands in one phase:

  start-up    the fit's call to the end of the first step (loader and DALI pipelines built, sanity
              validation, cuDNN autotuning, torch.compile)
  steady      each epoch from the end of its first step to the end of its last-but-one step, cut
              into --blocks blocks (one device sync at each block's end: ~10 per epoch); the rate's
              95% interval is over the blocks
  tail        each epoch's last step, its end (checkpoint, epoch metrics) and the next epoch's start
              up to its first step's end: what an epoch boundary costs
  validation  each validation pass (--val), from its start to its end
  fit end     the platform's end-of-fit work (plots, metrics.json) until `fit` returns
With --test-crops N, `test` then runs the N-crop evaluation on the val split, timed on its own.

    convnets bench epoch --shards SCALE --arch alexnet --precision bf16-mixed --channels-last --compile \\
        --space-to-depth --batch 2048 --val --test-crops 10 --json bench/epoch.json
    convnets bench epoch --shards SHARDS --recipe alexnet_small_imagenette --arch alexnet_small --batch 8 \\
        --device cpu -- --data.normalize_on_device true     # flags after `--` go to the fit as they are

The projection (`project_recipe`, a pure function): the recipe's epochs at the measured training
rate plus one validation per epoch at the measured validation rate, plus the measured start-up
once; for G GPUs the training and validation time divided by G (linear scaling: an assumption).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from convnets.platform.bench.report import median_ci95
from convnets.utils.tables import markdown_table, yes_no

log = logging.getLogger(__name__)
IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000  # ILSVRC-2012's split sizes: the projection's default
SCALING_CAVEAT = (
    "linear scaling is an assumption: each GPU keeps the measured one-GPU rate on its share of every epoch, which "
    "needs its own CPU threads and JPEG decoder (8 data paths on one host share its cores), a gradient all-reduce "
    "hidden behind the backward pass (AlexNet: ~120 MB of bf16 gradients per step), and the recipe's per-GPU "
    "batch; the start-up is counted once"
)


def add_epoch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shards", type=Path, required=True, help="shard folder with train/ (and val/ for --val, --test-crops)"
    )
    p.add_argument(
        "--recipe",
        default="alexnet2012_imagenet",
        help="packaged recipe or YAML the fit starts from; its max_epochs is the projection's "
        "(default alexnet2012_imagenet)",
    )
    p.add_argument("--arch", default="alexnet", help="registered model (default alexnet)")
    p.add_argument(
        "--precision", default=None, choices=["32-true", "bf16-mixed", "16-mixed"], help="default: the recipe's"
    )
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--space-to-depth", action="store_true", help="the stem convolution over pixel blocks (same output)")
    p.add_argument("--batch", type=int, default=None, help="images per step (default: the recipe's)")
    p.add_argument("--epochs", type=int, default=1, help="epochs to run (default 1)")
    p.add_argument("--val", action="store_true", help="validate after each epoch, as the recipe does")
    p.add_argument(
        "--test-crops",
        type=int,
        default=0,
        choices=[0, 1, 5, 10],
        help="after the fit, evaluate the val split with this many crops per image (default 0: no)",
    )
    p.add_argument("--num-threads", type=int, default=None, help="DALI threads (default: the recipe's)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"], help="auto: gpu where CUDA is visible")
    p.add_argument(
        "--data-only",
        action="store_true",
        help="the fit's train loader alone (same data module, device and threads), no model: the data path's rate",
    )
    p.add_argument("--blocks", type=int, default=10, help="steady blocks per epoch, for the interval (default 10)")
    p.add_argument(
        "--train-images", type=int, default=IMAGENET_TRAIN, help="projection: images per epoch (default ImageNet's)"
    )
    p.add_argument(
        "--val-images", type=int, default=IMAGENET_VAL, help="projection: images per validation (default ImageNet's)"
    )
    p.add_argument("--runs-dir", type=Path, default=None, help="keep the run folder here (default: a temporary one)")
    p.add_argument("--json", type=Path, default=None, help="write the result here")
    p.add_argument("fit_args", nargs=argparse.REMAINDER, help="after `--`: more `convnets fit` flags")


# -- the projection (pure arithmetic) --------------------------------------------------------------
def project_recipe(
    *,
    epochs: int,
    train_images: int,
    train_images_per_s: float,
    val_images: int,
    val_images_per_s: float | None,
    startup_s: float,
    gpus: int = 1,
) -> dict:
    """The recipe's wall time at measured rates: start-up + epochs x (train_images / rate + one validation).

    With `gpus` > 1 the training and validation time is divided by `gpus` (linear scaling, see
    SCALING_CAVEAT); without a measured validation rate validation is left out and says so.
    """
    epoch_s = train_images / train_images_per_s
    val_s = val_images / val_images_per_s if val_images_per_s else 0.0
    total = startup_s + epochs * (epoch_s + val_s) / gpus
    return {
        "gpus": gpus,
        "epochs": epochs,
        "train_images": train_images,
        "train_images_per_s": train_images_per_s,
        "epoch_s": epoch_s / gpus,
        "val_images": val_images,
        "val_images_per_s": val_images_per_s,
        "val_s": val_s / gpus,
        "validation_included": bool(val_images_per_s),
        "startup_s": startup_s,
        "total_s": total,
        "total_min": total / 60,
    }


# -- the clock ---------------------------------------------------------------------------------------
@dataclass
class Span:
    seconds: float = 0.0
    images: int = 0

    def as_dict(self) -> dict:
        return {
            "seconds": self.seconds,
            "images": self.images,
            "images_per_s": self.images / self.seconds if self.seconds > 0 and self.images else None,
        }


def _epoch_clock(blocks: int):
    """The callback class (built here so that this module imports Lightning only when a benchmark runs)."""
    import numpy as np
    import pytorch_lightning as pl
    import torch

    class EpochClock(pl.Callback):
        """Time stamps (device synchronized) at the phase and block boundaries of the docstring above."""

        def __init__(self) -> None:
            self.t_call = 0.0
            self.last = 0.0  # the latest phase boundary
            self.phases = {k: Span() for k in ("startup", "steady", "tail", "validation", "fit_end", "test")}
            self.blocks: list[Span] = []
            self.windows: list[tuple[float, float]] = []  # steady blocks (start, end): for utilization samples
            self.edges: set[int] = set()
            self.pending = 0  # images of the steps since the last boundary
            self.n = 0

        def _stamp(self, pl_module) -> float:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)  # the work queued so far belongs to the phase ending here
            return time.perf_counter()

        def _close(self, phase: str, now: float) -> None:
            self.phases[phase].seconds += now - self.last
            self.phases[phase].images += self.pending
            self.last, self.pending = now, 0

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.n = int(trainer.num_training_batches)
            if self.n < 3:
                raise ValueError(
                    f"bench epoch: {self.n} steps per epoch; a start, steady and tail phase need >= 3 "
                    "(lower --batch or use a larger split)"
                )
            k = max(1, min(blocks, self.n - 2))
            self.edges = {int(round(x)) for x in np.linspace(0, self.n - 2, k + 1)}  # step ends closing blocks

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.pending += int(batch["n_valid"])
            if batch_idx not in self.edges:  # the last step (n - 1) is the tail's: closed at validation or later
                return
            now = self._stamp(pl_module)
            if batch_idx == 0:  # start-up (first epoch) or the previous epoch's tail (later ones)
                self._close("startup" if trainer.current_epoch == 0 else "tail", now)
            else:
                self.blocks.append(Span(now - self.last, self.pending))
                self.windows.append((self.last, now))
                self._close("steady", now)

        def on_validation_start(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:  # sanity validation is part of the start-up
                self._close("tail", self._stamp(pl_module))

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
            if not trainer.sanity_checking:
                self.pending += int(batch["n_valid"])

        def on_validation_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                self._close("validation", self._stamp(pl_module))

        def on_fit_end(self, trainer, pl_module) -> None:
            self._close("tail", self._stamp(pl_module))

        def fit_returned(self, now: float) -> None:
            self._close("fit_end", now)

        def on_test_start(self, trainer, pl_module) -> None:
            self.last, self.pending = self._stamp(pl_module), 0

        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
            self.pending += int(batch["n_valid"])

        def on_test_end(self, trainer, pl_module) -> None:
            self._close("test", self._stamp(pl_module))

    return EpochClock()


# -- utilization from the driver ---------------------------------------------------------------------
class DeviceSampler:
    """GPU, video-decoder and JPEG-decoder utilization (%) sampled every `period_s` from nvidia-smi.

    The driver reports each as the share of its last sample period the engine was busy; the means over
    the steady blocks are reported. nvidia-smi comes with the driver (NVML's Python binding would be
    one more dependency for the same numbers). Without it, or on a CPU run, nothing is sampled and
    the report says n/a.
    """

    FIELDS = ("gpu", "decoder", "jpeg")

    def __init__(self, device_index: int | None, period_s: float = 0.5) -> None:
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.source = None
        self._stop = threading.Event()
        self._read = None if device_index is None else self._smi(device_index)
        self._thread = threading.Thread(target=self._loop, args=(period_s,), daemon=True) if self._read else None

    def _smi(self, index: int):
        for fields in ("utilization.gpu,utilization.decoder,utilization.jpeg", "utilization.gpu,utilization.decoder"):
            cmd = ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits", f"--id={index}"]
            try:
                if subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0:
                    break
            except (OSError, subprocess.TimeoutExpired):
                return None
        else:
            return None

        def read() -> dict[str, float]:  # ~50 ms per call: fine at two samples a second
            text = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
            values = [float(v) if v.strip().replace(".", "", 1).isdigit() else None for v in text.split(",")]
            return dict(zip(self.FIELDS, values))

        self.source = "nvidia-smi"
        return read

    def _loop(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            try:
                self.samples.append((time.perf_counter(), self._read()))
            except Exception:  # a sample the driver could not give: skipped
                pass

    def __enter__(self) -> DeviceSampler:
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def means(self, windows: list[tuple[float, float]]) -> dict[str, float | None]:
        inside = [s for t, s in self.samples if any(a <= t <= b for a, b in windows)]
        out = {}
        for f in self.FIELDS:
            values = [s[f] for s in inside if s.get(f) is not None]
            out[f"{f}_utilization"] = statistics.fmean(values) if values else None
        return out


# -- the run -----------------------------------------------------------------------------------------
def fit_argv(args: argparse.Namespace, run_dir: Path) -> list[str]:
    """The `convnets fit` flags of this benchmark: the recipe, then the command line's overrides."""
    accelerator = {"auto": _auto_accelerator(), "cpu": "cpu", "gpu": "gpu"}[args.device]
    argv = [
        "--config",
        args.recipe,
        "--model.arch",
        args.arch,
        "--data.data_dir",
        str(args.shards),
        "--trainer.max_epochs",
        str(args.epochs),
        "--trainer.devices",
        "1",
        "--trainer.strategy",
        "auto",
        "--trainer.accelerator",
        accelerator,
        "--runs_dir",
        str(run_dir.parent),
        "--run_name",
        run_dir.name,
        "--model.perf.channels_last",
        str(args.channels_last).lower(),
        "--model.perf.compile",
        str(args.compile).lower(),
        "--model.perf.space_to_depth",
        str(args.space_to_depth).lower(),
    ]
    for flag, value in (
        ("--trainer.precision", args.precision),
        ("--data.batch_size", args.batch),
        ("--data.num_threads", args.num_threads),
    ):
        if value is not None:
            argv += [flag, str(value)]
    if not args.val:
        argv += ["--trainer.limit_val_batches", "0"]
    if args.test_crops:
        argv += ["--data.test_crops", str(args.test_crops), "--data.test_split", "val"]
    extra = list(args.fit_args or [])
    return argv + (extra[1:] if extra[:1] == ["--"] else extra)


def _auto_accelerator() -> str:
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def _build_cli(argv: list[str]):
    """ConvnetsCLI exactly as `convnets fit` builds it, without running a subcommand."""
    import argparse as _argparse
    import contextlib
    import io
    import warnings

    from convnets.data_pipelines.loading.datamodule import ShardDataModule
    from convnets.platform.training.lightning_cli import CLI_DEFAULTS, ConvnetsCLI, resolve_config_args
    from convnets.platform.training.module import ClassifierModule

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), warnings.catch_warnings():
            # The flags are built here on purpose, beside the `convnets bench` command line: not a mistake.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            return ConvnetsCLI(
                ClassifierModule,
                ShardDataModule,
                args=resolve_config_args(argv),
                run=False,
                save_config_kwargs={"overwrite": True},
                **CLI_DEFAULTS,
            )
    except (_argparse.ArgumentError, SystemExit) as exc:
        text = err.getvalue() or str(exc)
        message = " ".join(text[text.rfind("error:") + len("error:") :].split()) if "error:" in text else text.strip()
        raise ValueError(f"bench epoch: the fit refused its flags: {message or 'invalid'}") from None


def check_args(args: argparse.Namespace) -> None:
    if args.epochs < 1 or args.blocks < 1 or (args.batch is not None and args.batch < 1):
        raise ValueError("bench epoch: --epochs, --blocks and --batch must be >= 1")
    if min(args.train_images, args.val_images) < 1:
        raise ValueError("bench epoch: --train-images and --val-images must be >= 1")
    from convnets.platform.training.lightning_cli import packaged_configs, resolve_config_args

    try:
        resolve_config_args(["--config", args.recipe])
    except ValueError:
        raise ValueError(
            f"--recipe {args.recipe}: no such file, nor a packaged recipe ({', '.join(packaged_configs())})"
        ) from None
    if not (args.shards / "train" / "manifest.json").is_file():
        raise ValueError(
            f"--shards {args.shards}: no train/manifest.json (write shards with `convnets shards` "
            "or scripts/make_scale_shards.py)"
        )
    if (args.val or args.test_crops) and not (args.shards / "val" / "manifest.json").is_file():
        raise ValueError(f"--shards {args.shards}: --val and --test-crops need val/manifest.json")


def bench_epoch(args: argparse.Namespace) -> dict:
    check_args(args)
    if args.data_only and (args.val or args.test_crops):
        raise ValueError("bench epoch: --data-only times the train loader alone; drop --val and --test-crops")
    run_dir = (
        Path(tempfile.mkdtemp(prefix="convnets-bench-epoch-")) / "run"
        if args.runs_dir is None
        else Path(args.runs_dir) / f"bench-epoch-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    try:
        return (_measure_data if args.data_only else _measure)(args, run_dir)
    finally:
        if args.runs_dir is None:
            shutil.rmtree(run_dir.parent, ignore_errors=True)


def _measure(args: argparse.Namespace, run_dir: Path) -> dict:
    cli = _build_cli(fit_argv(args, run_dir))
    trainer, module, data = cli.trainer, cli.model, cli.datamodule
    clock = _epoch_clock(args.blocks)
    # First, so its device syncs at block ends happen before the throughput monitor stamps a step's end
    # (a sync there would be counted as data wait).
    trainer.callbacks.insert(0, clock)
    device = trainer.strategy.root_device
    with DeviceSampler(device.index or 0 if device.type == "cuda" else None) as sampler:
        clock.t_call = clock.last = time.perf_counter()
        trainer.fit(module, datamodule=data)
        t_return = time.perf_counter()
        clock.fit_returned(t_return)
        test_wall = None
        if args.test_crops:
            t0 = time.perf_counter()
            trainer.test(module, datamodule=data, verbose=False)
            test_wall = time.perf_counter() - t0
    return summarize(
        args, trainer, clock, sampler, wall_s=t_return - clock.t_call, test_wall_s=test_wall, run_dir=run_dir
    )


def _measure_data(args: argparse.Namespace, run_dir: Path) -> dict:
    """The fit's own train loader, iterated for --epochs epochs with nothing consuming its batches."""
    import numpy as np
    import torch

    from convnets.utils.environment import hardware, runtime_versions

    cli = _build_cli(fit_argv(args, run_dir))
    trainer, module, data = cli.trainer, cli.model, cli.datamodule
    data.trainer, data.input_spec = trainer, module.input_spec  # what fit attaches: the device, the input facts
    device = trainer.strategy.root_device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    spans = {k: Span() for k in ("startup", "steady", "tail")}
    blocks: list[Span] = []
    start = last = time.perf_counter()
    loader = data.loader("train", train=True)
    for epoch in range(args.epochs):
        loader.epoch_fn = lambda e=epoch: e
        n, pending = len(loader), 0
        edges = {int(round(x)) for x in np.linspace(0, n - 2, max(1, min(args.blocks, n - 2)) + 1)} if n >= 3 else set()
        for i, batch in enumerate(loader):
            pending += int(batch["n_valid"])
            if i not in edges:
                continue
            sync()
            now = time.perf_counter()
            phase = "steady" if i else ("startup" if epoch == 0 else "tail")
            if i:
                blocks.append(Span(now - last, pending))
            spans[phase].seconds += now - last
            spans[phase].images += pending
            last, pending = now, 0
        if n < 3:
            raise ValueError(f"bench epoch: {n} batches per epoch; >= 3 needed (lower --batch or use a larger split)")
        sync()
        spans["tail"].images += pending
    now = time.perf_counter()
    spans["tail"].seconds += now - last
    rates = [b.images / b.seconds for b in blocks]
    phases = {k: v.as_dict() for k, v in spans.items()}
    phases["steady"].update(
        blocks=[b.as_dict() for b in blocks],
        block_median_images_per_s=statistics.median(rates),
        block_ci95=median_ci95(rates),
    )
    steady, tail = spans["steady"], spans["tail"]
    return {
        "bench": "epoch",
        "mode": "data",
        "recipe": args.recipe,
        "arch": args.arch,
        "batch": int(data.hparams.batch_size),
        "device": device.type,
        "data_device": "gpu" if data._device_id() is not None else "cpu",
        "num_threads": int(data.hparams.num_threads),
        "hw_decoder_load": float(data.hparams.hw_decoder_load),
        "epochs": args.epochs,
        "shards": str(args.shards),
        "fit_args": fit_argv(args, run_dir),
        "wall_s": now - start,
        "phases": phases,
        "train_images": sum(v.images for v in spans.values()),
        "epoch_images_per_s": (steady.images + tail.images) / (steady.seconds + tail.seconds),
        "steady_images_per_s": phases["steady"]["images_per_s"],
        "hardware": hardware(device),
        "versions": runtime_versions(),
    }


def _recipe_epochs(trainer_max_epochs: int, args: argparse.Namespace) -> int:
    """The recipe's own max_epochs (the fit ran --epochs of them)."""
    import yaml

    from convnets.platform.training.lightning_cli import resolve_config_args

    path = Path(resolve_config_args(["--config", args.recipe])[1])
    return int(((yaml.safe_load(path.read_text()) or {}).get("trainer") or {}).get("max_epochs") or trainer_max_epochs)


def summarize(
    args, trainer, clock, sampler: DeviceSampler, *, wall_s: float, test_wall_s: float | None, run_dir: Path
) -> dict:
    from convnets.platform.training.callbacks import RunReport, ThroughputMonitor, peak_flops
    from convnets.utils.environment import hardware, runtime_versions

    monitor = next(c for c in trainer.callbacks if isinstance(c, ThroughputMonitor))
    report = next(c for c in trainer.callbacks if isinstance(c, RunReport))
    phases = {k: v.as_dict() for k, v in clock.phases.items() if k != "test"}
    steady, tail, val = clock.phases["steady"], clock.phases["tail"], clock.phases["validation"]
    block_rates = [b.images / b.seconds for b in clock.blocks]
    phases["steady"].update(
        blocks=[b.as_dict() for b in clock.blocks],
        block_median_images_per_s=statistics.median(block_rates),
        block_ci95=median_ci95(block_rates),
    )
    train_rate = (steady.images + tail.images) / (steady.seconds + tail.seconds)  # an epoch once running
    val_rate = val.images / val.seconds if val.seconds > 0 and val.images else None
    peak = peak_flops(trainer.strategy.root_device, trainer.precision)
    flops = monitor.flops_per_image
    waits = [h["data_wait_fraction"] for h in report.history if "data_wait_fraction" in h]
    data = trainer.datamodule
    recipe_epochs = _recipe_epochs(trainer.max_epochs, args)
    project = dict(
        epochs=recipe_epochs,
        train_images=args.train_images,
        train_images_per_s=train_rate,
        val_images=args.val_images,
        val_images_per_s=val_rate,
        startup_s=clock.phases["startup"].seconds,
    )
    result = {
        "bench": "epoch",
        "mode": "fit",
        "recipe": args.recipe,
        "arch": args.arch,
        "batch": int(data.hparams.batch_size),
        "precision": str(trainer.precision),
        "channels_last": args.channels_last,
        "compile": args.compile,
        "space_to_depth": args.space_to_depth,
        "epochs": args.epochs,
        "val": args.val,
        "device": trainer.strategy.root_device.type,
        "num_threads": int(data.hparams.num_threads),
        "hw_decoder_load": float(data.hparams.hw_decoder_load),
        "shards": str(args.shards),
        "split_images": {s: m.num_samples for s, m in data.manifests.items()},
        "fit_args": fit_argv(args, run_dir),
        "wall_s": wall_s,
        "phases": phases,
        "train_images": sum(clock.phases[k].images for k in ("startup", "steady", "tail")),
        "epoch_images_per_s": train_rate,
        "steady_images_per_s": phases["steady"]["images_per_s"],
        "data_wait_fraction": statistics.fmean(waits) if waits else None,
        "data_wait_fraction_per_epoch": waits,
        "flops_per_image": flops,
        "peak_flops": peak,
        "mfu": phases["steady"]["images_per_s"] * flops / peak if peak and flops else None,
        **sampler.means(clock.windows),
        "utilization_source": sampler.source,
        "test": _test_result(clock, args, test_wall_s) if args.test_crops else None,
        "projection": {
            "recipe": args.recipe,
            **project_recipe(**project),
            "gpus_8": project_recipe(**project, gpus=8),
            "scaling_caveat": SCALING_CAVEAT,
        },
        "hardware": hardware(trainer.strategy.root_device),
        "versions": runtime_versions(),
        "run_dir": str(run_dir) if args.runs_dir is not None else None,
    }
    return result


def _test_result(clock, args, wall_s: float) -> dict:
    span = clock.phases["test"]
    return {
        "crops": args.test_crops,
        "images": span.images,
        "seconds": span.seconds,
        "wall_s": wall_s,
        "images_per_s": span.images / span.seconds if span.seconds > 0 else None,
        "crops_per_s": span.images * args.test_crops / span.seconds if span.seconds > 0 else None,
    }


# -- tables ------------------------------------------------------------------------------------------
def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _pct(value: float | None, scale: float = 1.0) -> str:
    return "n/a" if value is None else f"{scale * value:.0f}%"


def _steady_cell(r: dict) -> str:
    s = r["phases"]["steady"]
    ci = s.get("block_ci95")
    return _rate(s["images_per_s"]) + (f" [{ci[0]:,.0f}, {ci[1]:,.0f}]" if ci else "")


def format_epoch_table(results: list[dict]) -> str:
    """The fits (phases, rates, utilization), their projections with the inputs, and the data-only runs."""
    data = [r for r in results if r.get("mode") == "data"]
    fits = [r for r in results if r.get("mode") != "data"]
    tables = [_fit_tables(fits)] if fits else []
    if data:
        tables.append(
            markdown_table(
                [
                    "data path alone",
                    "batch",
                    "decode",
                    "threads",
                    "images",
                    "wall s",
                    "start-up s",
                    "steady img/s [95% CI]",
                    "tail img/s",
                    "epoch img/s",
                ],
                [
                    [
                        r["arch"] + " loader",
                        str(r["batch"]),
                        r["data_device"],
                        str(r["num_threads"]),
                        f"{r['train_images']:,}",
                        f"{r['wall_s']:.1f}",
                        f"{r['phases']['startup']['seconds']:.1f}",
                        _steady_cell(r),
                        _rate(r["phases"]["tail"]["images_per_s"]),
                        _rate(r["epoch_images_per_s"]),
                    ]
                    for r in data
                ],
            )
        )
    return "\n\n".join(tables)


def _fit_tables(results: list[dict]) -> str:
    runs = markdown_table(
        [
            "arch",
            "batch",
            "precision",
            "compile",
            "s2d",
            "images",
            "wall s",
            "start-up s",
            "steady img/s [95% CI]",
            "tail img/s",
            "epoch img/s",
            "val img/s",
            "data wait",
            "MFU",
            "GPU util",
            "decoder util",
            "JPEG util",
            "10-crop img/s",
        ],
        [
            [
                r["arch"],
                str(r["batch"]),
                r["precision"],
                yes_no(r["compile"]),
                yes_no(r["space_to_depth"]),
                f"{r['train_images']:,}",
                f"{r['wall_s']:.1f}",
                f"{r['phases']['startup']['seconds']:.1f}",
                _steady_cell(r),
                _rate(r["phases"]["tail"]["images_per_s"]),
                _rate(r["epoch_images_per_s"]),
                _rate(r["phases"]["validation"]["images_per_s"]),
                _pct(r["data_wait_fraction"], 100),
                _pct(r["mfu"], 100),
                _pct(r["gpu_utilization"]),
                _pct(r["decoder_utilization"]),
                _pct(r["jpeg_utilization"]),
                _rate((r.get("test") or {}).get("images_per_s")),
            ]
            for r in results
        ],
    )
    projection = markdown_table(
        [
            "recipe",
            "epochs",
            "images/epoch",
            "train img/s",
            "epoch s",
            "val img/s",
            "val s",
            "start-up s",
            "1 GPU",
            "8 GPUs (linear)",
        ],
        [
            [
                p["recipe"],
                str(p["epochs"]),
                f"{p['train_images']:,}",
                _rate(p["train_images_per_s"]),
                f"{p['epoch_s']:.1f}",
                _rate(p["val_images_per_s"]) if p["validation_included"] else "not measured",
                f"{p['val_s']:.1f}",
                f"{p['startup_s']:.1f}",
                f"{p['total_min']:.1f} min",
                f"{p['gpus_8']['total_min']:.1f} min",
            ]
            for p in (r["projection"] for r in results)
        ],
    )
    return runs + "\n\n" + projection

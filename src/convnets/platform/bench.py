"""`convnets bench model`: training images/s of the Lightning loop next to a bare PyTorch loop.

Both arms do the same work on the same synthetic batch (already on the device, so the data path
is out of the picture): forward, masked cross-entropy, running training accuracy, backward, SGD
step, LR-scheduler step.
The Lightning arm carries everything a real run has: the platform's callbacks (throughput, run
record, report, checkpointing), a logger (W&B offline where wandb is installed, else CSV) and
the progress bar. Arms alternate A/B then B/A, round after round. Each arm's rate is its batch
over its MEDIAN step time (a shared machine adds bursts to a few steps; the median ignores them,
and every step of the Lightning arm includes its whole loop: fetch, hooks, callbacks, logging);
the reported ratio is the median of the per-round ratios. Whole-window rates are in the JSON too.

    convnets bench model --arch alexnet --batch 64 --json bench/alexnet.json
    convnets bench model --arch alexnet --batch 256 --precision bf16-mixed --channels-last --compile --json OUT

It imports neither DALI nor jsonargparse, so it runs on a machine with only torch and Lightning.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelBench:
    """One benchmark's settings."""

    arch: str
    batch: int
    precision: str = "32-true"
    channels_last: bool = False
    compile: bool = False
    space_to_depth: bool = False  # the stem convolution over pixel blocks (PerfConfig.space_to_depth)
    steps: int = 50  # timed steps per arm and round
    warmup: int = 3  # untimed steps first (cuDNN autotuning, compilation, allocator)
    rounds: int = 5
    num_classes: int = 1000
    device: str = "auto"

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def _add_common(p) -> None:
    p.add_argument("--arch", required=True, help="registered model (`convnets models`)")
    p.add_argument("--batch", type=int, required=True, help="images per step")
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed"])
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--steps", type=int, default=50, help="timed steps (per arm and round for `model`; default 50)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before them (default 3)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--json", type=Path, default=None, help="write the result here")


def add_bench_subcommands(sub) -> None:
    from convnets.platform.bench_e2e import add_e2e_arguments

    add_e2e_arguments(sub.add_parser("e2e", help="shards into training: data alone, model alone, both together"))
    from convnets.platform.bench_imagenette import add_imagenette_arguments

    add_imagenette_arguments(sub.add_parser("imagenette", help="time to accuracy on Imagenette on this machine's CPUs"))
    from convnets.platform.bench_data import add_data_arguments

    add_data_arguments(sub.add_parser("data", help="data path alone: bytes fed, decode-only, the train loader"))
    ev = sub.add_parser("eval", help="multi-crop test images/s through the platform's test step")
    _add_common(ev)
    ev.add_argument("--crops", type=int, default=10, choices=[1, 5, 10], help="crops per image (default 10)")
    ev.add_argument("--rounds", type=int, default=3, help="alternating 1-crop/N-crop rounds; medians (default 3)")
    model = sub.add_parser("model", help="training images/s: the Lightning loop vs a bare PyTorch loop")
    _add_common(model)
    model.add_argument("--compile", action="store_true", help="torch.compile the network")
    model.add_argument("--space-to-depth", action="store_true",
                       help="the strided stem convolution as a stride-1 one over pixel blocks (same output)")
    model.add_argument("--rounds", type=int, default=5, help="A/B rounds; the ratio is their median (default 5)")


def run_bench_command(args: argparse.Namespace) -> int:
    if args.bench_command == "imagenette":
        from convnets.platform.bench_imagenette import bench_imagenette, format_imagenette_table

        return _report(bench_imagenette(args), format_imagenette_table, args.json)
    if args.bench_command == "data":
        from convnets.platform.bench_data import bench_data, config_from_args, format_data_table

        return _report(bench_data(config_from_args(args)), format_data_table, args.json)
    if args.bench_command == "e2e":
        from convnets.platform.bench_e2e import bench_e2e

        return _report(bench_e2e(args), format_e2e_table, args.json)
    cfg = ModelBench(arch=args.arch, batch=args.batch, precision=args.precision, channels_last=args.channels_last,
                     compile=getattr(args, "compile", False),
                     space_to_depth=getattr(args, "space_to_depth", False), steps=args.steps, warmup=args.warmup,
                     rounds=getattr(args, "rounds", 1), num_classes=args.num_classes, device=args.device)
    if min(cfg.batch, cfg.steps, cfg.rounds) < 1 or cfg.warmup < 0:
        raise ValueError("--batch, --steps and --rounds must be >= 1 and --warmup >= 0")
    if cfg.torch_device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible")
    if args.bench_command == "eval":
        return _report(bench_eval(cfg, crops=args.crops), format_eval_table, args.json)
    return _report(bench_model(cfg), format_table, args.json)


def _report(result: dict, table, path: Path | None) -> int:
    print(table([result]))
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    return 0


# -- the two arms ---------------------------------------------------------------------------------
def synthetic_batch(batch: int, input_size: tuple[int, ...], num_classes: int, device: torch.device,
                    *, n_valid: int | None = None) -> dict:
    """A batch as the data module makes it; the last batch - n_valid samples are padding."""
    g = torch.Generator().manual_seed(0)
    n_valid = batch if n_valid is None else n_valid
    images = torch.randn(batch, *input_size, generator=g).to(device)
    labels = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    valid = (torch.arange(batch) < n_valid).to(device)
    return {"images": images, "labels": labels, "valid": valid, "n_valid": n_valid}


class SyntheticBatches:
    """The same device-resident batch `n` times (then `last`, if given): an iterable with len()."""

    def __init__(self, batch: dict, n: int, last: dict | None = None) -> None:
        self.batch, self.n, self.last = batch, n, last

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for i in range(self.n):
            yield self.last if self.last is not None and i == self.n - 1 else self.batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _module(cfg: ModelBench):
    from convnets.platform.module import ClassifierModule, PerfConfig

    torch.manual_seed(0)
    return ClassifierModule(arch=cfg.arch, num_classes=cfg.num_classes,
                            perf=PerfConfig(channels_last=cfg.channels_last, compile=cfg.compile,
                                            space_to_depth=cfg.space_to_depth))


@dataclass(frozen=True)
class Timing:
    """One arm's timed steps: host time stamps at each step's start, and the end (device synchronized)."""

    marks: list[float]
    batch: int

    @property
    def window_rate(self) -> float:
        return self.batch * (len(self.marks) - 1) / (self.marks[-1] - self.marks[0])

    @property
    def step_rate(self) -> float:
        """Images/s from the median step: robust to the bursts a shared machine adds to a few steps."""
        return self.batch / statistics.median(b - a for a, b in zip(self.marks, self.marks[1:]))


def bare_loop(cfg: ModelBench, batch: dict) -> Timing:
    """Images/s of plain PyTorch doing the module's training arithmetic (loss, accuracy, SGD, schedule)."""
    from convnets.platform.module import masked_cross_entropy
    from convnets.platform.recipe import lr_factor, parameter_groups

    module = _module(cfg)
    net, o = module.net.to(cfg.torch_device), module.optim
    if cfg.compile:
        net.compile()
    optimizer = torch.optim.SGD(parameter_groups(net, o), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
    total = cfg.warmup + cfg.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(o, s / total, 1.0))
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(cfg.precision)
    autocast = torch.autocast(cfg.torch_device.type, dtype=dtype) if dtype else nullcontext()
    scaler = torch.amp.GradScaler(cfg.torch_device.type, enabled=cfg.precision == "16-mixed")
    net.train()
    marks, correct = [], torch.zeros((), dtype=torch.long, device=cfg.torch_device)
    seen = torch.zeros_like(correct)
    for step in range(total):
        if step == cfg.warmup:
            _sync(cfg.torch_device)
        if step >= cfg.warmup:
            marks.append(time.perf_counter())
        with autocast:
            images = batch["images"]
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            logits = net(images)
            loss = masked_cross_entropy(logits, batch["labels"], batch["valid"])
        # The running training accuracy a plain script keeps too (device-side, no sync): the
        # arithmetic of the module's TopKAccuracy(1), without torchmetrics' bookkeeping.
        hit = (logits.detach().topk(1, dim=-1).indices == batch["labels"].unsqueeze(-1)).any(-1)
        correct += (hit & batch["valid"]).sum()
        seen += batch["valid"].sum()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    _sync(cfg.torch_device)
    return Timing(marks + [time.perf_counter()], cfg.batch)


def lightning_loop(cfg: ModelBench, batch: dict, run_dir: Path) -> Timing:
    """Images/s of the platform's Trainer with its callbacks, logger and progress bar on."""
    from convnets.platform.callbacks import platform_callbacks

    timer = WindowTimer(cfg.warmup, cfg.warmup + cfg.steps - 1, cfg.torch_device)
    trainer = pl.Trainer(
        accelerator="gpu" if cfg.torch_device.type == "cuda" else "cpu", devices=1, precision=cfg.precision,
        max_steps=cfg.warmup + cfg.steps, max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0,
        callbacks=[timer, *platform_callbacks(run_dir, {"bench": "model"})], logger=_logger(run_dir),
        log_every_n_steps=50, enable_model_summary=False, default_root_dir=str(run_dir),
        benchmark=cfg.torch_device.type == "cuda",
    )
    trainer.fit(_module(cfg), train_dataloaders=SyntheticBatches(batch, cfg.warmup + cfg.steps))
    return Timing(timer.marks, cfg.batch)


class WindowTimer(pl.Callback):
    """Host time stamps from the start of step `warmup` to the end of step `last`, device synchronized.

    It stops at the last step's end, before the epoch-end checkpoint (which the bare arm does not write).
    """

    def __init__(self, warmup: int, last: int, device: torch.device) -> None:
        self.warmup, self.last, self.device = warmup, last, device
        self.marks: list[float] = []  # each timed step's start, then the last step's end

    def _begin(self, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            _sync(self.device)
        if batch_idx >= self.warmup:
            self.marks.append(time.perf_counter())

    def _end(self, batch_idx: int) -> None:
        if batch_idx == self.last:
            _sync(self.device)
            self.marks.append(time.perf_counter())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._begin(batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._end(batch_idx)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._begin(batch_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._end(batch_idx)


def _logger(run_dir: Path):
    """The platform's logger where wandb is installed (offline), else Lightning's CSV logger."""
    import importlib.util

    from pytorch_lightning.loggers import CSVLogger, WandbLogger

    if importlib.util.find_spec("wandb") is not None:
        return WandbLogger(project="convnets-bench", save_dir=str(run_dir), offline=True, log_model=False)
    return CSVLogger(str(run_dir))


# -- orchestration and report -----------------------------------------------------------------
def bench_model(cfg: ModelBench) -> dict:
    from convnets.models import get_model_info
    from convnets.platform.callbacks import peak_flops
    from convnets.platform.model_table import forward_flops

    info = get_model_info(cfg.arch)
    if cfg.torch_device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # both arms: Lightning's benchmark=True sets the same
    batch = synthetic_batch(cfg.batch, info.input_size, cfg.num_classes, cfg.torch_device)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="convnets-bench-") as tmp:
        for r in range(cfg.rounds):
            run_dir = Path(tmp) / f"round{r}"
            if r % 2 == 0:  # A/B, then B/A: neither arm always runs first
                lt, bt = lightning_loop(cfg, batch, run_dir), bare_loop(cfg, batch)
            else:
                bt, lt = bare_loop(cfg, batch), lightning_loop(cfg, batch, run_dir)
            lit, bare = lt.step_rate, bt.step_rate
            rounds.append({"images_per_s": lit, "bare_images_per_s": bare, "ratio": lit / bare,
                           "window_images_per_s": lt.window_rate, "bare_window_images_per_s": bt.window_rate,
                           "window_ratio": lt.window_rate / bt.window_rate})
            log.info("round %d: lightning %.1f images/s, bare %.1f images/s, ratio %.3f (whole windows: %.3f)",
                     r, lit, bare, lit / bare, lt.window_rate / bt.window_rate)
    lit = statistics.median(r["images_per_s"] for r in rounds)
    bare = statistics.median(r["bare_images_per_s"] for r in rounds)
    train_flops = 3.0 * forward_flops(cfg.arch, num_classes=cfg.num_classes)
    peak = peak_flops(cfg.torch_device, cfg.precision)
    return {
        "bench": "model", **{k: getattr(cfg, k) for k in ("arch", "batch", "precision", "channels_last", "compile",
                                                        "space_to_depth", "steps", "warmup", "rounds", "num_classes")},
        "images_per_s": lit, "bare_images_per_s": bare,
        "ratio": statistics.median(r["ratio"] for r in rounds),
        "ratio_ci95": median_ci95([r["ratio"] for r in rounds]),
        "window_ratio": statistics.median(r["window_ratio"] for r in rounds),
        "train_gflops_per_image": train_flops / 1e9,
        "mfu": lit * train_flops / peak if peak else None,
        "bare_mfu": bare * train_flops / peak if peak else None,
        "peak_tflops": peak / 1e12 if peak else None,
        "per_round": rounds,
        "hardware": hardware(cfg.torch_device),
        "versions": versions(),
    }


def median_ci95(values: list[float], resamples: int = 10_000) -> list[float] | None:
    """95% bootstrap interval (percentile, seeded) of the median of per-round values; None under 3 rounds.

    On a shared 2-core VM single rounds of the LeNet-5 ratio range 0.8-1.3: the interval says whether
    a median is evidence for or against a target (e.g. 0.955 [0.915, 1.005] cannot tell 0.97 apart).
    """
    if len(values) < 3:
        return None
    rng = np.random.default_rng(0)
    medians = np.median(rng.choice(np.asarray(values), size=(resamples, len(values))), axis=1)
    return [float(np.quantile(medians, 0.025)), float(np.quantile(medians, 0.975))]


def _eval_timing(cfg: ModelBench, crops: int) -> Timing:
    """The platform's test step on a synthetic (batch, crops, C, H, W) batch: each image's crops in one forward."""
    from convnets.models import get_model_info

    info = get_model_info(cfg.arch)
    batch = synthetic_batch(cfg.batch, (crops, *info.input_size), cfg.num_classes, cfg.torch_device)
    timer = WindowTimer(cfg.warmup, cfg.warmup + cfg.steps - 1, cfg.torch_device)
    trainer = pl.Trainer(accelerator="gpu" if cfg.torch_device.type == "cuda" else "cpu", devices=1,
                         precision=cfg.precision, callbacks=[timer], logger=False, enable_model_summary=False,
                         enable_progress_bar=False, benchmark=cfg.torch_device.type == "cuda")
    trainer.test(_module(cfg), dataloaders=SyntheticBatches(batch, cfg.warmup + cfg.steps), verbose=False)
    return Timing(timer.marks, cfg.batch)


def bench_eval(cfg: ModelBench, *, crops: int) -> dict:
    """Images/s of the multi-crop test step, and its per-image cost next to single-crop testing.

    The two arms alternate (1 then N crops, N then 1, ...); each arm's rate is its batch over its
    median step. cost_ratio = time per image with N crops / with 1 crop (the paper's 10 crops
    should cost at most ~10x: one batched forward of 10 B crops, not 10 forwards of B).
    """
    if cfg.torch_device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rounds = []
    for r in range(cfg.rounds):
        order = (1, crops) if r % 2 == 0 else (crops, 1)
        timings = {c: _eval_timing(cfg, c) for c in order}
        single, multi = timings[1].step_rate, timings[crops].step_rate
        rounds.append({"single_images_per_s": single, "images_per_s": multi, "cost_ratio": single / multi})
        log.info("round %d: 1 crop %.1f images/s, %d crops %.1f images/s, cost ratio %.2f", r, single, crops, multi,
                 single / multi)
    rate = statistics.median(r["images_per_s"] for r in rounds)
    return {
        "bench": "eval", "arch": cfg.arch, "batch": cfg.batch, "crops": crops, "precision": cfg.precision,
        "channels_last": cfg.channels_last, "steps": cfg.steps, "rounds": cfg.rounds, "images_per_s": rate,
        "crops_per_s": rate * crops, "single_images_per_s": statistics.median(r["single_images_per_s"] for r in rounds),
        "cost_ratio": statistics.median(r["cost_ratio"] for r in rounds), "target_cost_ratio": EVAL_COST_TARGET * crops / 10,
        "per_round": rounds, "hardware": hardware(cfg.torch_device), "versions": versions(),
    }


EVAL_COST_TARGET = 10.5  # 10 crops may cost at most 10.5x one crop per image (issue 9)


def format_eval_table(results: list[dict]) -> str:
    return markdown_table(
        ["arch", "batch", "crops", "precision", "NHWC", "images/s", "crops/s", "1-crop images/s", "cost ratio", "target"],
        [[r["arch"], str(r["batch"]), str(r["crops"]), r["precision"], yes_no(r["channels_last"]),
          f"{r['images_per_s']:.1f}", f"{r['crops_per_s']:.1f}", f"{r['single_images_per_s']:.1f}",
          f"{r['cost_ratio']:.2f}x", f"<= {r['target_cost_ratio']:.2f}x"] for r in results])


def format_e2e_table(results: list[dict]) -> str:
    return markdown_table(
        ["arch", "batch", "decode", "data img/s", "model img/s", "both img/s", "bottleneck"],
        [[r["arch"], str(r["batch"]), r["decode"], f"{r['data_images_per_s']:.1f}", f"{r['model_images_per_s']:.1f}",
          f"{r['both_images_per_s']:.1f}", r["bottleneck"]] for r in results])


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {torch.get_num_threads()} CPU threads"
    return f"{_cpu_name()}, {torch.get_num_threads()} threads"


def _cpu_name() -> str:
    try:  # Linux names the model; platform.processor() is often empty there
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__, "pytorch_lightning": pl.__version__}
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        out["cudnn"] = str(torch.backends.cudnn.version())
    return out


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A markdown table, every column padded to its widest cell (first column left, others right)."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _ratio_cell(r: dict) -> str:
    ci = r.get("ratio_ci95")
    return f"{r['ratio']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def format_table(results: list[dict]) -> str:
    return markdown_table(
        ["arch", "batch", "precision", "NHWC", "compile", "s2d stem", "Lightning img/s", "bare img/s", "ratio [95% CI]", "MFU"],
        [[r["arch"], str(r["batch"]), r["precision"], yes_no(r["channels_last"]), yes_no(r["compile"]),
          yes_no(r.get("space_to_depth", False)),
          f"{r['images_per_s']:.1f}", f"{r['bare_images_per_s']:.1f}", _ratio_cell(r),
          f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "n/a"] for r in results])

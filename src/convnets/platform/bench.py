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

import logging
import statistics
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch

from convnets.platform.bench_report import Timing, hardware, median_ci95, versions

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

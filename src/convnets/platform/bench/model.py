"""`convnets bench model`: training images/s of the Lightning loop next to a bare PyTorch loop.

Both arms do the same work on the same synthetic batch (already on the device, so the data path
is out of the picture): forward, masked cross-entropy, running training accuracy, backward, SGD
step, LR-scheduler step, each arm on its own copy of the network.
The Lightning arm carries everything a real run has: the platform's callbacks (throughput, run
record, report, checkpointing), a logger (W&B offline where wandb is installed, else CSV) and
the progress bar. The arms alternate block by block inside ONE fit: after both arms' warm-up,
each round is `steps` Lightning steps, then `steps` bare steps run from a callback between two
Lightning steps. The device is synchronized at both ends of every bare block, and the Lightning
block's time (start of its first step to the start of the next block's, minus the bare block)
includes everything Lightning does around its steps. Blocks a fraction of a second apart see the
same machine (a shared VM's speed drifts by tens of percent over seconds), and a compiled network
compiles once per arm, not once per round. Each arm's rate is its images over its block's time;
the reported ratio is the median of the per-round ratios (per-step medians are in the JSON too).

    convnets bench model --arch alexnet --batch 64 --json bench/alexnet.json
    convnets bench model --arch lenet5 --batch 256 --steps 5 --rounds 100 --json OUT   # many short rounds
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

from convnets.platform.bench.report import Timing, median_ci95
from convnets.utils.environment import hardware, runtime_versions

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


def synthetic_batch(
    batch: int, input_size: tuple[int, ...], num_classes: int, device: torch.device, *, n_valid: int | None = None
) -> dict:
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
    from convnets.platform.training.module import ClassifierModule, PerfConfig

    torch.manual_seed(0)
    return ClassifierModule(
        arch=cfg.arch,
        num_classes=cfg.num_classes,
        perf=PerfConfig(channels_last=cfg.channels_last, compile=cfg.compile, space_to_depth=cfg.space_to_depth),
    )


class BareArm:
    """Plain PyTorch doing the module's training arithmetic (loss, accuracy, SGD, schedule) on its own network."""

    def __init__(self, cfg: ModelBench, batch: dict, total_steps: int) -> None:
        from convnets.platform.training.recipe import lr_factor, parameter_groups

        module = _module(cfg)
        self.cfg, self.batch = cfg, batch
        self.net, o = module.net.to(cfg.torch_device), module.optim
        if cfg.compile:
            self.net.compile()
        self.optimizer = torch.optim.SGD(
            parameter_groups(self.net, o), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(o, s / total_steps, 1.0))
        dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(cfg.precision)
        self.autocast = (lambda: torch.autocast(cfg.torch_device.type, dtype=dtype)) if dtype else nullcontext
        self.scaler = torch.amp.GradScaler(cfg.torch_device.type, enabled=cfg.precision == "16-mixed")
        self.net.train()
        self.correct = torch.zeros((), dtype=torch.long, device=cfg.torch_device)
        self.seen = torch.zeros_like(self.correct)

    def step(self) -> None:
        self.update(self.forward())

    # The step's two halves, apart so that scripts/probe_loop_segments.py can time them.
    def forward(self) -> torch.Tensor:
        """Forward, loss and the running training accuracy; returns the loss."""
        from convnets.platform.training.module import masked_cross_entropy

        batch = self.batch
        with torch.enable_grad(), self.autocast():  # also when run from inside a Lightning hook
            images = batch["images"]
            if self.cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            logits = self.net(images)
            loss = masked_cross_entropy(logits, batch["labels"], batch["valid"])
        # The running training accuracy a plain script keeps too (device-side, no sync): the
        # arithmetic of the module's TopKAccuracy(1), without torchmetrics' bookkeeping.
        hit = (logits.detach().topk(1, dim=-1).indices == batch["labels"].unsqueeze(-1)).any(-1)
        self.correct += (hit & batch["valid"]).sum()
        self.seen += batch["valid"].sum()
        return loss

    def update(self, loss: torch.Tensor) -> None:
        """Backward, SGD step, zero_grad and the schedule's step."""
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def run(self, steps: int) -> Timing:
        """`steps` steps from an idle device to an idle device: each step's start, then the end."""
        _sync(self.cfg.torch_device)
        marks = []
        for _ in range(steps):
            marks.append(time.perf_counter())
            self.step()
        _sync(self.cfg.torch_device)
        return Timing(marks + [time.perf_counter()], self.cfg.batch)


def bare_loop(cfg: ModelBench, batch: dict) -> Timing:
    """The bare arm alone: `warmup` untimed steps, then `steps` timed ones."""
    arm = BareArm(cfg, batch, cfg.warmup + cfg.steps)
    arm.run(cfg.warmup)
    return arm.run(cfg.steps)


class Interleaved(pl.Callback):
    """Times the Lightning arm's blocks and runs the bare arm's blocks between them (see the module's doc).

    Lightning's time stamps are read on a clock that stops while a bare block runs, so a block's
    `Timing` holds Lightning's time only; the device is synchronized on Lightning's clock before
    each bare block. It must be the last callback, so that the others' per-step work is Lightning's.
    """

    def __init__(self, cfg: ModelBench, bare: BareArm) -> None:
        self.cfg, self.bare = cfg, bare
        self.lightning: list[Timing] = []
        self.bare_blocks: list[Timing] = []
        self._marks: list[float] = []
        self._paused = 0.0  # seconds spent in bare blocks so far: Lightning's clock skips them

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        i = batch_idx - self.cfg.warmup  # index among the timed steps
        if i < 0:
            return
        now = time.perf_counter() - self._paused
        if i and i % self.cfg.steps == 0:  # this step starts a block and ends the previous one
            self.lightning.append(Timing(self._marks + [now], self.cfg.batch))
            self._marks = []
        if i < self.cfg.steps * self.cfg.rounds:
            self._marks.append(now)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        i = batch_idx - self.cfg.warmup
        ends_block = i >= 0 and (i + 1) % self.cfg.steps == 0 and i < self.cfg.steps * self.cfg.rounds
        if i != -1 and not ends_block:
            return
        _sync(self.cfg.torch_device)  # Lightning's queued work, on Lightning's clock
        start = time.perf_counter()
        if ends_block:
            self.bare_blocks.append(self.bare.run(self.cfg.steps))
        else:
            self.bare.run(self.cfg.warmup)  # the bare arm's warm-up, right after Lightning's
        self._paused += time.perf_counter() - start


def interleaved_steps(cfg: ModelBench) -> int:
    """Lightning steps of the interleaved fit: warm-up, the rounds' blocks, and one whose start ends the last block."""
    return cfg.warmup + cfg.steps * cfg.rounds + 1


def interleaved_fit(
    cfg: ModelBench,
    batch: dict,
    run_dir: Path,
    *,
    module: pl.LightningModule | None = None,
    timer: Interleaved | None = None,
) -> Interleaved:
    """One fit of the platform's Trainer (callbacks, logger, progress bar on) with the bare blocks inside.

    `module` and `timer` default to the platform's module and `Interleaved` with a `BareArm`
    (scripts/probe_loop_segments.py passes time-stamping subclasses of both).
    """
    from convnets.platform.training.callbacks import platform_callbacks

    total = interleaved_steps(cfg)
    timer = timer or Interleaved(cfg, BareArm(cfg, batch, total))
    trainer = pl.Trainer(
        accelerator="gpu" if cfg.torch_device.type == "cuda" else "cpu",
        devices=1,
        precision=cfg.precision,
        max_steps=total,
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[*platform_callbacks(run_dir, {"bench": "model"}), timer],
        logger=_logger(run_dir),
        log_every_n_steps=50,
        enable_model_summary=False,
        default_root_dir=str(run_dir),
        benchmark=cfg.torch_device.type == "cuda",
    )
    trainer.fit(module or _module(cfg), train_dataloaders=SyntheticBatches(batch, total))
    if len(timer.lightning) != cfg.rounds or len(timer.bare_blocks) != cfg.rounds:
        raise RuntimeError(
            f"bench model: {len(timer.lightning)} Lightning and {len(timer.bare_blocks)} bare blocks "
            f"timed, {cfg.rounds} expected"
        )
    return timer


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

    from pytorch_lightning.loggers import CSVLogger

    from convnets.platform.training.tracking import wandb_logger

    if importlib.util.find_spec("wandb") is not None:
        return wandb_logger(project="convnets-bench", save_dir=str(run_dir), offline=True, log_model=False)
    return CSVLogger(str(run_dir))


# -- orchestration and report -----------------------------------------------------------------
def bench_model(cfg: ModelBench) -> dict:
    from convnets.models import get_model_info
    from convnets.models.flops import forward_flops
    from convnets.platform.training.callbacks import peak_flops

    info = get_model_info(cfg.arch)
    if cfg.torch_device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # both arms: Lightning's benchmark=True sets the same
    batch = synthetic_batch(cfg.batch, info.input_size, cfg.num_classes, cfg.torch_device)
    with tempfile.TemporaryDirectory(prefix="convnets-bench-") as tmp:
        timer = interleaved_fit(cfg, batch, Path(tmp))
    rounds = []
    for r, (lt, bt) in enumerate(zip(timer.lightning, timer.bare_blocks)):
        lit, bare = lt.window_rate, bt.window_rate
        rounds.append(
            {
                "images_per_s": lit,
                "bare_images_per_s": bare,
                "ratio": lit / bare,
                "step_images_per_s": lt.step_rate,
                "bare_step_images_per_s": bt.step_rate,
                "step_ratio": lt.step_rate / bt.step_rate,
            }
        )
        log.info(
            "round %d: lightning %.1f images/s, bare %.1f images/s, ratio %.3f (median steps: %.3f)",
            r,
            lit,
            bare,
            lit / bare,
            lt.step_rate / bt.step_rate,
        )
    lit = statistics.median(r["images_per_s"] for r in rounds)
    bare = statistics.median(r["bare_images_per_s"] for r in rounds)
    train_flops = 3.0 * forward_flops(cfg.arch, num_classes=cfg.num_classes)
    peak = peak_flops(cfg.torch_device, cfg.precision)
    return {
        "bench": "model",
        **{
            k: getattr(cfg, k)
            for k in (
                "arch",
                "batch",
                "precision",
                "channels_last",
                "compile",
                "space_to_depth",
                "steps",
                "warmup",
                "rounds",
                "num_classes",
            )
        },
        "images_per_s": lit,
        "bare_images_per_s": bare,
        "ratio": statistics.median(r["ratio"] for r in rounds),
        "ratio_ci95": median_ci95([r["ratio"] for r in rounds]),
        "step_ratio": statistics.median(r["step_ratio"] for r in rounds),
        "method": "interleaved blocks in one fit",
        "train_gflops_per_image": train_flops / 1e9,
        "mfu": lit * train_flops / peak if peak else None,
        "bare_mfu": bare * train_flops / peak if peak else None,
        "peak_tflops": peak / 1e12 if peak else None,
        "per_round": rounds,
        "hardware": hardware(cfg.torch_device),
        "versions": runtime_versions(),
    }


def _eval_timing(cfg: ModelBench, crops: int) -> Timing:
    """The platform's test step on a synthetic (batch, crops, C, H, W) batch: each image's crops in one forward."""
    from convnets.models import get_model_info

    info = get_model_info(cfg.arch)
    batch = synthetic_batch(cfg.batch, (crops, *info.input_size), cfg.num_classes, cfg.torch_device)
    timer = WindowTimer(cfg.warmup, cfg.warmup + cfg.steps - 1, cfg.torch_device)
    trainer = pl.Trainer(
        accelerator="gpu" if cfg.torch_device.type == "cuda" else "cpu",
        devices=1,
        precision=cfg.precision,
        callbacks=[timer],
        logger=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        benchmark=cfg.torch_device.type == "cuda",
    )
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
        log.info(
            "round %d: 1 crop %.1f images/s, %d crops %.1f images/s, cost ratio %.2f",
            r,
            single,
            crops,
            multi,
            single / multi,
        )
    rate = statistics.median(r["images_per_s"] for r in rounds)
    return {
        "bench": "eval",
        "arch": cfg.arch,
        "batch": cfg.batch,
        "crops": crops,
        "precision": cfg.precision,
        "channels_last": cfg.channels_last,
        "steps": cfg.steps,
        "rounds": cfg.rounds,
        "images_per_s": rate,
        "crops_per_s": rate * crops,
        "single_images_per_s": statistics.median(r["single_images_per_s"] for r in rounds),
        "cost_ratio": statistics.median(r["cost_ratio"] for r in rounds),
        "target_cost_ratio": EVAL_COST_TARGET * crops / 10,
        "per_round": rounds,
        "hardware": hardware(cfg.torch_device),
        "versions": runtime_versions(),
    }


EVAL_COST_TARGET = 10.5  # 10 crops may cost at most 10.5x one crop per image (issue 9)

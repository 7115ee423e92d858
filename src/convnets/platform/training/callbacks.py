"""Callbacks: throughput, the run record, metrics.json + history, and the run's pictures."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from typing_extensions import override

from convnets.platform.training import plots
from convnets.platform.training.tracking import logged_wandb_step, record_wandb_step, run_info
from convnets.utils.console import wandb_line
from convnets.utils.files import write_json

log = logging.getLogger(__name__)


def _float_metrics(trainer: pl.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}


def first_conv(model: torch.nn.Module) -> torch.nn.Conv2d | None:
    conv = getattr(model, "conv1", None)
    if isinstance(conv, torch.nn.Conv2d):
        return conv
    return next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)


class ThroughputMonitor(pl.Callback):
    """Images/s (per device and overall), step time, data-wait fraction and MFU, once per epoch.

    Per step it only reads the host clock and adds the batch's host-side count of real samples
    (`n_valid`, from the epoch plan): no device sync, no collective. The first `warmup_steps` of
    each epoch are skipped (pipeline start-up, cuDNN autotuning, compilation). At the epoch's last
    batch it synchronizes the device once, then sums the ranks' counters in one all-reduce on the
    module's device (NCCL takes no CPU tensors), so padded ranks are counted right.

    Data wait is host time between the end of one step and the start of the next (fetching the
    batch, moving it to the device). Kernels run asynchronously, so it is the time the host
    could not queue work: when it exceeds 10% of the step, the GPU starves and the data path is
    the bottleneck.
    """

    def __init__(self, *, warmup_steps: int = 5) -> None:
        self.warmup_steps = warmup_steps
        self.last: dict[str, float] = {}
        self.flops_per_image: float | None = None  # training FLOPs: 3 x forward (backward ~ 2 x forward)
        self._reset()

    def _reset(self, skip: int = 0) -> None:
        self.skip, self.images, self.steps, self.wait = skip, 0, 0, 0.0
        self.start: float | None = None
        self.end: float | None = None
        self.images_dev: torch.Tensor | None = None  # for loaders without a host count

    @override
    def on_fit_start(self, trainer, pl_module) -> None:
        from convnets.models.flops import forward_flops

        spec = pl_module.input_spec
        size = (spec.channels, spec.image_size, spec.image_size)
        fwd = forward_flops(
            pl_module.hparams.arch,
            num_classes=pl_module.hparams.num_classes,
            input_size=size,
            **pl_module.model_options,
        )
        self.flops_per_image = 3.0 * fwd

    @override
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        steps = trainer.num_training_batches
        # Short epochs (tests, tiny data) still get a measurement: skip at most half of them.
        self._reset(skip=min(self.warmup_steps, int(steps) // 2) if steps != float("inf") else self.warmup_steps)

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if batch_idx == self.skip:
            self.start = now
        elif self.end is not None:
            self.wait += now - self.end

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.start is None:
            return
        if batch_idx + 1 >= trainer.num_training_batches and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # once per epoch: the window ends when the GPU is done
        self.end = time.perf_counter()
        self.steps += 1
        n = batch.get("n_valid") if isinstance(batch, dict) else None
        if n is not None:
            self.images += int(n)
        else:  # no host count from the loader: a device-side sum, read once at the epoch's end
            count = batch["valid"].sum() if isinstance(batch, dict) else torch.tensor(len(batch[0]))
            self.images_dev = count if self.images_dev is None else self.images_dev + count

    @override
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.start is None or self.end is None or self.steps == 0:
            return
        window = self.end - self.start
        images = float(self.images) + (float(self.images_dev) if self.images_dev is not None else 0.0)
        local = torch.tensor(
            [images, window, self.wait, float(self.steps)], dtype=torch.float64, device=pl_module.device
        )
        total = trainer.strategy.reduce(local, reduce_op="sum")  # one collective on the module's device
        images, window, wait, steps = (float(v) for v in total.cpu())
        world = trainer.world_size
        rate = images / max(window / world, 1e-9)  # ranks run concurrently: the mean window is the wall time
        self.last = {
            "images_per_s": rate,
            "images_per_s_per_device": rate / world,
            "step_ms": 1000 * window / max(steps, 1),
            "data_wait_fraction": wait / max(window, 1e-9),
            "epoch_seconds": window / world,
        }
        peak = peak_flops(pl_module.device, trainer.precision)
        if peak and self.flops_per_image:
            self.last["mfu"] = rate * self.flops_per_image / (peak * world)
        for key, value in self.last.items():
            pl_module.log(f"train_{key}", value, rank_zero_only=True, prog_bar=key in ("images_per_s", "mfu"))

    @override
    def on_fit_end(self, trainer, pl_module) -> None:
        if not self.last or not trainer.is_global_zero:
            return
        m = self.last
        mfu = f", MFU {100 * m['mfu']:.1f}%" if "mfu" in m else ""
        log.info(
            "throughput: %.0f images/s (%.0f per device x %d), step %.1f ms, data wait %.0f%%%s",
            m["images_per_s"],
            m["images_per_s_per_device"],
            trainer.world_size,
            m["step_ms"],
            100 * m["data_wait_fraction"],
            mfu,
        )
        if m["data_wait_fraction"] > 0.10:
            log.warning(
                "the data path is the bottleneck: %.0f%% of each step waits for the next batch; raise "
                "data.num_threads, decode on the GPU (data.device=gpu) or write resized shards",
                100 * m["data_wait_fraction"],
            )


# Dense peak FLOP/s where Lightning's table has none or a sparse figure (Lightning lists the H200's
# 2:4-sparse 2,000 TFLOP/s and no plain "NVIDIA H200"); both Hopper parts: 989 TFLOP/s dense bf16.
HOPPER_PEAK = {torch.bfloat16: 989.4e12, torch.float16: 989.4e12, "tfloat32": 494.7e12, torch.float32: 66.9e12}


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The device's dense peak FLOP/s for the run's precision (None where unknown, e.g. CPUs)."""
    if device.type != "cuda":
        return None
    from lightning_fabric.utilities.throughput import get_available_flops

    dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(str(precision).split("-")[0], torch.float32)
    name = torch.cuda.get_device_name(device).lower()
    if "h100" in name or "h200" in name:
        tf32 = dtype is torch.float32 and torch.get_float32_matmul_precision() != "highest"
        return HOPPER_PEAK["tfloat32" if tf32 else dtype]
    return get_available_flops(device, dtype)


class RunRecorder(pl.Callback):
    """Records what produced the run (resolved config, versions, git revision), per stage.

    Written to run_info.json in the run folder and next to the checkpoints, keyed by stage
    ("fit", "test", ...) so that testing a checkpoint does not erase how it was trained.
    """

    def __init__(self, run_dir: Path, config: dict) -> None:
        self.run_dir, self.config = Path(run_dir), config

    @rank_zero_only
    def _record(self, trainer: pl.Trainer) -> None:
        info = run_info(self.config)
        for path in (self.run_dir / "run_info.json", self.run_dir / "checkpoints" / "run_info.json"):
            record = json.loads(path.read_text()) if path.exists() else {}
            record[trainer.state.fn.value if trainer.state.fn else "run"] = info
            write_json(path, record)
        for logger in trainer.loggers:
            if isinstance(logger, RunWandbLogger):
                logger.fitting = trainer.state.fn == "fit"
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update(
                    {"versions": info["versions"], "git_revision": info["git_revision"], "resolved": self.config},
                    allow_val_change=True,
                )
                log.info(wandb_line(logger.experiment))

    @override
    def on_fit_start(self, trainer, pl_module) -> None:
        self._record(trainer)

    @override
    def on_train_start(self, trainer, pl_module) -> None:
        # After Lightning restored the loops: the step and epoch the run goes on from (Lightning's own
        # "Restoring states" line is among the library output the console leaves out).
        if trainer.ckpt_path and trainer.is_global_zero:
            log.info(
                "resumed from %s at step %d (epoch %d)", trainer.ckpt_path, trainer.global_step, trainer.current_epoch
            )

    @override
    def on_test_start(self, trainer, pl_module) -> None:
        self._record(trainer)


class RunReport(pl.Callback):
    """metrics.json (plain keys: test_top1, images_per_s, ...) and the PNG plots of the run folder.

    The history (one entry per epoch, one per validation) and the fit time so far travel in every
    checkpoint, so a run resumed any number of times (a requeue, `--ckpt_path`) reports each epoch
    once: the epochs of the checkpoint it resumed from, then its own. `fit_seconds` adds up the
    training time of every process that trained the run (not the time spent queued in between).
    """

    def __init__(self, run_dir: Path, throughput: ThroughputMonitor) -> None:
        self.run_dir, self.throughput = Path(run_dir), throughput
        self.history: list[dict] = []
        self.val_history: list[dict] = []  # one entry per validation, with its wall-clock time (time-to-accuracy)
        self.metrics: dict[str, float] = {}
        self.fit_start = 0.0
        self.fit_seconds_before = 0.0  # trained by earlier processes of this run (from the checkpoint)
        self._restored = False

    @override
    def state_dict(self) -> dict:
        elapsed = time.perf_counter() - self.fit_start if self.fit_start else 0.0
        return {
            "history": self.history,
            "val_history": self.val_history,
            "fit_seconds": self.fit_seconds_before + elapsed,
        }

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
        self.val_history = list(state_dict.get("val_history", []))
        self.fit_seconds_before = float(state_dict.get("fit_seconds", 0.0))
        self._restored = True

    @override
    def on_fit_start(self, trainer, pl_module) -> None:
        self.fit_start = time.perf_counter()
        if not self._restored and trainer.ckpt_path and trainer.is_global_zero:
            self._history_from_metrics_file(trainer.current_epoch)

    def _history_from_metrics_file(self, epoch: int) -> None:
        """A checkpoint written before histories travelled in checkpoints: take its epochs from metrics.json."""
        path = self.run_dir / "metrics.json"
        previous = json.loads(path.read_text()) if path.is_file() else {}
        self.history = [h for h in previous.get("history", []) if h.get("epoch", epoch) < epoch]
        self.val_history = [h for h in previous.get("val_history", []) if h.get("epoch", epoch) < epoch]

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, RunWandbLogger):
                    logger.commit_before(trainer.global_step)
        # Once per run, after the first step (the picture reads the batch back to the host).
        if batch_idx == 0 and trainer.current_epoch == 0 and trainer.is_global_zero:  # cheapest test first
            spec, classes = pl_module.input_spec, getattr(trainer.datamodule, "display_names", None)
            classes = classes or [str(i) for i in range(int(batch["labels"].max()) + 1)]
            plots.input_samples(
                batch["images"],
                batch["labels"],
                classes,
                spec.mean,
                spec.std,
                self.run_dir / "plots" / "train_samples.png",
            )

    @override
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            self.history.append({"epoch": trainer.current_epoch, **_float_metrics(trainer), **self.throughput.last})

    @override
    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking and trainer.state.fn == "fit":
            metrics = {k: v for k, v in _float_metrics(trainer).items() if k.startswith("val_")}
            self.val_history.append({"epoch": trainer.current_epoch, "unix_time": time.time(), **metrics})

    @override
    def on_fit_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        self.metrics.update(_float_metrics(trainer))
        self.metrics.update(self.throughput.last)
        self.metrics["fit_seconds"] = self.fit_seconds_before + time.perf_counter() - self.fit_start
        plots.learning_curves(self.history, self.run_dir / "plots" / "learning_curves.png")
        conv = first_conv(pl_module.net)
        if conv is not None:
            path = plots.conv_filters(conv.weight, self.run_dir / "plots" / "conv1_filters.png")
            self._log_image(trainer, "conv1_filters", path)
        self._write()

    @override
    def on_test_end(self, trainer, pl_module) -> None:
        matrix = pl_module.test_confusion.compute().cpu().numpy()  # synced across ranks
        if not trainer.is_global_zero:
            return
        self.metrics.update({k: v for k, v in _float_metrics(trainer).items() if k.startswith("test_")})
        classes = getattr(trainer.datamodule, "display_names", None) or [str(i) for i in range(len(matrix))]
        path = plots.confusion_matrix(matrix, classes, self.run_dir / "plots" / "confusion_matrix.png")
        self._log_image(trainer, "confusion_matrix", path)
        self._write()

    def _log_image(self, trainer: pl.Trainer, key: str, path: Path) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=key, images=[str(path)])

    def _write(self) -> None:
        existing = self.run_dir / "metrics.json"
        payload: dict = {}
        if existing.exists():  # `convnets test` after `convnets fit` adds to the same file
            payload = json.loads(existing.read_text())
        payload.update(self.metrics)
        if self.history:
            payload["history"] = self.history
        if self.val_history:
            payload["val_history"] = self.val_history
        write_json(existing, payload)


class RunWandbLogger(WandbLogger):
    """Lightning's W&B logger with W&B's step = the trainer's step, never below one logged before.

    Lightning's logger lets W&B count its own steps, which restart at 0 in every process of an
    offline run (each requeued job, each `--ckpt_path` resume): the run's steps went backwards. Here
    each row is logged at the trainer's step, and training rows below the highest step an earlier
    process of the run logged (a resume from an older checkpoint retrains those steps) are not logged
    again: W&B keeps the first attempt's rows for them, metrics.json the new ones. Rows of a test or
    validation run (`convnets test` counts its own steps from 0) go at the run's latest step.
    """

    def __init__(self, *, run_dir: Path, **kwargs) -> None:
        super().__init__(**kwargs)
        # Lightning always passes W&B the retired `anonymous` setting, and W&B warns on every run that it
        # has no effect: a line no user can act on. Read by wandb.init() when the run starts, not before.
        self._wandb_init.pop("anonymous", None)
        self._run_dir = Path(run_dir)
        self._floor: int | None = None  # read at the first row: the rank-0 process only
        self.fitting = True  # set by RunRecorder when a fit or a test starts
        self._open_step: int | None = None  # W&B holds a row open until a later step comes: see commit_before
        self._service_lost = False  # W&B's service process has ended: nothing more can be logged by this process

    def _log(self, row: dict, step: int, *, commit: bool) -> bool:
        """W&B's log, unless its service process has ended: Slurm's SIGTERM (a preemption, `scontrol
        requeue`) reaches that process too, and the training must still reach its next check and save."""
        if self._service_lost:
            return False
        try:
            self.experiment.log(row, step=step, commit=commit)
            return True
        except OSError as exc:  # the service's socket is closed: ConnectionResetError, BrokenPipeError
            self._service_lost = True
            log.warning(
                "W&B's service process has ended (%s): this process logs no more rows from step %d on; "
                "checkpoints and metrics.json are not affected",
                exc,
                step,
            )
            return False

    @rank_zero_only
    def commit_before(self, step: int) -> None:
        """Close the row W&B holds open, once the trainer is past its step (no more values come for it).

        W&B writes a row only when a later step is logged, up to log_every_n_steps steps later; a
        SIGTERM in between (which also ends W&B's service) would lose it. One call per logged row.
        """
        if self._open_step is not None and self._open_step < step:
            self._log({}, self._open_step, commit=True)
            self._open_step = None

    @override
    @rank_zero_only
    def log_metrics(self, metrics, step: int | None = None) -> None:
        if step is None:
            return super().log_metrics(metrics, step)
        if self._floor is None:
            self._floor = logged_wandb_step(self._run_dir)
            if self._floor > step and self.fitting:  # a fit resumed from a checkpoint older than the run's last row
                log.info(
                    "W&B run %s already holds steps up to %d: rows before it are not logged again",
                    self.version,
                    self._floor,
                )
        if step < self._floor:
            if self.fitting:
                return
            step = self._floor
        from lightning_fabric.utilities.logger import _add_prefix

        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        if self._log({**metrics, "trainer/global_step": step}, step, commit=False):
            self._open_step = step
            record_wandb_step(self._run_dir, step)  # a few bytes per logged row (every log_every_n_steps steps)


class PlatformProgressBar(TQDMProgressBar):
    """Lightning's bar, refreshed by the clock (at most every `min_interval_s`), showing the last step's loss.

    Per step it reads the host clock and nothing else. A refresh formats and writes the bar and
    reads the loss back from the device (one sync): every 0.5 s that is a few per second whatever
    the step time, where a fixed step count refreshes a 10 ms GPU step 5 times a second and a 2 s
    CPU AlexNet step once in 40 s. The loss comes from the step's own output, so the training step
    need not `self.log(..., prog_bar=True)` it: Lightning converts every progress-bar metric with
    `.item()` after EVERY step (a host-device sync per step on a GPU, even on steps that did not log).
    """

    def __init__(self, *, min_interval_s: float = 0.5) -> None:
        super().__init__(refresh_rate=1)
        self.min_interval_s = min_interval_s
        self._last_refresh = 0.0
        self._train_loss: str | None = None  # the last refresh's loss, also shown at the epoch's end

    @override
    def init_sanity_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)  # the sanity check's two batches are not worth a line

    @override
    def init_validation_tqdm(self) -> Tqdm:
        # One line per run, not one per validation: the epoch's val_top1 shows in the training bar.
        return Tqdm(disable=True)

    @override
    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._last_refresh = time.perf_counter()

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar, n = self.train_progress_bar, batch_idx + 1
        if bar is None or not self.is_enabled:
            return
        now = time.perf_counter()
        if now - self._last_refresh < self.min_interval_s and n != bar.total:
            return
        self._last_refresh = now
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if torch.is_tensor(loss):
            self._train_loss = f"{float(loss):.3f}"  # one sync per refresh
        bar.n = n
        bar.set_postfix(self.get_metrics(trainer, pl_module))  # one write (Lightning's: count, then postfix)

    @override
    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        if self._train_loss is not None:
            metrics["train_loss"] = self._train_loss
        return metrics


def platform_callbacks(run_dir: Path, config: dict, *, progress_bar: bool = True) -> list[pl.Callback]:
    """What every training run gets: checkpoints (last + best), throughput, the run record and report."""
    run_dir = Path(run_dir)
    throughput = ThroughputMonitor()
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="best-epoch{epoch:03d}",
            monitor="val_top1",
            mode="max",
            save_top_k=1,
            auto_insert_metric_name=False,
        ),
        # last.ckpt after EVERY validation, its own callback: Lightning 2.6's `save_last=True` beside a
        # monitor rewrites last.ckpt only when the best one improves, so a run on a plateau (the
        # paper's schedule waits for one) would resume epochs behind.
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1, enable_version_counter=False
        ),
        throughput,
        RunRecorder(run_dir, config),
        RunReport(run_dir, throughput),
    ]
    if progress_bar:
        callbacks.append(PlatformProgressBar())
    return callbacks

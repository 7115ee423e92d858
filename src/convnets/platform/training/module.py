"""The LightningModule: any registered model, cross-entropy, SGD + momentum, top-1/top-5.

Batches come from the data module as {"images", "labels", "valid", "n_valid"}; `valid` is False
for the padding that gives every DDP rank the same number of steps (always at the end of a
rank's last batch), and `n_valid` is the same count as a host integer, known from the epoch plan.
Padding is ignored by the loss (ignore_index) and the metrics, and BatchNorm never sees it, so
each real sample counts exactly once per epoch.

The training step issues no host-device sync (no .item(), int(tensor) or boolean indexing):
on a GPU the host can then queue step k+1 while step k runs. tests/unit/test_no_sync.py holds it.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from typing_extensions import override

from convnets.data_pipelines.loading.augment import InputSpec
from convnets.models import create_model, get_model_info
from convnets.models.space_to_depth import use_space_to_depth_stem
from convnets.platform.training.calibration import Calibration
from convnets.platform.training.metrics import ConfusionMatrix, TopKAccuracy, WeightedMean
from convnets.platform.training.multicrop import Average, average_crops, has_dropout, mc_dropout_probs
from convnets.platform.training.recipe import OptimConfig, PlateauState, lr_factor, parameter_groups, scaled

log = logging.getLogger(__name__)
IGNORE = -100  # cross_entropy's ignore_index: the label given to padding samples
# Lightning's self.log costs ~1-2 ms of host time per call (measured on 2 CPU cores), more than
# a whole AlexNet step on an H100: the step logs its loss only on the steps where a logger writes
# it (and the epoch's last, for the learning curves); the progress bar reads the step's output
# (callbacks.PlatformProgressBar); metrics are logged once per epoch from device-side state.


@dataclass
class PerfConfig:
    """Speed switches that do not change the arithmetic's meaning (precision is the Trainer's)."""

    channels_last: bool = False  # NHWC: what cuDNN's tensor-core convolutions want
    compile: bool = False  # torch.compile the network (first steps are slow while it compiles)
    tf32: bool | None = None  # TF32 matmuls/convolutions on Ampere+; None leaves torch's default
    # The strided stem convolution as a stride-1 one over pixel blocks: same output, tensor-core friendly
    # (AlexNet on an H100, bf16, compiled: 22% -> 32% MFU); the parameters and checkpoints are unchanged.
    space_to_depth: bool = False


def masked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, *, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy over the valid samples only (0 when a batch has none); no host sync."""
    targets = labels.masked_fill(~valid, IGNORE)
    total = F.cross_entropy(
        logits.float(), targets, ignore_index=IGNORE, reduction="sum", label_smoothing=label_smoothing
    )
    return total / valid.sum().clamp(min=1)


def valid_count(batch: dict) -> int:
    """Valid samples in the batch as a host integer: from the loader's plan, else one sync."""
    n = batch.get("n_valid")
    return int(batch["valid"].sum()) if n is None else int(n)  # int(tensor): loaders without a plan only


@dataclass
class EvalOptions:
    """How the test step predicts (set by `convnets evaluate`; not a hyperparameter of the model)."""

    average: Average = "softmax"  # multi-crop: mean of the crops' softmax, or softmax of the mean logit
    mc_dropout: int = 0  # > 0: also the lecture slides' option 1, this many dropout masks per image
    keep_topk: bool = False  # keep each sample's top-5 classes and probabilities (the example grid)


@contextlib.contextmanager
def frozen_batchnorm(net: torch.nn.Module, enabled: bool):
    """BatchNorm layers in eval mode (running statistics, no update) for the duration.

    Disabled (every step but a nearly all-padding one) it does nothing: no walk over the modules.
    """
    layers = (
        [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
        if enabled
        else []
    )
    for m in layers:
        m.eval()
    try:
        yield
    finally:
        for m in layers:
            m.train()


class ClassifierModule(pl.LightningModule):
    """Image classification with a model from the registry."""

    def __init__(
        self,
        *,
        arch: str = "lenet5",
        num_classes: int | None = None,
        image_size: int | None = None,
        ablate: str | None = None,
        norm: str | None = None,
        pool: str | None = None,
        dropout: float | None = None,
        init: str | None = None,
        optim: OptimConfig | None = None,
        perf: PerfConfig | None = None,
    ) -> None:
        """
        Args:
            arch: registered model name (`convnets models` lists them).
            num_classes: output classes; default: read from the data's manifest.
            image_size: input side in pixels; default: the model's declared size.
            ablate: AlexNet family: remove layers ("fc7", "fc6_fc7", "conv3_conv4_fc6_fc7").
            norm: AlexNet family: "lrn", "lcn", "batch" or "none" instead of the model's default.
            pool: AlexNet family: "overlap" (3x3 stride 2) or "nonoverlap" (2x2 stride 2).
            dropout: AlexNet family: dropout probability on FC6/FC7 (0 disables).
            init: AlexNet family: "kaiming" or "paper" (N(0, 0.01), biases 1 in conv2/4/5 and hidden FC).
            optim: optimiser, schedule, linear scaling, label smoothing.
            perf: channels_last, torch.compile, TF32.
        """
        super().__init__()
        # A checkpoint stores the dataclasses as dicts; LightningCLI hands over the dataclasses.
        self.optim = OptimConfig(**optim) if isinstance(optim, dict) else (optim or OptimConfig())
        self.perf = PerfConfig(**perf) if isinstance(perf, dict) else (perf or PerfConfig())
        self.save_hyperparameters(ignore=["optim", "perf"])
        self.hparams["optim"], self.hparams["perf"] = asdict(self.optim), asdict(self.perf)
        self.info = get_model_info(arch)  # fails now, with the valid names, on a typo
        options = {"ablate": ablate, "norm": norm, "pool": pool, "dropout": dropout, "init": init}
        self.model_options = {k: v for k, v in options.items() if v is not None}
        self.plateau = PlateauState()
        self.eval_options = EvalOptions()
        self.classes: list[str] | None = None  # class names, recorded in checkpoints when the data knows them
        self.test_topk: list[torch.Tensor] = []  # per test batch: (n, 2 + 2k) rows, see test_step
        self.net: torch.nn.Module | None = None
        if num_classes is not None:
            self._build(num_classes)

    @property
    def input_spec(self) -> InputSpec:
        c, h, _ = self.info.input_size
        return InputSpec(
            channels=c,
            image_size=self.hparams.image_size or h,
            mean=self.info.mean,
            std=self.info.std,
            crop_fraction=self.info.crop_fraction,
        )

    def _build(self, num_classes: int) -> None:
        self.net = create_model(self.hparams.arch, num_classes=num_classes, **self.model_options)
        if self.perf.space_to_depth:
            use_space_to_depth_stem(self.net)
        if self.perf.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.hparams["num_classes"] = num_classes  # so load_from_checkpoint rebuilds the same net
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_top1", TopKAccuracy(1))
            setattr(self, f"{stage}_top5", TopKAccuracy(5))
        self.val_loss = WeightedMean()
        self.test_top1_1crop, self.test_top5_1crop = TopKAccuracy(1), TopKAccuracy(5)
        self.test_confusion = ConfusionMatrix(num_classes)
        self.test_calibration = Calibration()
        self.test_mc_top1, self.test_mc_top5, self.test_mc_calibration = TopKAccuracy(1), TopKAccuracy(5), Calibration()

    @override
    def setup(self, stage: str) -> None:
        if self.net is None:
            datamodule = getattr(self.trainer, "datamodule", None)
            if datamodule is None or not hasattr(datamodule, "num_classes"):
                raise ValueError("model.num_classes is unset and the data module does not provide it")
            self._build(datamodule.num_classes)
        if self.perf.tf32 is not None:  # process-wide switches, set from this run's config
            torch.backends.cuda.matmul.allow_tf32 = self.perf.tf32
            torch.backends.cudnn.allow_tf32 = self.perf.tf32
        if self.perf.compile and stage == "fit":
            self.net.compile()  # in place: state_dict keys stay those of the plain network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.perf.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    @override
    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        # A batch already on the device (DALI's GPU pipelines, a benchmark's resident batch) skips
        # Lightning's walk over the collection (~50 us of host time a step on 2 CPU cores).
        if isinstance(batch, dict) and all(v.device == device for v in batch.values() if torch.is_tensor(v)):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    @override
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images, labels, valid = batch["images"], batch["labels"], batch["valid"]
        n, size = valid_count(batch), labels.shape[0]
        if 2 <= n < size:  # padding is a suffix: drop it, so BatchNorm's batch statistics never see it
            images, labels, valid = images[:n], labels[:n], valid[:n]
        # Under 2 real samples BatchNorm cannot form batch statistics: use its running ones.
        with frozen_batchnorm(self.net, enabled=n < min(2, size)):
            logits = self(images)
        loss = masked_cross_entropy(logits, labels, valid, label_smoothing=self.optim.label_smoothing)
        self.train_top1.update(logits.detach(), labels, valid)
        last = batch_idx + 1 == self.trainer.num_training_batches
        every = self.trainer.log_every_n_steps  # 0: the logger writes no step metrics
        if last or (every and (self.global_step + 1) % every == 0):
            # Not prog_bar: Lightning would .item() a progress-bar metric after every later step.
            self.log("train_loss", loss, batch_size=max(n, 1))
        if last:  # once: Lightning computes it at the epoch's end
            self.log("train_top1", self.train_top1, on_step=False, on_epoch=True)
        return loss

    @override
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images, labels, valid = batch["images"], batch["labels"], batch["valid"]
        logits = self(images)
        self.val_loss.update(masked_cross_entropy(logits, labels, valid), valid.sum())
        self.val_top1.update(logits, labels, valid)
        self.val_top5.update(logits, labels, valid)

    @override
    def on_test_start(self) -> None:
        opts = self.eval_options
        if opts.mc_dropout and not has_dropout(self.net):
            raise ValueError(f"--mc-dropout {opts.mc_dropout}: model {self.hparams.arch!r} has no dropout layers")
        self.test_topk = []

    @override
    def test_step(self, batch: dict, batch_idx: int) -> None:
        images, labels, valid = batch["images"], batch["labels"], batch["valid"]
        n, size = valid_count(batch), labels.shape[0]
        if n == 0:  # a rank's all-padding last batch: nothing to predict
            return
        if n < size:  # padding is a suffix: drop it (no wasted forward; BatchNorm never sees it)
            images, labels, valid = images[:n], labels[:n], valid[:n]
        if images.dim() == 4:  # single crop: (B, C, H, W) -> (B, 1, C, H, W)
            images = images.unsqueeze(1)
        b, k = images.shape[:2]
        opts = self.eval_options
        # All crops of all images in one forward. Crop 0 is the centre crop, which gives the
        # single-crop figures in the same pass (Krizhevsky et al. 2012, section 4.1).
        logits = self(images.flatten(0, 1)).float().view(b, k, -1)
        probs = average_crops(logits, opts.average)
        for name, p in (("", probs), ("_1crop", logits[:, 0].softmax(-1))):
            for top in ("top1", "top5"):
                getattr(self, f"test_{top}{name}").update(p, labels, valid)
        self.test_confusion.update(probs, labels, valid)
        self.test_calibration.update(probs, labels, valid)
        if opts.mc_dropout:
            mc = mc_dropout_probs(self, self.net, images, samples=opts.mc_dropout, average=opts.average)
            for metric in (self.test_mc_top1, self.test_mc_top5, self.test_mc_calibration):
                metric.update(mc, labels, valid)
        if opts.keep_topk:
            top = probs.topk(min(5, probs.shape[-1]), dim=-1)
            index = batch["index"][:n] if "index" in batch else torch.full_like(labels, -1)
            self.test_topk.append(
                torch.cat(
                    [
                        index.unsqueeze(1).double(),
                        labels.unsqueeze(1).double(),
                        top.indices.double(),
                        top.values.double(),
                    ],
                    1,
                )
            )

    # Epoch-level logging: Lightning computes each metric (one all-reduce of its state) and resets it.
    @override
    def on_validation_epoch_end(self) -> None:
        self.log("val_loss", self.val_loss)
        self.log("val_top1", self.val_top1, prog_bar=True)
        self.log("val_top5", self.val_top5)

    @override
    def on_test_epoch_end(self) -> None:
        for name in ("test_top1", "test_top5", "test_top1_1crop", "test_top5_1crop"):
            self.log(name, getattr(self, name))

    # -- optimisation ---------------------------------------------------------------------------
    def global_batch(self) -> int:
        datamodule = getattr(self.trainer, "datamodule", None)
        if hasattr(datamodule, "train_batch_size"):  # a resumed run's per-rank batch keeps its global batch
            per_rank = datamodule.train_batch_size()
        else:
            per_rank = getattr(getattr(datamodule, "hparams", None), "batch_size", None)
        if per_rank is None:
            raise ValueError("model.optim.reference_batch needs the data module's batch_size to scale lr")
        return int(per_rank) * self.trainer.world_size * self.trainer.accumulate_grad_batches

    @override
    def configure_optimizers(self):
        o = self.optim
        lr = o.lr
        if o.reference_batch is not None:
            lr, o = scaled(o, self.global_batch())
            log.info(
                "linear scaling rule: lr %.4g x %d / %d = %.4g (warm-up from %.3g x that)",
                self.optim.lr,
                self.global_batch(),
                o.reference_batch,
                lr,
                o.warmup_start,
            )
        optimizer = torch.optim.SGD(parameter_groups(self.net, o), lr=lr, momentum=o.momentum, nesterov=o.nesterov)
        # The horizon in optimizer steps, right for max_epochs and max_steps alike.
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        per_epoch = max(self.trainer.num_training_batches // self.trainer.accumulate_grad_batches, 1)
        if per_epoch > total or per_epoch >= 2**62:  # infinite/unknown epoch length: the horizon is one epoch
            per_epoch = total
        epochs = total / per_epoch
        # Stepped every batch, in fractional epochs: a warm-up ramps smoothly (an epoch-wise ramp
        # jumps 10x at its end, enough to blow up an AlexNet without LRN at lr 0.03).
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(o, s / per_epoch, epochs, self.plateau.drops)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @override
    def on_train_epoch_end(self) -> None:
        # Validation has run inside this epoch; val_top1 is already reduced over ranks, so every
        # rank takes the same decision.
        val = self.trainer.callback_metrics.get("val_top1")
        if self.optim.schedule == "plateau" and val is not None and self.plateau.observe(float(val), self.optim):
            log.info(
                "val_top1 plateaued: learning rate divided (%d of at most %d)",
                self.plateau.drops,
                self.optim.plateau_max_drops,
            )

    @override
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["plateau"] = asdict(self.plateau)
        classes = self.classes or getattr(getattr(self._trainer, "datamodule", None), "classes", None)
        if classes:  # `convnets evaluate` checks the shards' class names against these
            checkpoint["classes"] = list(classes)

    @override
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Before Lightning loads the weights: another model's checkpoint is a one-line input error,
        # not a page of missing/unexpected state_dict keys.
        from convnets.errors import CheckpointError

        theirs = checkpoint.get("hyper_parameters") or {}
        for key in ("arch", "num_classes"):
            if theirs.get(key) is not None and self.hparams.get(key) is not None and theirs[key] != self.hparams[key]:
                raise CheckpointError(
                    f"the checkpoint is of {key} {theirs[key]!r}, this run has {self.hparams[key]!r}; "
                    f"pass --model.{key} {theirs[key]} or another --ckpt_path"
                )
        self.plateau = PlateauState(**checkpoint.get("plateau", {}))
        self.classes = checkpoint.get("classes")

"""The LightningModule: any registered model, cross-entropy, SGD + momentum, top-1/top-5.

Batches come from the data module as {"images", "labels", "valid"}; `valid` is False for the
padding that gives every DDP rank the same number of steps, and is masked out of the loss and
every metric, so each real sample counts exactly once per epoch.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from typing_extensions import override

from convnets.data_pipelines.augment import InputSpec
from convnets.models import create_model, get_model_info


@dataclass
class OptimConfig:
    """SGD with momentum and weight decay, and its learning-rate schedule (stepped per epoch)."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4  # the AlexNet paper's value
    nesterov: bool = False
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    step_epochs: int = 30  # "step": multiply by gamma every step_epochs (AlexNet: /10 on plateau)
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up from lr/10 over this many epochs (per step)


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the valid samples only (0 when a batch has none)."""
    losses = F.cross_entropy(logits, labels, reduction="none")
    return (losses * valid).sum() / valid.sum().clamp(min=1)


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
            optim: optimiser and schedule settings.
        """
        super().__init__()
        # A checkpoint stores the dataclass as a dict; LightningCLI hands over the dataclass.
        self.optim = OptimConfig(**optim) if isinstance(optim, dict) else (optim or OptimConfig())
        self.save_hyperparameters(ignore=["optim"])
        self.hparams["optim"] = asdict(self.optim)
        self.info = get_model_info(arch)  # fails now, with the valid names, on a typo
        options = {"ablate": ablate, "norm": norm, "pool": pool, "dropout": dropout, "init": init}
        self.model_options = {k: v for k, v in options.items() if v is not None}
        self.net: torch.nn.Module | None = None
        if num_classes is not None:
            self._build(num_classes)

    @property
    def input_spec(self) -> InputSpec:
        c, h, _ = self.info.input_size
        return InputSpec(
            channels=c, image_size=self.hparams.image_size or h, mean=self.info.mean, std=self.info.std,
            crop_fraction=self.info.crop_fraction,
        )

    def _build(self, num_classes: int) -> None:
        self.net = create_model(self.hparams.arch, num_classes=num_classes, **self.model_options)
        self.hparams["num_classes"] = num_classes  # so load_from_checkpoint rebuilds the same net
        top5 = min(5, num_classes)
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_top1", MulticlassAccuracy(num_classes, top_k=1, average="micro"))
            setattr(self, f"{stage}_top5", MulticlassAccuracy(num_classes, top_k=top5, average="micro"))
        self.test_top1_1crop = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.test_top5_1crop = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self.test_confusion = MulticlassConfusionMatrix(num_classes)

    @override
    def setup(self, stage: str) -> None:
        if self.net is None:
            datamodule = getattr(self.trainer, "datamodule", None)
            if datamodule is None or not hasattr(datamodule, "num_classes"):
                raise ValueError("model.num_classes is unset and the data module does not provide it")
            self._build(datamodule.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    @override
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels, valid = batch["images"], batch["labels"], batch["valid"]
        logits = self(images)
        loss = masked_cross_entropy(logits, labels, valid)
        n = int(valid.sum())
        self.train_top1(logits[valid], labels[valid])
        self.log("train_loss", loss, prog_bar=True, batch_size=max(n, 1), sync_dist=False)
        self.log("train_top1", self.train_top1, on_step=False, on_epoch=True, batch_size=max(n, 1))
        return loss

    @override
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        images, labels, valid = batch["images"], batch["labels"], batch["valid"]
        logits = self(images)
        n = max(int(valid.sum()), 1)
        self.log("val_loss", masked_cross_entropy(logits, labels, valid), batch_size=n, sync_dist=True)
        self.val_top1(logits[valid], labels[valid])
        self.val_top5(logits[valid], labels[valid])
        self.log("val_top1", self.val_top1, prog_bar=True, batch_size=n)
        self.log("val_top5", self.val_top5, batch_size=n)

    @override
    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        images, labels, valid = batch["images"], batch["labels"][batch["valid"]], batch["valid"]
        if images.dim() == 4:  # single crop: (B, C, H, W) -> (B, 1, C, H, W)
            images = images.unsqueeze(1)
        b, k = images.shape[:2]
        # Multi-crop: average the softmax over the crops (Krizhevsky et al. 2012, section 4.1);
        # crop 0 is the centre crop, which gives the single-crop figures in the same pass.
        probs = self(images.flatten(0, 1)).softmax(-1).view(b, k, -1)[valid]
        n = max(int(valid.sum()), 1)
        for name, p in (("", probs.mean(1)), ("_1crop", probs[:, 0])):
            getattr(self, f"test_top1{name}")(p, labels)
            getattr(self, f"test_top5{name}")(p, labels)
            self.log(f"test_top1{name}", getattr(self, f"test_top1{name}"), batch_size=n)
            self.log(f"test_top5{name}", getattr(self, f"test_top5{name}"), batch_size=n)
        self.test_confusion.update(probs.mean(1), labels)

    @override
    def configure_optimizers(self):
        o = self.optim
        decay, no_decay = [], []
        for name, p in self.net.named_parameters():
            # Decay weights only: decaying biases and norm gains pulls them to 0 for no regularizing gain.
            (no_decay if p.ndim <= 1 else decay).append(p)
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
        epochs = max(int(self.trainer.max_epochs or 1), 1)
        # Stepped every batch, in fractional epochs: a warm-up ramps smoothly (an epoch-wise ramp
        # jumps 10x at its end, enough to blow up an AlexNet without LRN at lr 0.03).
        steps_per_epoch = max(int(self.trainer.estimated_stepping_batches) // epochs, 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(o, s / steps_per_epoch, epochs))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def lr_factor(o: OptimConfig, epoch: float, epochs: int) -> float:
    """Multiplier of the base learning rate at (fractional, 0-based) `epoch`."""
    if epoch < o.warmup_epochs:
        return 0.1 + 0.9 * epoch / o.warmup_epochs
    if o.schedule == "step":
        return o.gamma ** (int(epoch) // o.step_epochs)
    if o.schedule == "cosine":
        span = max(epochs - o.warmup_epochs, 1)
        return 0.5 * (1 + math.cos(math.pi * (epoch - o.warmup_epochs) / span))
    return 1.0

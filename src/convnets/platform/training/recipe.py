"""Optimiser and learning-rate recipe: SGD + momentum, the papers' schedules, the linear scaling rule.

Everything here is host-side arithmetic on Python numbers (no tensors): the schedule is a pure
function of the step, so it costs nothing per step and resumes exactly from a checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

# Parameters the papers never decay: 1-D ones (biases, norm gains and shifts) and LeNet-5's RBF
# centres (the output codes: decaying them pulls every class towards the same point).
NO_DECAY_NAMES = ("centres",)


@dataclass
class OptimConfig:
    """SGD with momentum and weight decay, and its learning-rate schedule (stepped every batch).

    lr is the rate for `reference_batch` images per step; with reference_batch set, the rate used
    is lr x global_batch / reference_batch (Goyal et al. 2017's linear scaling rule), so a recipe
    written for 1 GPU scales to N GPUs by changing devices alone.
    """

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4  # the AlexNet paper's value
    nesterov: bool = False
    decay_all: bool = False  # True: decay biases, norm gains and RBF centres too (the default spares them)
    reference_batch: int | None = None  # linear scaling rule: lr is for this global batch
    schedule: Literal["cosine", "step", "multistep", "plateau", "constant"] = "cosine"
    step_epochs: int = 30  # "step": multiply by gamma every step_epochs
    milestones: list[float] = field(default_factory=list)  # "multistep": epochs at which to multiply by gamma
    gamma: float = 0.1
    plateau_patience: int = 2  # "plateau": validation checks without improvement before dividing
    plateau_threshold: float = 1e-3  # "plateau": smallest val_top1 gain that counts as improvement
    plateau_max_drops: int = 3  # "plateau": the AlexNet paper divided by 10 three times
    warmup_epochs: float = 0.0  # linear warm-up (per step) from warmup_start x lr over this many epochs
    # None: from the unscaled rate when the linear scaling rule applies (Goyal et al.: ramp from
    # lr to k x lr), else from lr / 10.
    warmup_start: float | None = None
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "lr": self.lr > 0,
            "momentum": 0 <= self.momentum < 1,
            "weight_decay": self.weight_decay >= 0,
            "gamma": 0 < self.gamma <= 1,
            "warmup_epochs": self.warmup_epochs >= 0,
            "warmup_start": self.warmup_start is None or 0 < self.warmup_start <= 1,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "step_epochs": self.step_epochs >= 1,
            "reference_batch": self.reference_batch is None or self.reference_batch >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"model.optim.{bad[0]}={getattr(self, bad[0])!r} is out of range")
        if self.schedule == "multistep" and not self.milestones:
            raise ValueError("model.optim.schedule=multistep needs model.optim.milestones (epochs), e.g. [30, 60, 80]")
        if self.nesterov and self.momentum == 0:
            raise ValueError("model.optim.nesterov needs momentum > 0")


@dataclass
class PlateauState:
    """ "Divide by 10 when the validation error stops improving" (Krizhevsky et al. 2012, section 5)."""

    best: float = -math.inf
    bad_checks: int = 0
    drops: int = 0

    def observe(self, val_top1: float, o: OptimConfig) -> bool:
        """Record one validation result; True when the rate was divided just now."""
        if val_top1 > self.best + o.plateau_threshold:
            self.best, self.bad_checks = val_top1, 0
            return False
        self.bad_checks += 1
        if self.bad_checks >= o.plateau_patience and self.drops < o.plateau_max_drops:
            self.drops, self.bad_checks = self.drops + 1, 0
            return True
        return False


def lr_factor(o: OptimConfig, epoch: float, epochs: float, plateau_drops: int = 0) -> float:
    """Multiplier of the (scaled) base rate at fractional, 0-based `epoch` of an `epochs`-long run."""
    if epoch < o.warmup_epochs:
        start = 0.1 if o.warmup_start is None else o.warmup_start
        return start + (1 - start) * epoch / o.warmup_epochs
    if o.schedule == "step":
        return o.gamma ** (int(epoch) // o.step_epochs)
    if o.schedule == "multistep":
        return o.gamma ** sum(epoch >= m for m in o.milestones)
    if o.schedule == "plateau":
        return o.gamma**plateau_drops
    if o.schedule == "cosine":
        span = max(epochs - o.warmup_epochs, 1e-9)
        return 0.5 * (1 + math.cos(math.pi * min((epoch - o.warmup_epochs) / span, 1.0)))
    return 1.0


def parameter_groups(net: torch.nn.Module, o: OptimConfig) -> list[dict]:
    """Two groups: decayed weights, and the parameters the recipe spares (see NO_DECAY_NAMES)."""
    decay, spared = [], []
    for name, p in net.named_parameters():
        keep = p.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES
        (spared if keep and not o.decay_all else decay).append(p)
    return [{"params": decay, "weight_decay": o.weight_decay}, {"params": spared, "weight_decay": 0.0}]


def scaled(o: OptimConfig, global_batch: int) -> tuple[float, OptimConfig]:
    """The base rate after the linear scaling rule, and the config with its warm-up start resolved."""
    if o.reference_batch is None:
        return o.lr, o
    k = global_batch / o.reference_batch
    start = o.warmup_start if o.warmup_start is not None else min(1.0, 1.0 / k)
    return o.lr * k, replace(o, warmup_start=start)

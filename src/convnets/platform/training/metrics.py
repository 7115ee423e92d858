"""Top-k accuracy and a confusion matrix that ignore padding without a host-device sync.

torchmetrics' classes validate their arguments and drop ignored targets with boolean indexing,
each a CPU-GPU sync point per update; a training step that syncs cannot queue the next one while
the GPU works. These states are device tensors updated with arithmetic only; Lightning reduces
them across ranks (sum) when the epoch's value is computed, so DDP results equal a single
process's, padding excluded.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


class TopKAccuracy(Metric):
    """Fraction of valid samples whose label is among the k highest scores."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> None:
        k = min(self.k, scores.shape[-1])
        hit = (scores.topk(k, dim=-1).indices == labels.unsqueeze(-1)).any(-1)
        self.correct += (hit & valid).sum()
        self.total += valid.sum()

    def compute(self) -> torch.Tensor:
        return self.correct.double().div(self.total.clamp(min=1)).float()


class ConfusionMatrix(Metric):
    """counts[label, prediction] over valid samples (scatter-add: no bincount size sync)."""

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.add_state("counts", default=torch.zeros(num_classes * num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> None:
        cell = labels * self.num_classes + scores.argmax(-1)
        self.counts.index_add_(0, cell, valid.long())

    def compute(self) -> torch.Tensor:
        return self.counts.view(self.num_classes, self.num_classes)


class WeightedMean(Metric):
    """Mean of per-batch values weighted by each batch's count of valid samples (device tensors)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, weight: torch.Tensor) -> None:
        self.total += value.detach().double() * weight
        self.count += weight

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp(min=1)).float()

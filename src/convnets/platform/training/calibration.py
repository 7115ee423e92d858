"""Calibration of predicted probabilities: negative log-likelihood and expected calibration error.

ECE (Naeini et al. 2015; Guo et al. 2017): the valid samples are binned by confidence (the top
probability) into 15 equal-width bins; ECE = sum over bins of |accuracy - mean confidence| x the
bin's share of samples. The states are per-bin sums (device tensors, no host sync per update),
summed across DDP ranks, so the result does not depend on how samples were split between ranks.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

BINS = 15


class Calibration(Metric):
    """Accuracy, NLL and ECE of probability vectors; compute() returns a dict of host values."""

    full_state_update = False

    def __init__(self, bins: int = BINS) -> None:
        super().__init__()
        self.bins = bins
        self.add_state("count", default=torch.zeros(bins, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("correct", default=torch.zeros(bins, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("confidence", default=torch.zeros(bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("nll", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> None:
        conf, pred = probs.float().max(-1)
        # bin i holds confidences in (i/bins, (i+1)/bins]; confidence 1/bins or below goes to bin 0
        which = (conf * self.bins).ceil().long().sub(1).clamp(0, self.bins - 1)
        w = valid.long()
        self.count.index_add_(0, which, w)
        self.correct.index_add_(0, which, ((pred == labels) & valid).long())
        self.confidence.index_add_(0, which, conf.double() * w)
        p_true = probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1).double()
        self.nll += -(p_true.clamp_min(1e-30).log() * w).sum()

    def compute(self) -> dict:
        count = self.count.double()
        n = count.sum().clamp(min=1)
        acc = self.correct.double() / count.clamp(min=1)
        conf = self.confidence / count.clamp(min=1)
        ece = ((acc - conf).abs() * count).sum() / n
        return {
            "top1": float(self.correct.sum() / n),
            "nll": float(self.nll / n),
            "ece": float(ece),
            "n": int(self.count.sum()),
            "bins": {"count": self.count.tolist(), "accuracy": acc.tolist(), "confidence": conf.tolist()},
        }

"""Which samples each rank reads in an epoch: exactly once across ranks, equal steps everywhere.

Every rank computes the same seeded permutation of the whole dataset for the epoch, then takes
every world_size-th entry starting at its rank. Rank lists differ in length by at most one, so
each is padded to ceil(N / world_size) with a repeat of one of its own samples marked invalid;
the training step masks invalid samples out of the loss and the metrics. All ranks therefore run
the same number of steps (no DDP hang at the epoch's end) and every sample counts exactly once.

The permutation depends only on (seed, epoch), so a run resumed at epoch e reads what an
uninterrupted run would have read, and the plan is a pure function: the seam for resuming
mid-epoch (skip the first k batches) later on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RankPlan:
    """One rank's reading order for one epoch."""

    indices: np.ndarray  # int64 sample indices into the split, length = padded length
    valid: np.ndarray  # bool, False for the padding that equalizes ranks
    batch_size: int

    @property
    def steps(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices and validity of batch `step` (the last batch may be short, equally on all ranks)."""
        lo = step * self.batch_size
        return self.indices[lo : lo + self.batch_size], self.valid[lo : lo + self.batch_size]


def epoch_permutation(num_samples: int, *, seed: int, epoch: int) -> np.ndarray:
    """The same permutation on every rank: seeded by (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def plan_rank(
    num_samples: int, *, rank: int, world_size: int, batch_size: int, seed: int, epoch: int, shuffle: bool
) -> RankPlan:
    """This rank's padded share of the epoch; see the module docstring for the guarantees."""
    if num_samples < 1:
        raise ValueError("the split holds no samples")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = epoch_permutation(num_samples, seed=seed, epoch=epoch) if shuffle else np.arange(num_samples)
    mine = order[rank::world_size]
    padded = math.ceil(num_samples / world_size)
    filler = mine[:1] if len(mine) else order[:1]  # a rank with no real sample repeats sample order[0]
    indices = np.concatenate([mine, np.repeat(filler, padded - len(mine))]).astype(np.int64)
    valid = np.arange(padded) < len(mine)
    return RankPlan(indices=indices, valid=valid, batch_size=batch_size)

"""Which samples each rank reads in an epoch: exactly once across ranks, equal steps everywhere.

Every rank computes the same seeded permutation of the whole dataset for the epoch, then takes
every world_size-th entry starting at its rank. Rank lists differ in length by at most one, so
each is padded to ceil(N / world_size) with a repeat of one of its own samples marked invalid;
the training step masks invalid samples out of the loss and the metrics. All ranks therefore run
the same number of steps (no DDP hang at the epoch's end) and every sample counts exactly once.

The permutation depends only on (seed, epoch), so a run resumed at epoch e reads what an
uninterrupted run would have read.

Resuming mid-epoch, on any number of ranks: rank r takes permutation entries r, r + W, r + 2W...,
so after s steps of B samples per rank, all ranks together have read the permutation's first
s x W x B entries: a prefix. The position is therefore one number, the samples consumed, and a
run resumed at that position on W' ranks splits the remaining suffix the same way (every W'-th
entry). With the global batch W x B kept, an epoch has ceil(N / (W x B)) steps on any W, so the
step count and the learning-rate schedule go on unchanged. On the same W the suffix plan is
exactly the tail of the uninterrupted one (padding included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RankPlan:
    """One rank's reading order for one epoch (or for its rest, from step `first_step` on)."""

    indices: np.ndarray  # int64 sample indices into the split, length = padded length
    valid: np.ndarray  # bool, False for the padding that equalizes ranks
    batch_size: int
    first_step: int = 0  # a resumed epoch: indices[0] is the first sample of this step of the epoch

    @property
    def steps(self) -> int:
        """Steps of the whole epoch (those before first_step included), the same on every rank."""
        return self.first_step + math.ceil(len(self.indices) / self.batch_size)

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices and validity of batch `step` of the epoch (the last may be short, equally on all ranks)."""
        lo = (step - self.first_step) * self.batch_size
        if lo < 0:
            raise IndexError(f"step {step} comes before this plan's first step {self.first_step}")
        return self.indices[lo : lo + self.batch_size], self.valid[lo : lo + self.batch_size]


def epoch_permutation(num_samples: int, *, seed: int, epoch: int) -> np.ndarray:
    """The same permutation on every rank: seeded by (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def plan_rank(
    num_samples: int,
    *,
    rank: int,
    world_size: int,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool,
    start: int = 0,
) -> RankPlan:
    """This rank's padded share of the epoch after the first `start` samples of its permutation
    (a multiple of the global batch world_size x batch_size); see the module docstring."""
    if num_samples < 1:
        raise ValueError("the split holds no samples")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    global_batch = world_size * batch_size
    if not 0 <= start < num_samples or start % global_batch:
        raise ValueError(
            f"cannot start an epoch of {num_samples} samples after {start}: "
            f"not a multiple of the global batch {global_batch} below {num_samples}"
        )
    order = epoch_permutation(num_samples, seed=seed, epoch=epoch) if shuffle else np.arange(num_samples)
    mine = order[start + rank :: world_size]
    padded = math.ceil((num_samples - start) / world_size)
    # Padding repeats the rank's first sample of the whole epoch (order[0] for a rank with none),
    # so a resumed epoch's padding is the uninterrupted one's.
    filler = order[rank : rank + 1] if rank < num_samples else order[:1]
    indices = np.concatenate([mine, np.repeat(filler, padded - len(mine))]).astype(np.int64)
    valid = np.arange(padded) < len(mine)
    return RankPlan(indices=indices, valid=valid, batch_size=batch_size, first_step=start // global_batch)


def consumed_samples(num_samples: int, *, steps: int, global_batch: int) -> int:
    """Samples of the epoch's permutation all ranks have read after `steps` steps (a prefix of it)."""
    return min(num_samples, steps * global_batch)

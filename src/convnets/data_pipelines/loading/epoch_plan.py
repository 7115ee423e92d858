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

Two orders (the plan deals, pads and resumes either the same way, since both are one permutation
of the split per (seed, epoch)):
- global (`epoch_permutation`): every sample anywhere; the best mix, but every shard is in use all
  epoch long, so a node-local cache smaller than the split refetches nearly every shard per epoch.
- block (`block_permutation`, like MosaicML Streaming's py1b or webdataset's shard shuffle): the
  shards in a seeded order, cut into windows of `window` consecutive shards, the samples shuffled
  within each window. At any point only one window's shards are being read, so a cache holding
  two windows (the one read, the one fetched ahead) reads each shard once per epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

ShuffleMode = Literal["global", "block"]
SHUFFLE_MODES: tuple[str, ...] = ("global", "block")
# Shards per block-shuffle window. 16 shards of 1,000 ImageNet images (~110 MB each) mix 16,000
# images (all 1,000 classes: the writer mixes classes into every shard) behind each batch, while
# the two windows a cache must hold (read + fetched ahead) take 3.5 GB of node-local disk; an
# epoch has 81 windows, whose shards are regrouped every epoch.
DEFAULT_WINDOW = 16


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


def block_permutation(shard_id: np.ndarray, *, window: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of all samples (`shard_id[i]`: sample i's shard) that reads the shards a window of
    `window` shards at a time: the shards in a seeded order, cut into windows, the samples of each
    window in a seeded random order. Seeded by (seed, epoch) only, so the same on every rank.

    Vectorized: one permutation of the samples, then a stable sort by window (a radix sort on
    16-bit keys): ~40 ms for 1.28 M samples on 2 CPU cores."""
    if window < 1:
        raise ValueError(f"the shuffle window must be >= 1 shard, got {window}")
    shard_id = np.asarray(shard_id)
    shards = int(shard_id.max()) + 1 if len(shard_id) else 0
    # A third seed word keeps this stream apart from epoch_permutation's (seed, epoch) one.
    rng = np.random.default_rng([seed, epoch, 1])
    windows = -(-shards // window)
    key_type = np.uint16 if windows <= np.iinfo(np.uint16).max + 1 else np.int64
    window_of_shard = np.empty(shards, key_type)
    window_of_shard[rng.permutation(shards)] = np.arange(shards) // window
    mixed = rng.permutation(len(shard_id))
    # A stable sort keeps the random order of `mixed` inside each window: a uniform shuffle per window.
    return mixed[np.argsort(window_of_shard[shard_id[mixed]], kind="stable")]


@dataclass(frozen=True, eq=False)
class BlockShuffle:
    """The block order (see block_permutation): every sample's shard and the window in shards."""

    shard_id: np.ndarray = field(repr=False)
    window: int = DEFAULT_WINDOW


def epoch_order(num_samples: int, *, seed: int, epoch: int, shuffle: bool | BlockShuffle) -> np.ndarray:
    """The epoch's order of all samples: as stored (False), global (True) or block (a BlockShuffle)."""
    if isinstance(shuffle, BlockShuffle):
        if len(shuffle.shard_id) != num_samples:
            known = len(shuffle.shard_id)
            raise ValueError(f"the block shuffle knows the shards of {known} samples, the split has {num_samples}")
        return block_permutation(shuffle.shard_id, window=shuffle.window, seed=seed, epoch=epoch)
    return epoch_permutation(num_samples, seed=seed, epoch=epoch) if shuffle else np.arange(num_samples)


def plan_rank(
    num_samples: int,
    *,
    rank: int,
    world_size: int,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool | BlockShuffle,
    start: int = 0,
) -> RankPlan:
    """This rank's padded share of the epoch after the first `start` samples of its permutation
    (a multiple of the global batch world_size x batch_size); see the module docstring.
    shuffle: False reads the split in stored order, True in the global order, a BlockShuffle in the block one."""
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
    order = epoch_order(num_samples, seed=seed, epoch=epoch, shuffle=shuffle)
    mine = order[start + rank :: world_size]
    padded = math.ceil((num_samples - start) / world_size)
    # Padding repeats the rank's first sample of the whole epoch (order[0] for a rank with none),
    # so a resumed epoch's padding is the uninterrupted one's. The block order repeats the rank's
    # last one instead (order[-1] for a rank with none): its shard is in the window being read, so
    # padding never calls back a shard of the epoch's first window that a cache has let go.
    if isinstance(shuffle, BlockShuffle):
        filler = order[rank::world_size][-1:] if rank < num_samples else order[-1:]
    else:
        filler = order[rank : rank + 1] if rank < num_samples else order[:1]
    indices = np.concatenate([mine, np.repeat(filler, padded - len(mine))]).astype(np.int64)
    valid = np.arange(padded) < len(mine)
    return RankPlan(indices=indices, valid=valid, batch_size=batch_size, first_step=start // global_batch)


def consumed_samples(num_samples: int, *, steps: int, global_batch: int) -> int:
    """Samples of the epoch's permutation all ranks have read after `steps` steps (a prefix of it)."""
    return min(num_samples, steps * global_batch)


def shard_touch_order(plan: RankPlan, shard_id: np.ndarray, *, step: int | None = None) -> np.ndarray:
    """The shards this rank reads from batch `step` of the epoch on (default: the plan's first), each
    once, in the order it first needs them: what a cache fetches ahead of the plan. Padding counts
    (its repeated sample is read again). Vectorized: ~60 ms for a 1.28 M-sample plan (2 CPU cores)."""
    lo = ((plan.first_step if step is None else step) - plan.first_step) * plan.batch_size
    if lo < 0:
        raise IndexError(f"step {step} comes before this plan's first step {plan.first_step}")
    shards = np.asarray(shard_id)[plan.indices[lo:]]
    unique, first = np.unique(shards, return_index=True)
    return unique[np.argsort(first)].astype(np.int64)

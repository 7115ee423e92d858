"""What both loader engines (DALI, torch) share: the epoch plan they read and the position a
checkpoint resumes at. Imports without DALI.

The position is one number per epoch, the samples all ranks have consumed (a prefix of the
epoch's permutation, see epoch_plan.py), so a checkpoint resumes on any number of ranks: the
rest of the epoch is split again over this run's ranks, each remaining sample read once. The
run's global batch (ranks x per-rank batch) is part of the state and is kept on resume (the
data module divides it over this run's ranks), so an epoch keeps its number of steps and the
learning-rate schedule its course. So is the training order (global or block, and the block's
window): a mid-epoch position means something only in the order it was counted in, so a resume
mid-epoch must use the checkpoint's order; from an epoch's boundary on any order may follow.

What an engine adds (DALI: every rank's augmentation RNG state, for an exact resume) carries
over only to the same number of ranks; on another number the draws start afresh.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from convnets.data_pipelines.loading.augment import AugmentSpec
from convnets.data_pipelines.loading.epoch_plan import BlockShuffle, RankPlan, consumed_samples, plan_rank
from convnets.data_pipelines.loading.loader_config import LoaderConfig
from convnets.data_pipelines.storage.cache import ShardCache
from convnets.errors import ConfigError

log = logging.getLogger(__name__)

# 1: (epoch, next_step, rank_count, dali); read as next_step x this run's per-rank batch x rank_count.
# 2: (epoch, samples, global_batch, rank_count, engine, dali), and since block shuffles "shuffle"
#    (LoaderConfig.shuffle_name()); a state without it was read in the global order.
STATE_VERSION = 2


@dataclass(frozen=True)
class Resume:
    """A loaded position: `samples` of epoch `epoch` consumed; `engine`: every rank's engine state there."""

    epoch: int
    samples: int
    rank_count: int
    engine: list | None  # None where it cannot carry over (another number of ranks, another engine)


def saved_global_batch(state: dict | None, per_rank_batch: int) -> int | None:
    """The global batch a checkpoint's loader state was trained with (None: no state)."""
    if not state:
        return None
    if state.get("version") == 1:  # the same world size was required then: this run's batch was the run's
        return per_rank_batch * state["rank_count"]
    return state.get("global_batch")


def read_state(state: dict, cfg: LoaderConfig, *, num_samples: int, engine: str) -> Resume:
    """A checkpoint's loader state, checked against this loader (one-line errors)."""
    version = state.get("version")
    if version not in (1, STATE_VERSION):
        raise ConfigError(
            f"the checkpoint's loader state has version {version!r}; this code reads 1 and {STATE_VERSION}"
        )
    global_batch = saved_global_batch(state, cfg.batch_size)
    here = cfg.batch_size * cfg.world_size
    if global_batch != here:
        raise ConfigError(
            f"the checkpoint was trained with a global batch of {global_batch}, this loader reads "
            f"{cfg.world_size} x {cfg.batch_size} = {here} (per-rank batch = global batch / ranks)"
        )
    if version == 1:
        samples = consumed_samples(num_samples, steps=state["next_step"], global_batch=global_batch)
    else:
        samples = state["samples"]
    _check_order(state, cfg, samples=samples, num_samples=num_samples)
    ranks = state["rank_count"]
    same_engine = state.get("engine", "dali") == engine
    carried = state.get("dali") if same_engine and ranks == cfg.world_size else None
    if ranks != cfg.world_size and cfg.rank == 0:
        log.info(
            "resuming epoch %d on %d ranks (the checkpoint has %d): the %d samples left are split again; "
            "augmentation draws start afresh",
            state["epoch"],
            cfg.world_size,
            ranks,
            num_samples - samples,
        )
    return Resume(epoch=state["epoch"], samples=samples, rank_count=ranks, engine=carried)


def _check_order(state: dict, cfg: LoaderConfig, *, samples: int, num_samples: int) -> None:
    """A mid-epoch position counts samples of the checkpoint's order: refuse another order there."""
    saved, here = state.get("shuffle", "global"), cfg.shuffle_name()
    if saved == here:
        return
    if 0 < samples < num_samples:
        raise ConfigError(
            f"the checkpoint stopped mid-epoch {state['epoch']} in the {saved} shuffle order, this run reads "
            f"the {here} order: resume with the checkpoint's data.shuffle and data.shuffle_window, or from a "
            "checkpoint at an epoch's end"
        )
    if cfg.rank == 0:
        log.info("the checkpoint read the %s shuffle order; the next epochs read the %s order", saved, here)


class PlanLoader:
    """The part of a train/eval loader that does not depend on the engine: plans, length, position.

    Subclasses read `self._epoch` (an object with `number` and `next_step`: the epoch being read
    and its next batch), call `_take_resume(epoch)` when an epoch begins, and may add their own
    per-rank state in `_engine_state`.

    consumed_fn: batches of the current epoch the trainer has taken (default: those handed out);
    gather_fn: a list of every rank's value (default: [value], one process);
    cache: the split's node-local shard cache (storage/cache.py), or None for a local folder: the
    engine hands it each epoch's reading order (`follow_plan`) and its position (`advance`).
    """

    engine = ""

    def __init__(
        self,
        index,
        labels: np.ndarray,
        aug: AugmentSpec,
        cfg: LoaderConfig,
        *,
        epoch_fn: Callable[[], int],
        consumed_fn: Callable[[], int] | None = None,
        gather_fn: Callable[[Any], list] | None = None,
        cache: ShardCache | None = None,
    ) -> None:
        self.index, self.labels, self.aug, self.cfg, self.epoch_fn = index, labels, aug, cfg, epoch_fn
        self.consumed_fn, self.gather_fn, self.cache = consumed_fn, gather_fn, cache
        self._epoch = None
        self._restore: Resume | None = None  # a loaded state, applied when its epoch begins
        self._resumed: Resume | None = None  # the state the current epoch began from
        self._plan_cache: tuple[tuple[int, int], RankPlan] | None = None

    def _start(self, epoch: int) -> int:
        """Samples of `epoch` read before this run: where its plan begins."""
        for resume in (self._restore, self._resumed):
            if resume is not None and resume.epoch == epoch and 0 < resume.samples < len(self.labels):
                return resume.samples
        return 0

    def plan(self, epoch: int) -> RankPlan:
        c = self.cfg
        return plan_rank(
            len(self.labels),
            rank=c.rank,
            world_size=c.world_size,
            batch_size=c.batch_size,
            seed=c.seed,
            epoch=epoch,
            shuffle=self._shuffle(),
            start=self._start(epoch),
        )

    def _shuffle(self) -> bool | BlockShuffle:
        """Eval reads in stored order; training in the global or block order (block: by every sample's shard)."""
        c = self.cfg
        if c.train and c.shuffle == "block":
            return BlockShuffle(self.index.shard_id, c.shuffle_window)
        return c.train

    def _plan(self, epoch: int) -> RankPlan:
        key = (epoch, self._start(epoch))
        if self._plan_cache is None or self._plan_cache[0] != key:  # a 1.28 M permutation: ~20 ms
            self._plan_cache = (key, self.plan(epoch))
        return self._plan_cache[1]

    def __len__(self) -> int:
        return self._plan(self.epoch_fn()).steps

    def _take_resume(self, epoch: int) -> tuple[Resume | None, bool]:
        """The loaded state (once), and whether `epoch` continues from it mid-way."""
        restore, self._restore = self._restore, None
        if restore is not None:
            self._resumed = restore
        resumed = self._resumed
        mid = resumed is not None and resumed.epoch == epoch and 0 < resumed.samples < len(self.labels)
        return restore, mid

    def follow_plan(self, plan: RankPlan) -> None:
        """Tell the cache the shards this rank reads from the plan's first step on (a resume: from where it is)."""
        if self.cache is not None:
            self.cache.follow(self.index.shard_id[plan.indices])

    def advance_plan(self, plan: RankPlan, step: int) -> None:
        """Tell the cache that batch `step` of the epoch is being read: shards used only before it may go."""
        if self.cache is not None:
            self.cache.advance((step - plan.first_step) * plan.batch_size)

    # -- resuming -----------------------------------------------------------------------------
    def _engine_state(self, taken: int) -> Any:
        """This engine's per-rank state before batch `taken` of the current epoch (None: none)."""
        return None

    def state_dict(self) -> dict:
        """The samples of the current epoch consumed by the trained batches, on all ranks together."""
        state = self._epoch
        if not self.cfg.train or state is None:
            return {}
        taken = self.consumed_fn() if self.consumed_fn else state.next_step
        c = self.cfg
        samples = consumed_samples(len(self.labels), steps=taken, global_batch=c.batch_size * c.world_size)
        engine = self._engine_state(taken)
        # Whether a rank has an engine state is the same on every rank, so all or none gather.
        every = None if engine is None else self.gather_fn(engine) if self.gather_fn else [engine]
        return {
            "version": STATE_VERSION,
            "epoch": state.number,
            "samples": samples,
            "global_batch": c.batch_size * c.world_size,
            "rank_count": c.world_size,
            "shuffle": c.shuffle_name(),
            "engine": self.engine,
            "dali": every,
        }

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._restore = read_state(state, self.cfg, num_samples=len(self.labels), engine=self.engine)

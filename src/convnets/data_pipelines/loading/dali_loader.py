"""Feeds one rank's epoch plan through the DALI graph and DALI's PyTorch iterator.

Each split's pipeline is built once and `reset()` per epoch with that epoch's plan handed to
the source: DALI's memory pool never returns memory, and per-epoch rebuilds are reported to run
GPUs out of memory after a few epochs (DALI issues #5256, #5609, #4076). The source stays a
callable of the batch index (`batch_info.iteration`), which is what DALI's checkpointing
restores, and reads batches ahead on threads (`pread` releases the GIL) while DALI decodes.

An epoch that is left early (Lightning's sanity check stops after two batches) is closed before
the next one starts: the source stops, the batches DALI had already prefetched (at most
`prefetch_queue_depth`) are drained and dropped, and the pipeline is reset, so nothing of the
abandoned epoch reaches the next. Their augmentation draws are spent, like any prefetched batch's.

Resuming mid-epoch (`state_dict` / `load_state_dict`, plan_loader.py): the position is the
samples of the epoch consumed, and, on the same number of ranks, the augmentation RNGs are
restored from a DALI pipeline checkpoint taken right after the last trained batch was handed
out. Lightning fetches one batch ahead of the step it trains, so the loader keeps the DALI
checkpoint of each of the last few batches and the state names the one after the last *trained*
batch (`consumed_fn`), not the last fetched one. Each rank's RNGs differ (seed per rank), and
only rank 0 writes the checkpoint, so `gather_fn` collects every rank's DALI checkpoint into it.
On another number of ranks the position alone carries over (fresh pipelines, new draws).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from convnets.data_pipelines.loading.augment import AugmentSpec
from convnets.data_pipelines.loading.dali_pipeline import build_pipeline
from convnets.data_pipelines.loading.decode_culprit import dali_culprit, pil_culprit
from convnets.data_pipelines.loading.epoch_plan import RankPlan
from convnets.data_pipelines.loading.loader_config import DataError, LoaderConfig, ReadAhead  # noqa: F401 (re-exported)
from convnets.data_pipelines.loading.plan_loader import STATE_VERSION, PlanLoader  # noqa: F401 (re-exported)
from convnets.data_pipelines.shards.format import SampleIndex
from convnets.data_pipelines.shards.reader import ShardFiles
from convnets.data_pipelines.storage.cache import ShardCache

log = logging.getLogger(__name__)

OUTPUTS = ["images", "labels", "valid", "index"]


class ShardSource:
    """DALI external_source callable: batch `info.iteration` of the current plan, as bytes + labels.

    `start(plan)` begins an epoch, `stop()` ends it early: every later call raises StopIteration.
    """

    def __init__(
        self, index: SampleIndex, labels: np.ndarray, read: ReadAhead = ReadAhead(), *, on_step=None, open_path=None
    ) -> None:
        self.index, self.labels, self.read, self.on_step = index, labels, read, on_step
        self.files = ShardFiles(index, max_open=read.max_open_files, open_path=open_path)
        self.plan: RankPlan | None = None
        self.offset = 0
        self._stopped = True
        self._ahead: dict[int, Future] = {}
        self._pool = ThreadPoolExecutor(max(1, read.threads), thread_name_prefix="shard-read")
        # Batch s is read into buffer s % len. external_source takes the bytes without a copy
        # (no_copy: ~30% less CPU per sample, measured), so a buffer may be overwritten only once
        # DALI has returned batch s: its read for s + len is requested with batch s + len - depth,
        # when DALI (prefetch_queue_depth 2) has returned s + len - depth - 3 or more: len = depth + 4.
        # Memory: len x the batch's bytes (ImageNet, batch 256: 6 x ~28 MB per rank).
        self._buffers = [bytearray() for _ in range(read.depth + 4)]
        self._handed: deque[tuple] = deque(maxlen=len(self._buffers))  # no_copy: keep what DALI reads alive
        self.recent: deque[np.ndarray] = deque(maxlen=8)  # batches DALI may still be decoding

    def start(self, plan: RankPlan, *, offset: int = 0) -> None:
        """Serve `plan`; DALI's batch index i means batch offset + i (offset: a resume without DALI state)."""
        self._drop_ahead()
        self.plan, self.offset, self._stopped = plan, offset, False

    def stop(self) -> None:
        self._stopped = True
        self._drop_ahead()

    def _drop_ahead(self) -> None:
        for step in list(self._ahead):
            self._drop(step)

    def _drop(self, step: int) -> None:
        future = self._ahead.pop(step)
        if not future.cancel():  # already running: let it finish, its buffer is about to be reused
            wait([future])

    def _read_batch(self, plan: RankPlan, step: int) -> list[np.ndarray]:
        idx, slot = plan.batch(step)[0], step % len(self._buffers)
        need = int(self.index.img_size[idx].sum())
        if len(self._buffers[slot]) < need:  # a new, larger buffer (views of the old one may live on)
            self._buffers[slot] = bytearray(need + need // 4)
        return self.files.images(idx, self._buffers[slot])

    def __call__(self, info) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        plan, step = self.plan, self.offset + info.iteration
        if self._stopped or plan is None or step >= plan.steps:
            raise StopIteration
        for ahead in range(step, min(step + 1 + self.read.depth, plan.steps)):
            if ahead not in self._ahead:
                self._ahead[ahead] = self._pool.submit(self._read_batch, plan, ahead)
        for old in [s for s in self._ahead if s < step]:  # after a restore: reads of batches never asked for
            self._drop(old)
        if self.on_step is not None:  # the node-local cache: this rank now reads batch `step`
            self.on_step(plan, step)
        images = self._ahead.pop(step).result()
        idx, valid = plan.batch(step)
        self.recent.append(idx)
        batch = (images, self.labels[idx], valid.astype(np.uint8), idx)
        self._handed.append(batch)
        return batch

    def find_undecodable(self) -> str | None:
        """After a decode failure: the first recent sample PIL cannot decode, else DALI's decoder (decode_culprit)."""
        samples = [int(i) for idx in self.recent for i in idx]
        return pil_culprit(self.index, samples, self.files.image) or dali_culprit(self.index, samples)

    def close(self) -> None:
        self.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.files.close()


@dataclass
class _Epoch:
    """The epoch the pipeline is in: which one, the next batch DALI hands out, the DALI checkpoints."""

    number: int
    next_step: int
    checkpoints: dict[int, bytes]  # step s -> pipeline state just before batch s (the last few)
    # The DALI state when this epoch began (after the previous epoch's last batch, dropped
    # prefetches included); None for the pipeline's first epoch (its state is the seed's).
    start: bytes | None = None
    first: int = 0  # the epoch's first batch in this run (> 0: resumed mid-epoch)


class DaliLoader(PlanLoader):
    """Iterable of batches {"images", "labels", "valid", "index", "n_valid"}; len() = steps per epoch on every rank.

    "index" is each sample's position in its split (shard order), for per-sample results;
    "n_valid" is the batch's count of real samples as a host integer, read from the epoch plan,
    so the training step and the throughput counters never sync with the device to learn it.
    consumed_fn, gather_fn: see PlanLoader.
    """

    engine = "dali"
    KEEP_CHECKPOINTS = 8  # Lightning holds 1 batch ahead; a few more cost ~0.5 kB each

    def __init__(
        self,
        index: SampleIndex,
        labels: np.ndarray,
        aug: AugmentSpec,
        cfg: LoaderConfig,
        *,
        epoch_fn: Callable[[], int],
        consumed_fn: Callable[[], int] | None = None,
        gather_fn: Callable[[Any], list] | None = None,
        cache: ShardCache | None = None,
    ) -> None:
        super().__init__(
            index, labels, aug, cfg, epoch_fn=epoch_fn, consumed_fn=consumed_fn, gather_fn=gather_fn, cache=cache
        )
        self._source: ShardSource | None = None
        self._iterator: DALIGenericIterator | None = None
        self._epoch: _Epoch | None = None

    # -- the pipeline, built once -------------------------------------------------------------
    def _build(self, checkpoint: bytes | None) -> None:
        c = self.cfg
        self.close()
        ensure = self.cache.ensure if self.cache is not None else None
        self._source = ShardSource(self.index, self.labels, c.read, on_step=self.advance_plan, open_path=ensure)
        # Augmentation randomness differs per rank, reproducibly; it continues across epochs
        # (the pipeline lives for the whole run), and a checkpoint restores it mid-epoch.
        seed = (c.seed * 1_000_003 + c.rank) % (2**31 - 1)
        pipe = build_pipeline(
            self._source,
            self.aug,
            train=c.train,
            crops=c.crops,
            batch_size=c.batch_size,
            num_threads=c.num_threads,
            device_id=c.device_id,
            seed=seed,
            hw_decoder_load=c.hw_decoder_load,
            checkpoint=checkpoint,
        )
        self._iterator = DALIGenericIterator(
            pipe,
            OUTPUTS,
            last_batch_policy=LastBatchPolicy.PARTIAL,
            auto_reset=False,
            prepare_first_batch=False,
        )

    def _finish_epoch(self) -> bytes | None:
        """Close the pipeline's current epoch: stop the source, drop what DALI prefetched.

        The caller resets the iterator once the source has the next plan (reset prefetches at once).
        Returns the DALI state after the last batch DALI ran: the next epoch's starting state.
        """
        state = self._epoch
        if state is None or self._iterator is None:
            return None
        self._source.stop()
        dropped = 0
        try:
            while True:
                next(self._iterator)
                dropped += 1
        except StopIteration:
            pass
        if dropped:
            log.debug("left epoch %d early: dropped %d prefetched batches", state.number, dropped)
        self._epoch = None
        return self._iterator.checkpoints()[0] if self.cfg.train else None

    def _begin(self, epoch: int) -> RankPlan:
        """Point the pipeline at `epoch`, building or restoring it as needed; returns the plan."""
        restore, mid = self._take_resume(epoch)
        plan, first, offset, start, reset = self._plan(epoch), 0, 0, None, True
        kept: dict[int, bytes] = {}
        if restore is not None:
            restored = restore.engine[self.cfg.rank] if restore.engine else None
            self._build(restored)
            if mid:
                first, reset = plan.first_step, False  # the restored source continues at this batch
                offset = 0 if restored else first  # a fresh pipeline counts from 0
                kept = {first: restored} if restored else {}  # a checkpoint before any new batch
            elif restore.engine:  # saved between epochs: close the epoch the restored pipeline is in
                self._epoch = _Epoch(number=restore.epoch, next_step=0, checkpoints={})
                start = self._finish_epoch()
            else:
                reset = False
        elif self._iterator is None:
            self._build(None)
            reset = False
        else:
            start = self._finish_epoch()
        self._source.start(plan, offset=offset)
        self.follow_plan(plan)
        if reset:
            self._iterator.reset()
        self._epoch = _Epoch(number=epoch, next_step=first, checkpoints=kept, start=start, first=first)
        return plan

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self._batches()

    def _batches(self) -> Iterator[dict[str, torch.Tensor]]:
        # Begins at the first next(), not at iter(): Lightning calls iter() during setup, before a
        # checkpoint's loader state is loaded, and a second iter() without a batch costs nothing.
        plan = self._begin(self.epoch_fn())
        state = self._epoch
        iterator, source = self._iterator, self._source
        while state.next_step < plan.steps and self._epoch is state:
            step = state.next_step
            try:
                out = next(iterator)[0]
            except StopIteration:
                return
            except RuntimeError as exc:
                culprit = source.find_undecodable()
                if culprit:
                    raise DataError(culprit) from None
                # No sample is to blame (out of memory, a DALI fault): a failure of the run, exit 1.
                raise RuntimeError(
                    f"DALI failed while reading the shards (every recent sample decodes): "
                    f"{str(exc).strip().splitlines()[0]}"
                ) from exc
            state.next_step = step + 1
            if self.cfg.train:
                self._keep_checkpoint(state)
            out["labels"] = out["labels"].long().view(-1)
            out["valid"] = out["valid"].bool().view(-1)
            out["index"] = out["index"].long().view(-1)
            out["n_valid"] = int(plan.batch(step)[1].sum())  # numpy: host-side, no device sync
            yield out

    def _keep_checkpoint(self, state: _Epoch) -> None:
        # The pipeline state before batch next_step: ~0.5 kB and ~0.2 ms (measured, batch 256).
        state.checkpoints[state.next_step] = self._iterator.checkpoints()[0]
        state.checkpoints.pop(state.next_step - self.KEEP_CHECKPOINTS, None)

    # -- resuming -----------------------------------------------------------------------------
    def _engine_state(self, taken: int) -> bytes | None:
        """The DALI state before batch `taken` of the current epoch (None: a fresh pipeline's)."""
        state = self._epoch
        if taken == state.first:  # nothing trained in this run's part of the epoch yet
            return state.checkpoints.get(taken, state.start)
        checkpoint = state.checkpoints.get(taken)
        if checkpoint is None:
            raise RuntimeError(
                f"no DALI checkpoint before batch {taken} of epoch {state.number} (kept: {sorted(state.checkpoints)})"
            )
        return checkpoint

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
        self._source, self._iterator, self._epoch = None, None, None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to release
            pass

"""Feeds one rank's epoch plan through the DALI graph and DALI's PyTorch iterator.

A fresh pipeline is built for every epoch (tens of milliseconds, next to seconds or hours of
epoch): the epoch's plan and augmentation seed are then fixed at build time, so DALI's
prefetching can never read ahead into the wrong epoch, and an abandoned epoch (Lightning's
sanity check stops after two batches) leaves nothing behind.
"""
from __future__ import annotations

import io
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from convnets.data_pipelines.augment import AugmentSpec
from convnets.data_pipelines.dali_pipeline import build_pipeline
from convnets.data_pipelines.epoch_plan import RankPlan, plan_rank
from convnets.data_pipelines.shard_reader import ShardFiles, describe
from convnets.data_pipelines.shards import SampleIndex
from convnets.data_pipelines.errors import ConvnetsInputError


class DataError(ConvnetsInputError):
    """Bad input data found while reading (one line, naming the shard and sample)."""


class ShardSource:
    """DALI external_source callback: batch `i` of this rank's plan, as encoded bytes + labels."""

    def __init__(self, index: SampleIndex, labels: np.ndarray, plan: RankPlan) -> None:
        self.index, self.labels, self.plan = index, labels, plan
        self.files = ShardFiles(index)
        self.recent: deque[np.ndarray] = deque(maxlen=4)  # batches DALI may still be decoding

    def __call__(self, info) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        if info.iteration >= self.plan.steps:
            raise StopIteration
        idx, valid = self.plan.batch(info.iteration)
        self.recent.append(idx)
        images = [np.frombuffer(self.files.image(int(i)), dtype=np.uint8) for i in idx]
        return images, self.labels[idx], valid.astype(np.uint8), idx

    def find_undecodable(self) -> str | None:
        """After a decode failure: name the first recent sample PIL cannot decode either."""
        from PIL import Image

        for idx in self.recent:
            for i in idx:
                try:
                    with Image.open(io.BytesIO(self.files.image(int(i)))) as img:
                        img.load()
                except Exception as exc:  # any decoder complaint names the culprit
                    return f"{describe(self.index, int(i))}: cannot decode image ({exc})"
        return None


@dataclass(frozen=True)
class LoaderConfig:
    """How one split is read on one rank."""

    train: bool
    crops: int
    batch_size: int
    num_threads: int
    device_id: int | None  # None: CPU decoding; an int: that GPU
    seed: int
    rank: int
    world_size: int
    hw_decoder_load: float = 0.65  # GPU decoding: share of images for the hardware JPEG decoder


class DaliLoader:
    """Iterable of batches {"images", "labels", "valid", "index", "n_valid"}; len() = steps per epoch on every rank.

    "index" is each sample's position in its split (shard order), for per-sample results;
    "n_valid" is the batch's count of real samples as a host integer, read from the epoch plan,
    so the training step and the throughput counters never sync with the device to learn it.
    """

    def __init__(
        self, index: SampleIndex, labels: np.ndarray, aug: AugmentSpec, cfg: LoaderConfig,
        epoch_fn: Callable[[], int],
    ) -> None:
        self.index, self.labels, self.aug, self.cfg, self.epoch_fn = index, labels, aug, cfg, epoch_fn

    def plan(self, epoch: int) -> RankPlan:
        c = self.cfg
        return plan_rank(
            len(self.labels), rank=c.rank, world_size=c.world_size, batch_size=c.batch_size,
            seed=c.seed, epoch=epoch, shuffle=c.train,
        )

    def __len__(self) -> int:
        return self.plan(0).steps

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        c, epoch = self.cfg, self.epoch_fn()
        source = ShardSource(self.index, self.labels, self.plan(epoch))
        # Augmentation randomness differs per rank and epoch, reproducibly.
        seed = (c.seed * 1_000_003 + epoch * 7_919 + c.rank) % (2**31 - 1)
        pipe = build_pipeline(
            source, self.aug, train=c.train, crops=c.crops, batch_size=c.batch_size,
            num_threads=c.num_threads, device_id=c.device_id, seed=seed, hw_decoder_load=c.hw_decoder_load,
        )
        try:
            iterator = DALIGenericIterator(
                pipe, ["images", "labels", "valid", "index"], last_batch_policy=LastBatchPolicy.PARTIAL,
                auto_reset=False, prepare_first_batch=False,
            )
            yield from _batches(iterator, source)
        finally:
            source.files.close()
            del pipe


def _batches(iterator: DALIGenericIterator, source: ShardSource) -> Iterator[dict[str, torch.Tensor]]:
    for step in range(source.plan.steps):
        try:
            out = next(iterator)[0]
        except StopIteration:
            return
        except RuntimeError as exc:
            culprit = source.find_undecodable()
            if culprit:
                raise DataError(culprit) from None
            raise DataError(f"DALI failed while reading the shards: {str(exc).strip().splitlines()[0]}") from None
        out["labels"] = out["labels"].long().view(-1)
        out["valid"] = out["valid"].bool().view(-1)
        out["index"] = out["index"].long().view(-1)
        out["n_valid"] = int(source.plan.batch(step)[1].sum())  # numpy: host-side, no device sync
        yield out

"""What both loader engines (DALI, torch) share and that must import without DALI: settings and the error."""
from __future__ import annotations

from dataclasses import dataclass
from convnets.data_pipelines.errors import ConvnetsInputError


class DataError(ConvnetsInputError):
    """Bad input data found while reading (one line, naming the shard and sample)."""


@dataclass(frozen=True)
class LoaderConfig:
    """How one split is read on one rank."""

    train: bool
    crops: int
    batch_size: int
    num_threads: int  # DALI: worker threads; torch: DataLoader worker processes (0 = in the main process)
    device_id: int | None  # None: CPU decoding; an int: that GPU (DALI only)
    seed: int
    rank: int
    world_size: int
    hw_decoder_load: float = 0.65  # GPU decoding: share of images for the hardware JPEG decoder

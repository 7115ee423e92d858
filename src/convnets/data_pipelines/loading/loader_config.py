"""What both loader engines (DALI, torch) share and that must import without DALI: settings and the error."""

from __future__ import annotations

from dataclasses import dataclass

from convnets.data_pipelines.loading.epoch_plan import DEFAULT_WINDOW, ShuffleMode
from convnets.errors import ConvnetsInputError


class DataError(ConvnetsInputError):
    """Bad input data found while reading (one line, naming the shard and sample)."""


@dataclass(frozen=True)
class ReadAhead:
    """How the shard bytes are read: `threads` readers keep `depth` batches ready ahead of DALI.

    DALI asks for batch k+1 while it decodes k (prefetch_queue_depth 2), so with depth 2 the
    bytes of the next batches are already in memory when it asks; threads read whole batches.
    """

    threads: int = 2
    depth: int = 2
    max_open_files: int = 64  # per rank; 8 ranks x 64 stays well under the usual 1,024 limit


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
    read: ReadAhead = ReadAhead()
    shuffle: ShuffleMode = "global"  # the training order (epoch_plan.py): "global" or "block"
    shuffle_window: int = DEFAULT_WINDOW  # block: shards per window

    def shuffle_name(self) -> str:
        """The training order as a checkpoint records it and a user reads it: 'global', 'block of 16 shards'."""
        return "global" if self.shuffle == "global" else f"block of {self.shuffle_window} shards"

"""LightningDataModule over webdataset shards, read on each rank by the DALI graph or the torch loader.

Rank and world size come from the Trainer (never the environment). The network's input facts
(channels, size, mean/std, crop fraction) come from the LightningModule's `input_spec`, which
the platform derives from the model registry, so a config never repeats them.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from typing_extensions import override

from convnets.data_pipelines.loading.augment import (
    DEFAULT_PRESET,
    AugmentSpec,
    InputSpec,
    Jitter,
    Preset,
    eval_crop_count,
    preset_spec,
)
from convnets.data_pipelines.loading.epoch_plan import DEFAULT_WINDOW, SHUFFLE_MODES, ShuffleMode
from convnets.data_pipelines.loading.loader_config import DataError, LoaderConfig
from convnets.data_pipelines.loading.plan_loader import saved_global_batch
from convnets.data_pipelines.loading.torch_loader import normalize_batch
from convnets.data_pipelines.shards.format import (
    MANIFEST,
    Manifest,
    SampleIndex,
    check_same_classes,
    load_sample_index,
    read_labels,
    read_manifest,
)
from convnets.data_pipelines.shards.mirror import cache_root, default_limit, open_cached_split, read_remote_manifest
from convnets.data_pipelines.shards.reader import check_shard_sizes
from convnets.data_pipelines.storage.cache import ShardCache
from convnets.data_pipelines.storage.store import Store, is_remote, open_store
from convnets.errors import ConfigError

if TYPE_CHECKING:  # annotations only: the loaders import DALI / torchvision
    from convnets.data_pipelines.loading.dali_loader import DaliLoader
    from convnets.data_pipelines.loading.torch_loader import TorchLoader

log = logging.getLogger(__name__)


class ShardDataModule(pl.LightningDataModule):
    """Train/val/test splits of a shard folder (`DIR/train`, `DIR/val`, optionally `DIR/test`)."""

    def __init__(
        self,
        *,
        data_dir: str,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_threads: int = 2,
        seed: int = 0,
        device: Literal["auto", "cpu", "gpu"] = "auto",
        preset: Preset = DEFAULT_PRESET,
        jitter: float | tuple[float, float, float] = 0.0,
        hue: float = 0.0,
        min_area: float = 0.08,
        backend: Literal["auto", "dali", "torch"] = "auto",
        normalize_on_device: bool = False,
        augment: Literal["pad", "scale"] | None = None,
        test_crops: int | None = None,
        test_split: str | None = None,
        input_spec: InputSpec | None = None,
        hw_decoder_load: float = 0.65,
        shuffle: ShuffleMode = "global",
        shuffle_window: int = DEFAULT_WINDOW,
        cache_dir: str | None = None,
        cache_limit_gb: float | None = None,
    ) -> None:
        """
        Args:
            data_dir: folder written by `convnets shards` (one subfolder per split): a local path, or
                any address a store opens (https://..., s3://...), read through the node-local cache.
            batch_size: per-rank training batch (the global batch is this times the world size). A
                resumed run keeps its checkpoint's global batch: on another number of processes
                the per-rank batch is that global batch divided by it.
            eval_batch_size: per-rank batch for validation and test (default: batch_size).
            num_threads: DALI worker threads per rank (decoding + augmentation); with the torch
                backend, DataLoader worker processes per rank (0: decode in the training process).
            seed: shuffle and augmentation seed; epoch e of a run is the same wherever it runs.
            device: "cpu" decodes on the CPU, "gpu" with nvJPEG on the rank's GPU, "auto" picks
                gpu when the Trainer runs on CUDA.
            preset: training augmentation (augment.py): "inception" (random-resized crop + flip),
                "alexnet" (Krizhevsky et al. 2012: shorter side to 256, random 224 crop, flip, PCA
                lighting) or "pad" (small centred images such as digits: random shifts inside a
                padded window). Eval is the same for all: shorter side to size / crop_fraction, centre crop.
            jitter: colour jitter strength s on top of the preset: brightness, contrast and saturation
                factors drawn from U[1 - s, 1 + s] per image (0.4 is torchvision's / FFCV's usual
                value); or three strengths (brightness, contrast, saturation). 0: off. DALI's
                color_twist semantics (one colour matrix per image); on CPU pipelines a Numba kernel
                computes it (cpu_kernels.py), nearly free beside decoding.
            hue: hue jitter, a fraction of a full turn (<= 0.5); 0: off.
            min_area: smallest area fraction of the random-resized crop ("inception" only).
            backend: "dali" (the DALI graph, CPU or GPU), "torch" (torchvision + DataLoader workers,
                CPU), "auto": dali where nvidia.dali imports, else torch.
            normalize_on_device: the loader ships uint8 pixels (4x fewer bytes to copy) and the batch
                is normalized after it reaches the device (`on_after_batch_transfer`).
            augment: deprecated spelling of preset ("scale" = "inception", "pad" = "pad").
            test_crops: crops per test image: 1, 5 (corners + centre) or 10 (and their mirrors);
                default 10 where the dataset allows flips, else 5.
            test_split: split used by `test` (default: "test" when present, else "val").
            input_spec: the network's input facts; default: the LightningModule's `input_spec`.
            hw_decoder_load: GPU decoding: share of images for the hardware JPEG decoder of
                A100/H100 (the rest go to CUDA nvJPEG); ignored on CPU.
            shuffle: training order. "global": one seeded permutation of the whole split per epoch
                (the best mix; every shard is read all epoch long). "block": the shards in a seeded
                order, taken shuffle_window at a time, the samples shuffled within each window, so
                a node-local cache holding two windows reads every shard once per epoch. Both read
                every sample once per epoch on any number of ranks; a mid-epoch resume keeps the
                checkpoint's order (another one is allowed from an epoch's end).
            shuffle_window: "block" only: shards per window (default 16: ~16,000 ImageNet images,
                ~1.8 GB of shards). Larger mixes more; the cache needs two windows.
            cache_dir: node-local folder for the shard cache (shared by the node's ranks, one
                download per node); a remote data_dir always uses one (default: $TMPDIR or /tmp,
                under convnets-cache/), a local one only when this is given (e.g. shards on a slow
                shared file system copied to local disk as they are needed).
            cache_limit_gb: the cache's size limit per node, in GB (1e9 bytes); least recently used
                shards are evicted beyond it. Default: 90% of the cache disk's free space (plus what
                the cache already holds), so a split that fits is kept whole and the disk never fills.
        """
        super().__init__()
        if shuffle not in SHUFFLE_MODES:
            raise ConfigError(f"data.shuffle={shuffle!r} is not one of {', '.join(SHUFFLE_MODES)}")
        if isinstance(shuffle_window, bool) or not isinstance(shuffle_window, int) or shuffle_window < 1:
            raise ConfigError(f"data.shuffle_window={shuffle_window!r}: the block shuffle's window is shards, >= 1")
        self.save_hyperparameters(ignore=["input_spec"])
        self.address = str(data_dir)
        self.data_dir = Path(data_dir)  # local addresses only (a URL is not a path)
        self._store: Store | None = None
        self._caches: dict[str, ShardCache] = {}
        self.input_spec = input_spec
        self.manifests: dict[str, Manifest] = {}
        self._splits: dict[str, tuple[SampleIndex, np.ndarray]] = {}
        self.preset: Preset = resolve_preset(preset, augment)
        self.jitter = Jitter(**dict(zip(("brightness", "contrast", "saturation"), _strengths(jitter))), hue=hue)
        self.backend = _resolve_backend(backend)
        if self.backend == "torch" and device == "gpu":
            raise ValueError(
                "data.device=gpu decodes with DALI's nvJPEG; the torch backend decodes on the CPU "
                "(use data.device=auto)"
            )
        self._train_loader: DaliLoader | TorchLoader | None = None
        self._train_state: dict | None = None
        self._batch_told = False

    # -- facts the platform reads before building the model -------------------------------------
    def manifest(self, split: str) -> Manifest:
        if split not in self.manifests:
            if not self.cached and not self.data_dir.is_dir():
                raise DataError(f"data_dir {self.data_dir} does not exist (write it with `convnets shards ...`)")
            if self.cached and split not in self._caches:  # one small read; the cache opens when the split is read
                self.manifests[split] = read_remote_manifest(self.store, split)
            else:
                self.manifests[split] = read_manifest(self.split_dir(split))
        return self.manifests[split]

    @property
    def cached(self) -> bool:
        """Whether the shards are read through the node-local cache (remote data, or data.cache_dir given)."""
        return is_remote(self.address) or self.hparams.cache_dir is not None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.address)
        return self._store

    def has_split(self, split: str) -> bool:
        return self.store.exists(f"{split}/{MANIFEST}") if self.cached else (self.data_dir / split / MANIFEST).exists()

    def split_dir(self, split: str) -> Path:
        """The local folder the split is read from: the data folder's, or its mirror in the cache."""
        return self.cache(split).folder if self.cached else self.data_dir / split

    def cache(self, split: str) -> ShardCache:
        """The split's node-local cache, opened on first use (its small files fetched; shards on demand)."""
        if split not in self._caches:
            root = cache_root(self.address, self.hparams.cache_dir)
            gb = self.hparams.cache_limit_gb
            limit = default_limit(root) if gb is None else int(gb * 1e9)
            self._caches[split], _ = open_cached_split(self.store, split, root, limit_bytes=limit)
            log.info("reading %s/%s through the cache %s (limit %.3g GB)", self.address, split, root, limit / 1e9)
        return self._caches[split]

    @property
    def class_split(self) -> str:
        """The split whose manifest defines the classes: train where it was written, else the split
        that is evaluated (`convnets evaluate --data DIR` on a folder holding only val/ or test/)."""
        return "train" if self.has_split("train") else self.test_split_name

    @property
    def num_classes(self) -> int:
        return self.manifest(self.class_split).num_classes

    @property
    def classes(self) -> list[str]:
        return list(self.manifest(self.class_split).classes)

    @property
    def display_names(self) -> list[str]:
        """The classes as a person names them (see Manifest.display_names): for plots, not for matching."""
        return list(self.manifest(self.class_split).display_names)

    @property
    def test_split_name(self) -> str:
        if self.hparams.test_split:
            return self.hparams.test_split
        return "test" if self.has_split("test") else "val"

    # -- Lightning hooks ------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        needed = {"fit": ["train", "val"], "validate": ["val"], "test": [self.test_split_name]}.get(stage, [])
        for split in needed:
            self._load(split)

    def _load(self, split: str) -> None:
        if split in self._splits:
            return
        manifest = self.manifest(split)
        folder = self.split_dir(split)
        reference = self.class_split  # named, not opened: only its manifest is read
        where = Path(self.address) / reference if not self.cached else f"{self.address}/{reference}"
        check_same_classes(folder, manifest, where, self.manifest(reference))
        if not self.cached:  # the cache verifies each shard (size and sha256) as it arrives
            check_shard_sizes(folder, manifest)
        index = load_sample_index(folder)
        # Every rank reads and checks every label up front (one labels.npy read, written with the
        # shards): a bad label stops all ranks at once, before any collective, not one rank mid-epoch.
        labels = read_labels(index, num_classes=manifest.num_classes)
        self._splits[split] = (index, labels)

    def samples(self, split: str) -> tuple[SampleIndex, np.ndarray]:
        """The split's sample index and labels, read and checked once (what every loader of it reads)."""
        self._load(split)
        return self._splits[split]

    def train_dataloader(self):
        loader = self.loader("train", train=True)
        if self._train_state is not None:  # resuming: the position saved in the checkpoint
            loader.load_state_dict(self._train_state)
        self._train_loader = loader
        return loader

    def train_batch_size(self) -> int:
        """The per-rank training batch: data.batch_size, or on resume the checkpoint's global batch
        divided over this run's ranks (a run keeps its global batch on any number of GPUs)."""
        per_rank, world = self.hparams.batch_size, self.trainer.world_size if self.trainer else 1
        saved = saved_global_batch(self._train_state, per_rank)
        if saved is None or saved == per_rank * world:
            return per_rank
        if saved % world:
            raise ValueError(
                f"the checkpoint was trained with a global batch of {saved}, which does not divide over "
                f"{world} processes: resume on a number of processes that divides {saved}"
            )
        if not self._batch_told:
            self._batch_told = True
            log.warning(
                "resuming with the checkpoint's global batch %d: %d per rank on %d processes "
                "(data.batch_size %d is not used)",
                saved,
                saved // world,
                world,
                per_rank,
            )
        return saved // world

    # Mid-epoch resume: Lightning restores the datamodule's state before it asks for the train
    # loader. (Its fit loop also saves stateful loaders, but skips loading them when the loader
    # was requested early, e.g. by `estimated_stepping_batches` for a schedule: Lightning 2.6.)
    def state_dict(self) -> dict:
        loader = self._train_loader
        state = loader.state_dict() if loader is not None else {}
        return {"train_loader": state} if state else {}

    def load_state_dict(self, state_dict: dict) -> None:
        self._train_state = state_dict.get("train_loader")

    def val_dataloader(self):
        return self.loader("val", train=False)

    def test_dataloader(self):
        flip = self.manifest(self.test_split_name).flip_ok
        crops = eval_crop_count(self.hparams.test_crops, flip=flip)
        return self.loader(self.test_split_name, train=False, crops=crops)

    # -- building blocks ------------------------------------------------------------------------
    def augment_spec(self, split: str) -> AugmentSpec:
        spec = self.input_spec or getattr(self.trainer.lightning_module, "input_spec", None)
        if spec is None:
            raise ValueError("ShardDataModule needs an input_spec (from the model or the constructor)")
        return preset_spec(
            self.preset,
            spec,
            flip=self.manifest(split).flip_ok,
            min_area=self.hparams.min_area,
            jitter=self.jitter,
            uint8=self.hparams.normalize_on_device,
        )

    @override
    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        # normalize_on_device: the loaders shipped uint8; normalizing here, after the copy, costs
        # one elementwise pass on the accelerator instead of float32 work on the loader's CPU threads.
        if batch["images"].dtype == torch.uint8:
            spec = self.input_spec or self.trainer.lightning_module.input_spec
            batch["images"] = normalize_batch(batch["images"], spec)
        return batch

    def _device_id(self) -> int | None:
        wanted = self.hparams.device
        root = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if wanted == "gpu" and root.type != "cuda":
            raise ValueError("data.device=gpu needs the Trainer on a CUDA device (trainer.accelerator=gpu)")
        if wanted == "cpu" or root.type != "cuda":
            return None
        return root.index or 0

    def loader(self, split: str, *, train: bool, crops: int = 1) -> DaliLoader | TorchLoader:
        """This rank's loader over `split`: train=True gives the shuffled, augmented training plan,
        False the eval plan with `crops` views per image (1, 5 or 10). The Lightning hooks use it,
        and so does code that reads the data without a Trainer (benchmarks: rank 0 of 1, epoch 0
        unless the caller sets the loader's epoch_fn)."""
        index, labels = self.samples(split)
        hp, trainer = self.hparams, self.trainer
        cfg = LoaderConfig(
            train=train,
            crops=crops,
            batch_size=self.train_batch_size() if train else (hp.eval_batch_size or hp.batch_size),
            num_threads=hp.num_threads,
            device_id=self._device_id(),
            seed=hp.seed,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
            hw_decoder_load=hp.hw_decoder_load,
            shuffle=hp.shuffle,
            shuffle_window=hp.shuffle_window,
        )
        if self.backend == "torch":
            from convnets.data_pipelines.loading.torch_loader import TorchLoader as Loader
        else:
            from convnets.data_pipelines.loading.dali_loader import DaliLoader as Loader
        # Mid-epoch resume: the loader's state needs the fit loop's batch count (and DALI every rank's state).
        hooks = _resume_hooks(trainer) if train and trainer else {}
        return Loader(
            index,
            labels,
            self.augment_spec(split),
            cfg,
            epoch_fn=lambda: trainer.current_epoch if trainer else 0,
            cache=self.cache(split) if self.cached else None,
            **hooks,
        )

    def teardown(self, stage: str) -> None:
        # The prefetch threads stop with the stage (a loader still open fetches on demand); the next
        # loader opens the cache again (one manifest read; the small files and shards are reused).
        for split, cache in self._caches.items():
            cache.close()
            log.info("shard cache of %s: %s", split, cache.stats.summary())
        self._caches.clear()


def resolve_preset(preset: Preset, augment: str | None, *, warn: bool = True) -> Preset:
    """The preset a data config means, the deprecated `augment` spelling included (old configs, checkpoints)."""
    if augment is None:
        return preset
    resolved = {"scale": "inception", "pad": "pad"}.get(augment)
    if resolved is None:
        raise ValueError(f"data.augment={augment!r} is not pad or scale; use data.preset (alexnet, inception or pad)")
    if warn:
        log.warning("data.augment is deprecated: use data.preset=%s", resolved)
    return resolved


def _strengths(jitter: float | tuple[float, ...]) -> tuple[float, float, float]:
    values = (jitter,) * 3 if isinstance(jitter, (int, float)) else tuple(jitter)
    if len(values) != 3:
        raise ValueError(f"data.jitter={jitter!r}: one strength, or three (brightness, contrast, saturation)")
    return tuple(float(v) for v in values)


def _resolve_backend(backend: str) -> str:
    has_dali = importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None
    if backend == "dali" and not has_dali:
        raise ValueError(
            "data.backend=dali, but nvidia.dali is not installed (pip install nvidia-dali-cuda130, "
            "or use data.backend=torch)"
        )
    if backend == "auto":
        if not has_dali:
            log.info("nvidia.dali is not installed: reading the shards with the torch backend (torchvision)")
        return "dali" if has_dali else "torch"
    return backend


def _resume_hooks(trainer: pl.Trainer) -> dict:
    """What the train loader's state_dict needs from the Trainer (see dali_loader.py, "Resuming").

    consumed: batches of this epoch the fit loop has taken (it fetches one more ahead of those);
    gather: every rank's DALI state, since only rank 0 writes the checkpoint. Lightning calls
    state_dict on every rank inside `save_checkpoint`, which already ends in a barrier.
    """

    def consumed() -> int:
        return trainer.fit_loop.epoch_loop.batch_progress.current.ready

    def gather(value) -> list:
        if trainer.world_size == 1 or not torch.distributed.is_initialized():
            return [value]
        out = [None] * trainer.world_size
        torch.distributed.all_gather_object(out, value)
        return out

    return {"consumed_fn": consumed, "gather_fn": gather}

"""The pure-PyTorch loader: the same shards, presets, epoch plan and batch dict as DaliLoader.

The fallback where DALI does not install (macOS, Windows, some clusters) and the speed baseline.
Decoding is torchvision.io.decode_image (libjpeg-turbo, like DALI's CPU decoder); augmentation is
torchvision.transforms.v2 built from the same `AugmentSpec` the DALI graph reads, in torchvision's
references/classification/presets.py style (keyword-only preset functions). Colour jitter and PCA
lighting are the same per-image colour matrices as DALI's color_twist and the graph's lighting.

Reading: sample i of this rank's epoch plan is read by its .idx offset (`ShardFiles`, one pread),
NOT through webdataset's `WebDataset` pipeline. That pipeline streams each tar front to back (with
shard-level shuffling and a shuffle buffer), so it cannot deliver the plan's per-rank global
permutation, which is what gives exact-once, equal steps and the same samples as the DALI engine.
The shards are ordinary webdataset tars (key.jpg/key.png + key.cls), and the tests read them back
with webdataset's own tar iterator as the independent reference.

Workers: a torch DataLoader over batch numbers (each item is one whole batch), `num_workers`
processes; each batch's random draws come from a generator seeded by (seed, epoch, rank, step),
so a batch is the same whichever worker makes it and however many workers there are.
"""

from __future__ import annotations

import gc
import math
import multiprocessing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from convnets.data_pipelines.loading.augment import (
    CROP_POSITIONS,
    MID_GREY,
    AugmentSpec,
    InputSpec,
    Jitter,
    color_twist_matrix,
    lighting_matrix,
)
from convnets.data_pipelines.loading.epoch_plan import RankPlan
from convnets.data_pipelines.loading.loader_config import DataError, LoaderConfig
from convnets.data_pipelines.loading.plan_loader import PlanLoader
from convnets.data_pipelines.shards.reader import ShardFiles, describe
from convnets.data_pipelines.storage.cache import ShardCache
from convnets.data_pipelines.storage.store import is_remote

TRAIN_ANTIALIAS = False  # as dali_pipeline.TRAIN_ANTIALIAS: the inception crop's resize


def normalize_batch(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 or 0..255 float (..., C, H, W) -> float32 (x / 255 - mean) / std, on the images' device."""
    shape = (-1, 1, 1)
    mean = torch.tensor(spec.mean, device=images.device).view(shape) * 255.0
    inv_std = 1.0 / (torch.tensor(spec.std, device=images.device).view(shape) * 255.0)
    return (images.float() - mean) * inv_std


# -- presets: geometric part, uint8 CHW in, uint8 CHW out ------------------------------------------
def inception_train(*, aug: AugmentSpec) -> v2.Transform:
    size = aug.spec.image_size
    steps = [v2.RandomResizedCrop(size, scale=aug.area, ratio=aug.aspect, antialias=TRAIN_ANTIALIAS)]
    return v2.Compose(steps + ([v2.RandomHorizontalFlip()] if aug.flip else []))


def alexnet_train(*, aug: AugmentSpec) -> v2.Transform:
    steps = [v2.Resize(aug.resize, antialias=True), v2.RandomCrop(aug.spec.image_size)]
    return v2.Compose(steps + ([v2.RandomHorizontalFlip()] if aug.flip else []))


def pad_train(*, aug: AugmentSpec) -> v2.Transform:
    # pad_if_needed pads (size - side) on both sides, so the image lands 0..(size - side) px from
    # the window's edge: the same range as DALI's window at a uniform crop_pos over the padded image.
    steps = [
        v2.Resize((aug.resize, aug.resize), antialias=True),
        v2.RandomCrop(aug.spec.image_size, pad_if_needed=True, fill=0),
    ]
    return v2.Compose(steps + ([v2.RandomHorizontalFlip()] if aug.flip else []))


TRAIN_PRESETS: dict[str, Callable[..., v2.Transform]] = {
    "inception": inception_train,
    "alexnet": alexnet_train,
    "pad": pad_train,
}


def eval_resize(*, aug: AugmentSpec) -> v2.Transform:
    if aug.preset == "pad":
        return v2.Resize((aug.resize, aug.resize), antialias=True)
    return v2.Resize(aug.resize, antialias=True)  # shorter side, like DALI's resize_shorter


def crop_at(image: torch.Tensor, size: int, pos: tuple[float, float]) -> torch.Tensor:
    """The size x size window at relative position pos (DALI's crop_pos), black outside the image."""
    h, w = image.shape[-2:]
    # DALI places the window at pos * (extent - size), rounded half up (measured: 4.5 -> 5 px; a
    # 1 px shift would break the eval agreement test by tens of levels).
    top, left = math.floor(pos[1] * (h - size) + 0.5), math.floor(pos[0] * (w - size) + 0.5)
    return F.crop(image, top, left, size, size)  # pads with 0 where the window leaves the image


# -- colour: float 0..255 CHW ----------------------------------------------------------------------
def _uniform(strength: float, generator: torch.Generator) -> float:
    return 1.0 + strength * (2.0 * float(torch.rand((), generator=generator)) - 1.0) if strength else 1.0


def jitter(image: torch.Tensor, j: Jitter, generator: torch.Generator) -> torch.Tensor:
    """Colour jitter of one float 0..255 image, drawn as DALI draws it; rounded and clamped like its uint8 output."""
    b, con, sat = (_uniform(x, generator) for x in (j.brightness, j.contrast, j.saturation))
    hue = 360.0 * j.hue * (2.0 * float(torch.rand((), generator=generator)) - 1.0) if j.hue else 0.0
    if image.shape[0] == 1:  # grey: brightness/contrast only, about mid-grey
        out = b * (MID_GREY + con * (image - MID_GREY))
    else:
        affine = torch.from_numpy(color_twist_matrix(b, con, sat, hue)).to(image.dtype)
        out = torch.einsum("ij,jhw->ihw", affine[:, :3], image) + affine[:, 3].view(3, 1, 1)
    return out.round_().clamp_(0.0, 255.0)


def lighting_offset(std: float, generator: torch.Generator) -> torch.Tensor:
    """PCA lighting: sum_j alpha_j lambda_j p_j, alpha ~ N(0, std), as a (3, 1, 1) offset in 0..255 units."""
    alpha = torch.randn(3, generator=generator) * std
    return (torch.tensor(lighting_matrix()) @ alpha).view(3, 1, 1)


def _finish(image: torch.Tensor, aug: AugmentSpec, generator: torch.Generator) -> torch.Tensor:
    """Colour steps then output format: uint8 CHW, or float32 normalized (as the DALI graph's CMN)."""
    x = image.float()
    if aug.jitter.active:
        x = jitter(x, aug.jitter, generator)
    if aug.lighting:
        x = x + lighting_offset(aug.lighting, generator)
    if aug.uint8:
        return x.round_().clamp_(0, 255).to(torch.uint8)
    return normalize_batch(x, aug.spec)


class PlanBatches(torch.utils.data.Dataset):
    """Item `step` = batch `step` of one rank's epoch plan, decoded and augmented."""

    def __init__(
        self,
        *,
        index,
        labels: np.ndarray,
        aug: AugmentSpec,
        plan: RankPlan,
        train: bool,
        crops: int,
        seed: int,
        cache: ShardCache | None = None,
    ) -> None:
        self.index, self.labels, self.aug, self.plan, self.cache = index, labels, aug, plan, cache
        self.train, self.crops, self.seed = train, crops, seed
        self.geometry = TRAIN_PRESETS[aug.preset](aug=aug) if train else eval_resize(aug=aug)
        self.mode = ImageReadMode.GRAY if aug.spec.channels == 1 else ImageReadMode.RGB
        self._files: ShardFiles | None = None  # opened lazily: in the worker process that reads

    def __len__(self) -> int:
        return self.plan.steps

    def _decode(self, i: int) -> torch.Tensor:
        if self._files is None:
            cache = self.cache
            if cache is not None and torch.utils.data.get_worker_info() is not None:
                # A worker process: a cache of its own (no prefetch threads) over the node's folder;
                # the training process's cache prefetches ahead, this one waits on its lock files.
                # A forked worker never fetches from a remote store (its client does not survive fork).
                forked = multiprocessing.get_start_method() == "fork"
                cache = cache.spec().open(fetch=not (forked and is_remote(cache.store.address)))
            self._files = ShardFiles(self.index, open_path=cache.ensure if cache is not None else None)
        data = torch.frombuffer(bytearray(self._files.image(i)), dtype=torch.uint8)
        try:
            return decode_image(data, mode=self.mode)
        except RuntimeError as exc:
            raise DataError(f"{describe(self.index, i)}: cannot decode image ({str(exc).splitlines()[0]})") from None

    def _views(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.train:
            return _finish(self.geometry(image), self.aug, generator)
        image, size = self.geometry(image), self.aug.spec.image_size
        if self.crops == 1:
            return _finish(crop_at(image, size, CROP_POSITIONS[0]), self.aug, generator)
        views = [crop_at(image, size, p) for p in CROP_POSITIONS]
        if self.crops == 10:
            views += [v.flip(-1) for v in views]
        return torch.stack([_finish(v, self.aug, generator) for v in views])

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        idx, valid = self.plan.batch(step)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        # v2's random transforms draw from torch's global generator: fork it, so a batch is a pure
        # function of (seed, step) and the caller's random state is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**62, (), generator=generator)))
            images = torch.stack([self._views(self._decode(int(i)), generator) for i in idx])
        return {
            "images": images,
            "labels": torch.from_numpy(self.labels[idx]).long(),
            "valid": torch.from_numpy(valid.copy()),
            "index": torch.from_numpy(idx.copy()).long(),
        }


@dataclass
class _Epoch:
    """The epoch being read: which one and the next batch handed out."""

    number: int
    next_step: int


class TorchLoader(PlanLoader):
    """Iterable of batches {"images", "labels", "valid", "index", "n_valid"}; len() = steps per epoch on every rank.

    The same contract as DaliLoader (see dali_loader.py); cfg.num_threads is the number of
    DataLoader worker processes (0 = decode in the training process). A batch is a pure function
    of (seed, epoch, rank, step), so the position (plan_loader.py) is all a resume needs: on the
    same number of ranks it continues bit for bit.
    """

    engine = "torch"

    def __iter__(self) -> Iterator[dict]:
        # A generator: the epoch begins at the first next(), after a checkpoint's state is loaded.
        c, epoch = self.cfg, self.epoch_fn()
        self._take_resume(epoch)
        plan = self._plan(epoch)
        state = self._epoch = _Epoch(number=epoch, next_step=plan.first_step)
        self.follow_plan(plan)
        seed = (c.seed * 1_000_003 + epoch * 7_919 + c.rank) % (2**31 - 1)  # as DaliLoader's
        batches = PlanBatches(
            index=self.index,
            labels=self.labels,
            aug=self.aug,
            plan=plan,
            train=c.train,
            crops=c.crops,
            seed=seed,
            cache=self.cache,
        )
        steps = range(plan.first_step, plan.steps)
        loader = torch.utils.data.DataLoader(
            batches, batch_size=None, sampler=steps, num_workers=c.num_threads, persistent_workers=False
        )
        for step, batch in zip(steps, _forked_safely(loader)):
            self.advance_plan(plan, step)
            state.next_step = step + 1
            batch["n_valid"] = int(plan.batch(step)[1].sum())  # numpy: host-side, no device sync
            yield batch


def _forked_safely(loader: torch.utils.data.DataLoader):
    """The loader's batches, its worker processes forked without this process's pending garbage.

    A worker forked while this process holds unreachable objects collects them itself; a DALI
    pipeline among them (a DALI loader dropped earlier in the same process) then waits forever in
    the worker for DALI threads that exist only here. Collecting first, and freezing what is left
    while the workers fork, keeps the worker's collector off the parent's objects.
    """
    if not loader.num_workers:
        yield from loader
        return
    gc.collect()
    gc.freeze()
    try:
        batches = iter(loader)  # forks the workers
    finally:
        gc.unfreeze()
    yield from batches


def build_torch_loader(
    split_dir: str | Path,
    aug: AugmentSpec,
    *,
    batch_size: int,
    workers: int,
    train: bool = True,
    seed: int = 0,
) -> TorchLoader:
    """A one-rank loader over a split folder (for `convnets bench data --backend torch`)."""
    from convnets.data_pipelines.shards.format import load_sample_index, read_labels, read_manifest

    split_dir = Path(split_dir)
    index = load_sample_index(split_dir)
    labels = read_labels(index, num_classes=read_manifest(split_dir).num_classes)
    cfg = LoaderConfig(
        train=train,
        crops=1,
        batch_size=batch_size,
        num_threads=workers,
        device_id=None,
        seed=seed,
        rank=0,
        world_size=1,
    )
    return TorchLoader(index, labels, aug, cfg, epoch_fn=lambda: 0)

"""Config checks that run after parsing and before anything is built, written or started.

`convnets fit` creates the run folder, the W&B run and (under DDP) the process group only after
these pass, so a typo costs one line on stderr and nothing on disk. Each check reads only small
files (manifest.json, a checkpoint's zip directory) and builds the model on the meta device
(no memory, no arithmetic), so all of them take well under a second.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from convnets.errors import ConfigError, ConvnetsInputError

log = logging.getLogger(__name__)

# Splits each stage reads; "test" falls back to val when the data has no test split.
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}
CKPT_KEYWORDS = ("last", "best", "hpc", "registry")  # Lightning resolves these names itself


def _get(cfg: Mapping, key: str, default: Any = None) -> Any:
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def check_data(data: Mapping, stage: str, *, world_size: int) -> int | None:
    """data_dir exists with readable manifests for the stage's splits; batch sizes fit. Returns the classes."""
    from convnets.data_pipelines.shards.format import read_manifest
    from convnets.data_pipelines.shards.mirror import read_remote_manifest
    from convnets.data_pipelines.storage.store import is_remote, open_store

    address = str(_get(data, "data_dir", ""))
    data_dir, store = Path(address), open_store(address) if is_remote(address) else None
    if store is None and not data_dir.is_dir():
        raise ConfigError(f"data.data_dir {data_dir}: no such folder (write it with `convnets shards ...`)")
    # num_threads: DALI needs >= 1 thread; for the torch backend it counts worker processes (0 = inline).
    least = {"batch_size": 1, "eval_batch_size": 1, "num_threads": 0 if _get(data, "backend") == "torch" else 1}
    for key, minimum in least.items():
        value = _get(data, key)
        if value is not None and int(value) < minimum:
            raise ConfigError(f"data.{key}={value}: must be at least {minimum}")
    num_classes = None
    for split in STAGE_SPLITS.get(stage, ()):
        if split == "test":
            has_test = store.exists("test/manifest.json") if store else (data_dir / "test" / "manifest.json").exists()
            split = _get(data, "test_split") or ("test" if has_test else "val")
        # ShardError / StoreError (input errors) naming the file or URL; remote: read at its address
        manifest = read_remote_manifest(store, split) if store else read_manifest(data_dir / split)
        check_shard_names(manifest, data_dir / split)
        num_classes = num_classes or manifest.num_classes
        if split == "train":
            batch = int(_get(data, "batch_size", 1))
            if batch * world_size > manifest.num_samples:  # legal (one padded step), rarely meant: say so
                log.warning(
                    "data.batch_size=%d x %d ranks = %d exceeds the %d training samples in %s: one padded "
                    "step per epoch",
                    batch,
                    world_size,
                    batch * world_size,
                    manifest.num_samples,
                    data_dir / split,
                )
    return num_classes


def check_shard_names(manifest: Any, split_dir: Path) -> None:
    """Shard and index names are plain file names inside the split folder.

    The reader opens `split_dir / name` and preads bytes at the .idx offsets; it never extracts a tar
    member or uses a member's name as a path, so names inside the tars cannot reach the file
    system. The manifest's names can: "../x" or "/etc/x" would make training read outside the data.
    """
    for entry in manifest.shards:
        for name in (entry.name, entry.index):
            if Path(name).name != name or name in ("", ".", ".."):
                raise ConfigError(
                    f"{split_dir / 'manifest.json'}: shard file {name!r} is not a plain file name "
                    f"inside {split_dir} (path traversal refused)"
                )


def _preset(data: Mapping) -> str:
    from convnets.data_pipelines.loading.augment import DEFAULT_PRESET
    from convnets.data_pipelines.loading.datamodule import resolve_preset

    return resolve_preset(_get(data, "preset", DEFAULT_PRESET), _get(data, "augment"), warn=False)


def check_crop(data: Mapping, image_size: int) -> None:
    """A crop larger than the resize it is cut from (only where the data module takes these options)."""
    resize, fraction = _get(data, "resize"), _get(data, "crop_fraction")
    if fraction is not None and not 0 < float(fraction) <= 1:
        raise ConfigError(f"data.crop_fraction={fraction}: must be in (0, 1] (the crop is cut from the resized image)")
    if resize is not None and _preset(data) != "pad" and int(resize) < image_size:
        raise ConfigError(f"data.resize={resize} is smaller than the {image_size} px crop; use at least {image_size}")


def check_model(model: Mapping, num_classes: int | None) -> int:
    """The model exists, takes its options, and runs at the requested image size; returns the image size."""
    import torch

    from convnets.models import create_model, get_model_info

    arch = str(_get(model, "arch", "lenet5"))
    wanted = _get(model, "num_classes")
    if wanted is not None and num_classes is not None and int(wanted) != num_classes:
        raise ConfigError(
            f"model.num_classes={wanted}, but the data has {num_classes} classes; drop model.num_classes "
            f"(it defaults to the data's)"
        )
    try:
        info = get_model_info(arch)
    except ValueError as exc:
        raise ConfigError(f"model.arch: {exc}") from None
    channels, size, _ = info.input_size
    size = int(_get(model, "image_size", size))
    options = {k: _get(model, k) for k in ("ablate", "norm", "pool", "dropout", "init") if _get(model, k) is not None}
    try:
        with torch.device("meta"):  # shapes only: no memory, no arithmetic
            net = create_model(arch, num_classes=int(_get(model, "num_classes", num_classes or 10)), **options)
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from None
    try:
        with torch.device("meta"):
            net.eval()(torch.empty(2, channels, size, size))  # eval: BatchNorm takes any batch
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"model.image_size={size} does not fit {arch} ({str(exc).splitlines()[0]}); "
            f"its declared size is {info.input_size[1]}"
        ) from None
    return size


def check_ckpt_path(ckpt_path: str | None) -> None:
    """A resume/test checkpoint exists and is a torch zip archive (its directory only; no unpickling)."""
    if not ckpt_path or ckpt_path in CKPT_KEYWORDS:
        return
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"--ckpt_path {path}: no such file")
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"--ckpt_path {path}: not a PyTorch checkpoint (truncated, or another kind of file)")


def check_config(cfg: Mapping, stage: str | None, *, world_size: int) -> None:
    """All the checks for `convnets STAGE`; ConvnetsInputError (exit 2) naming the option on the first miss.

    stage None (LightningCLI(run=False): objects built, nothing run) checks the model and crop only.
    """
    try:
        num_classes = check_data(cfg["data"], stage, world_size=world_size) if stage not in (None, "predict") else None
        size = check_model(cfg["model"], num_classes)
        check_crop(cfg["data"], size)
        check_ckpt_path(cfg.get("ckpt_path"))
    except ConvnetsInputError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"{type(exc).__name__}: {exc}") from None


def world_size_of(trainer: Mapping) -> int:
    """Ranks the Trainer will start (devices x nodes), where the config says it as numbers."""
    devices, nodes = _get(trainer, "devices", 1), int(_get(trainer, "num_nodes", 1))
    if isinstance(devices, (list, tuple)):
        return len(devices) * nodes
    try:
        return max(int(devices), 1) * nodes
    except (TypeError, ValueError):  # "auto": all visible devices; 1 is the safe lower bound for the checks
        return nodes

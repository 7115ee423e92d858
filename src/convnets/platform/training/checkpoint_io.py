"""Checkpoints that survive interrupted writes, and a loader that refuses what it cannot trust.

Saving: the whole checkpoint goes to a temporary file in the same folder, is fsynced, then renamed
over the final name (rename is atomic within a file system), and the folder is fsynced so the
rename itself survives a crash. A SIGKILL or a full disk mid-save leaves the previous `last.ckpt`
intact and at most a `.tmp` file, which the next save overwrites. A full disk raises
CheckpointWriteError naming the folder and the bytes needed.

Loading (`load_checkpoint`, shared with `convnets evaluate`): `weights_only=True`, so a downloaded
checkpoint cannot run code; the platform stores only tensors, numbers, strings, lists and dicts.
"""

from __future__ import annotations

import errno
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from typing_extensions import override

from convnets.errors import CheckpointError
from convnets.utils.files import atomic_file


class CheckpointWriteError(OSError):
    """The checkpoint could not be written (disk full, read-only folder); the previous one is intact."""


def _disk_full(exc: BaseException | None) -> bool:
    """ENOSPC anywhere in the chain: torch's zip writer turns it into RuntimeError("unexpected pos")."""
    while exc is not None:
        if getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to `path` through `path.tmp` + fsync + rename: readers see the old file or the new one."""
    path = Path(path)
    try:
        with atomic_file(path) as f:
            torch.save(obj, f)
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and not _disk_full(exc):
            raise  # not an I/O problem: torch could not serialize the object
        reason = "no space left on the device" if _disk_full(exc) else str(exc).splitlines()[0]
        raise CheckpointWriteError(
            errno.ENOSPC if _disk_full(exc) else getattr(exc, "errno", None),
            f"cannot write checkpoint {path}: {reason}; the previous checkpoint (if any) "
            f"is intact. Free space in {path.parent}, then resume with --ckpt_path last",
        ) from exc


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint I/O with atomic saves and weights-only loads."""

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        atomic_torch_save(checkpoint, Path(path))

    @override
    def load_checkpoint(
        self, path, map_location: Any | None = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location)


def with_atomic_io(plugins: object) -> list:
    """The Trainer's plugins plus AtomicCheckpointIO, unless the user chose a checkpoint I/O plugin."""
    from lightning_fabric.plugins import CheckpointIO

    plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [] if plugins is None else [plugins]
    return plugins if any(isinstance(p, CheckpointIO) for p in plugins) else [*plugins, AtomicCheckpointIO()]


def load_checkpoint(path: str | Path, *, map_location: Any = "cpu", arch: str | None = None) -> dict[str, Any]:
    """A Lightning checkpoint as a dict, loaded with weights_only=True; CheckpointError (one line) otherwise.

    `arch`, when given, must be the model the checkpoint was trained as (its hyper-parameters say).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (truncated, or another kind of file; {path.stat().st_size} bytes)"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # zip/pickle/unpickler errors all mean the same thing to the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path}: holds Python objects beyond tensors and plain values, refused "
                f"(weights_only=True; load it only if you trust its source): {first}"
            ) from None
        raise CheckpointError(f"{path}: unreadable checkpoint (truncated or corrupt: {first})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: a torch file but not a Lightning checkpoint (no state_dict)")
    found = (ckpt.get("hyper_parameters") or {}).get("arch")
    if arch is not None and found is not None and found != arch:
        raise CheckpointError(
            f"{path}: a checkpoint of model {found!r}, not {arch!r}; pass --model.arch {found} or another checkpoint"
        )
    return ckpt

"""Rebuild a trained ClassifierModule, and its data settings, from a checkpoint the platform wrote.

Everything needed is in the checkpoint: the module's hyperparameters (arch, options, num_classes),
the data module's (augmentation mode, min_area, ...) and, since this version, the class names.
Loading uses `weights_only=True` (no pickled code runs). Every failure is one line naming the file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from convnets.errors import CheckpointError
from convnets.platform.training.checkpoint_io import load_checkpoint

log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    path: Path
    hparams: dict  # ClassifierModule's
    data_hparams: dict  # ShardDataModule's ({} when the checkpoint has none)
    state_dict: dict
    classes: list[str] | None  # None in checkpoints written before class names were recorded
    raw: dict

    @property
    def run_dir(self) -> Path | None:
        """The training run's folder (runs/NAME) when the checkpoint sits in its checkpoints/ folder."""
        parent = self.path.resolve().parent
        if parent.name == "checkpoints" and (parent.parent / "run_info.json").exists():
            return parent.parent
        return None


def read_checkpoint(path: Path | str) -> Checkpoint:
    """Load and check a checkpoint; CheckpointError with one line otherwise."""
    path = Path(path)
    raw = load_checkpoint(path)  # weights_only=True; one line for a missing, truncated or foreign file
    if "hyper_parameters" not in raw:
        raise CheckpointError(
            f"{path} is not a convnets checkpoint (no hyper_parameters; "
            "it may be another program's Lightning checkpoint)"
        )
    hparams = {k: v for k, v in raw["hyper_parameters"].items() if not k.startswith("_")}
    if "arch" not in hparams:
        raise CheckpointError(f"{path} was not written by convnets' ClassifierModule (no 'arch' hyperparameter)")
    data = {k: v for k, v in (raw.get("datamodule_hyper_parameters") or {}).items() if not k.startswith("_")}
    return Checkpoint(
        path=path, hparams=hparams, data_hparams=data, state_dict=raw["state_dict"], classes=raw.get("classes"), raw=raw
    )


def build_module(ckpt: Checkpoint):
    """The ClassifierModule with the checkpoint's weights, in eval mode; one line on a mismatch."""
    from convnets.platform.training.module import ClassifierModule

    hp = dict(ckpt.hparams)
    if hp.get("num_classes") is None:
        raise CheckpointError(f"{ckpt.path}: the checkpoint does not record num_classes")
    perf = dict(hp.get("perf") or {})
    perf["compile"] = False  # evaluation runs the plain network (compiling costs more than it saves here)
    module = ClassifierModule(**{**hp, "perf": perf})
    try:
        module.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(
            f"{ckpt.path}: its weights do not fit model {hp['arch']!r} with {hp['num_classes']} classes ({detail})"
        ) from None
    module.on_load_checkpoint(ckpt.raw)
    return module.eval()


def check_classes(ckpt: Checkpoint, data_classes: list[str], where: str) -> None:
    """The shards must hold the checkpoint's classes, by name and in order (labels are indices)."""
    n = ckpt.hparams["num_classes"]
    if len(data_classes) != n:
        raise CheckpointError(f"{where}: {len(data_classes)} classes, but checkpoint {ckpt.path} has {n}")
    if ckpt.classes is None:
        log.warning("checkpoint %s records no class names: only the class count (%d) was checked", ckpt.path, n)
        return
    for i, (mine, theirs) in enumerate(zip(data_classes, ckpt.classes)):
        if mine != theirs:
            raise CheckpointError(
                f"{where}: class {i} is {mine!r}, but checkpoint {ckpt.path} calls it {theirs!r} "
                "(shards written from another class list)"
            )

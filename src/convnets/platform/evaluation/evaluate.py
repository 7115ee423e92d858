"""`convnets evaluate`: multi-crop top-1/top-5 of any checkpoint the platform wrote.

The model, its options and the preprocessing (input size, mean/std, augmentation mode, resize)
come from the checkpoint; only the data and how to test are flags:

    convnets evaluate --ckpt runs/NAME/checkpoints/last.ckpt --data runs/shards/imagenette --crops 10
    convnets evaluate --ckpt CKPT --data SHARDS --split val --crops 1 --average logits --json OUT.json
    convnets evaluate --ckpt CKPT --data SHARDS --mc-dropout 10          # + the lecture slides' dropout option 1
    convnets evaluate --ckpt CKPT --data SHARDS --devices 8              # 8 GPUs (or 2 CPU processes)

It runs the module's own test step (the code `convnets test` runs) through a Trainer: under DDP
each rank reads its share of the split exactly once (padding dropped), and the counts are summed
across ranks, so the figures equal a single process's. Writes eval.json, eval.md and PNGs
(confusion matrix of the most confused classes, reliability diagram, example predictions) to
--out (default: the run folder's eval/), and logs them to the training run's W&B run.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import pytorch_lightning as pl

from convnets.platform.evaluation.collector import EvalCollector, ImagesPerSecondBar
from convnets.platform.training.multicrop import AVERAGES, has_dropout
from convnets.platform.training.restore import Checkpoint, build_module, check_classes, read_checkpoint
from convnets.platform.training.tracking import WANDB_ID_FILE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation: which checkpoint on which shards, and how to predict."""

    ckpt: Path
    data: Path | str  # a local folder, or a shard folder's address (https://..., s3://...)
    split: str | None = None  # None: "test" when the shards have it, else "val"
    crops: int | None = None  # 1, 5 or 10; None: 10 where flips are allowed, else 5
    average: str = "softmax"
    resize_ratio: float | None = None  # resized side / crop side; None: the model's (256/224)
    mc_dropout: int = 0
    batch: int = 64  # images per rank and step (each brings `crops` views)
    devices: int = 1
    accelerator: str = "auto"
    num_threads: int = 2
    out: Path | None = None
    json: Path | None = None
    wandb: bool = True
    grid_images: int = 16


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", type=Path, required=True, help="checkpoint written by `convnets fit`")
    p.add_argument(
        "--data",
        type=_address,
        required=True,
        help="shard folder (DIR with DIR/val, or a split folder); or its address (https://..., s3://...), "
        "read through the node-local cache",
    )
    p.add_argument("--split", default=None, help="split to evaluate (default: test when present, else val)")
    p.add_argument(
        "--crops", type=int, default=None, choices=[1, 5, 10], help="crops per image (default 10, 5 without flips)"
    )
    p.add_argument("--average", default="softmax", choices=AVERAGES, help="combine crops by their softmax or logits")
    p.add_argument("--resize-ratio", type=float, default=None, help="resized side / crop side (default: the model's)")
    p.add_argument(
        "--mc-dropout", type=int, default=0, metavar="N", help="also N dropout masks per image (geometric mean)"
    )
    p.add_argument("--batch", type=int, default=64, help="images per rank and step (default 64)")
    p.add_argument("--devices", type=int, default=1, help="processes/GPUs (DDP when > 1)")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"])
    p.add_argument("--num-threads", type=int, default=2, help="DALI threads per rank")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RUN/eval or ./eval-CKPT)")
    p.add_argument("--json", type=Path, default=None, help="also write the result JSON here")
    p.add_argument("--no-wandb", dest="wandb", action="store_false", help="do not log to W&B")


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    names = {f for f in EvalConfig.__dataclass_fields__} & set(vars(args))
    cfg = EvalConfig(**{k: getattr(args, k) for k in names})
    if cfg.batch < 1 or cfg.devices < 1 or cfg.num_threads < 1:
        raise ValueError("--batch, --devices and --num-threads must be >= 1")
    if cfg.mc_dropout < 0:
        raise ValueError(f"--mc-dropout must be >= 0, got {cfg.mc_dropout}")
    if cfg.resize_ratio is not None and cfg.resize_ratio <= 0:
        raise ValueError(f"--resize-ratio must be > 0, got {cfg.resize_ratio}")
    return cfg


def run_evaluate_command(args: argparse.Namespace) -> int:
    result = evaluate(config_from_args(args))
    if result:  # rank 0
        from convnets.platform.evaluation.report import summary_table

        print(summary_table(result))
        print(f"wrote {result['out']}")
    return 0


def _address(text: str) -> Path | str:
    """A local path as a Path; a URL stays a string (a Path would fold its "//")."""
    from convnets.data_pipelines.storage.store import is_remote

    return text.rstrip("/") if is_remote(text) else Path(text)


def resolve_data(data: Path | str, split: str | None) -> tuple[Path | str, str | None]:
    """`--data DIR` (DIR/val, DIR/test...) or `--data DIR/val` (a split folder with manifest.json);
    an address is a shard folder with one subfolder per split (its splits are checked when read)."""
    if isinstance(data, str):
        return data, split
    if not data.exists():
        raise FileNotFoundError(f"--data {data} does not exist (write shards with `convnets shards ...`)")
    if (data / "manifest.json").is_file():
        if split is not None and split != data.name:
            raise ValueError(f"--data {data} is the {data.name!r} split, but --split is {split!r}")
        return data.parent, data.name
    return data, split


def eval_crop_fraction(data_hparams: dict, resize_ratio: float) -> float:
    """--resize-ratio R as the data module's crop_fraction: the crop presets (alexnet, inception) resize
    to size / crop_fraction, i.e. size x R; `pad` places the image in a window of size x crop_fraction."""
    from convnets.data_pipelines.loading.augment import DEFAULT_PRESET
    from convnets.data_pipelines.loading.datamodule import resolve_preset

    preset = resolve_preset(data_hparams.get("preset") or DEFAULT_PRESET, data_hparams.get("augment"), warn=False)
    return resize_ratio if preset == "pad" else 1.0 / resize_ratio


def build_datamodule(cfg: EvalConfig, ckpt: Checkpoint, module):
    """ShardDataModule with the checkpoint's data settings; this run's data, batch, crops and split."""
    from convnets.data_pipelines.loading.datamodule import ShardDataModule

    data_dir, split = resolve_data(cfg.data, cfg.split)
    spec = module.input_spec
    if cfg.resize_ratio is not None:
        spec = replace(spec, crop_fraction=eval_crop_fraction(ckpt.data_hparams, cfg.resize_ratio))
    accepted = set(inspect.signature(ShardDataModule.__init__).parameters)
    # The training node's cache folder and size are not this machine's: the defaults apply here.
    settings = {k: v for k, v in ckpt.data_hparams.items() if k in accepted - {"cache_dir", "cache_limit_gb"}}
    settings.update(
        data_dir=str(data_dir),
        batch_size=cfg.batch,
        eval_batch_size=cfg.batch,
        test_crops=cfg.crops,
        test_split=split,
        num_threads=cfg.num_threads,
        input_spec=spec,
    )
    dm = ShardDataModule(**settings)
    split = dm.test_split_name
    if not dm.has_split(split):
        raise FileNotFoundError(f"--data {data_dir}: no {split!r} split ({data_dir}/{split}/manifest.json is missing)")
    check_classes(ckpt, list(dm.manifest(split).classes), f"{data_dir}/{split}")
    return dm


def output_dir(cfg: EvalConfig, ckpt: Checkpoint) -> Path:
    if cfg.out is not None:
        return cfg.out
    return ckpt.run_dir / "eval" if ckpt.run_dir else Path(f"eval-{ckpt.path.stem}")


def wandb_logger(enabled: bool, ckpt: Checkpoint, out: Path, job_type: str = "eval"):
    """The training run's W&B run (resumed by its stored id) when known, else a new run beside the outputs."""
    if not enabled:
        return None
    from convnets.platform.training.tracking import wandb_logger as new_wandb_logger
    from convnets.platform.training.tracking import wandb_offline

    run_dir = ckpt.run_dir
    kw: dict = {
        "project": _project(run_dir),
        "save_dir": str(run_dir or out),
        "offline": wandb_offline(),
        "log_model": False,
        "job_type": job_type,
    }
    id_file = run_dir / WANDB_ID_FILE if run_dir else None
    if id_file is not None and id_file.is_file():
        kw.update(id=id_file.read_text().strip(), resume="allow")
    else:
        kw["name"] = f"{job_type}-{run_dir.name if run_dir else ckpt.path.stem}"
    return new_wandb_logger(**kw)


def _project(run_dir: Path | None) -> str:
    try:
        info = json.loads((run_dir / "run_info.json").read_text()) if run_dir else {}
        return info.get("fit", {}).get("config", {}).get("wandb_project") or "convnets"
    except (OSError, ValueError):
        return "convnets"


def evaluate(cfg: EvalConfig) -> dict:
    """Run the evaluation; the full result (and the files written) on rank 0, {} on other ranks."""
    from convnets.platform.training.module import EvalOptions

    ckpt = read_checkpoint(cfg.ckpt)
    module = build_module(ckpt)
    module.eval_options = EvalOptions(average=cfg.average, mc_dropout=cfg.mc_dropout, keep_topk=True)
    if cfg.mc_dropout and not has_dropout(module.net):  # before any process, pipeline or W&B run starts
        raise ValueError(f"--mc-dropout {cfg.mc_dropout}: model {ckpt.hparams['arch']!r} has no dropout layers")
    dm = build_datamodule(cfg, ckpt, module)
    out = output_dir(cfg, ckpt)
    logger = wandb_logger(cfg.wandb, ckpt, out)
    collector = EvalCollector()
    trainer = pl.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy="ddp" if cfg.devices > 1 else "auto",
        logger=logger or False,
        callbacks=[collector, ImagesPerSecondBar()],
        enable_model_summary=False,
        default_root_dir=str(out),
    )
    trainer.test(module, datamodule=dm, verbose=False)
    if not trainer.is_global_zero:
        return {}
    from convnets.data_pipelines.loading.augment import eval_crop_count
    from convnets.platform.evaluation.report import write_outputs

    split = dm.test_split_name
    expected = dm.manifest(split).num_samples
    if collector.result["n"] != expected:  # torchvision only warns; a wrong count is a wrong result
        raise RuntimeError(f"evaluated {collector.result['n']} samples, but {split} holds {expected}")
    crops = eval_crop_count(cfg.crops, flip=dm.manifest(split).flip_ok)
    result = {
        **collector.result,
        "crops": crops,
        "average": cfg.average,
        "split": split,
        "ckpt": str(cfg.ckpt),
        "arch": ckpt.hparams["arch"],
        "data": str(cfg.data),
        "resize": dm.augment_spec(split).resize,
        "mc_dropout_samples": cfg.mc_dropout,
    }
    return write_outputs(result, collector, dm, out, cfg=cfg, logger=logger)

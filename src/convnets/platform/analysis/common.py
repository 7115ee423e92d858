"""What both analyses share: their configuration, the checkpoint and data they load, the centre crops
they read, the layers they tap, and where and how they publish a result."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from convnets.platform.training.restore import build_module, read_checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalyzeConfig:
    ckpt: Path
    data: Path
    split: str = "val"
    samples: int = 64  # evaluation images (invariance: the sample averaged over; layers: the probe's test set)
    train_samples: int = 2000  # layers: images of the train split the probes learn from
    layers: str | None = None  # comma-separated layer names; None: the analysis's default
    batch: int = 64
    num_threads: int = 2
    out: Path | None = None
    json: Path | None = None
    wandb: bool = True


def load_setup(cfg: AnalyzeConfig):
    """(checkpoint, module in eval mode, data module) with the checkpoint's preprocessing."""
    from convnets.platform.evaluation.evaluate import EvalConfig, build_datamodule

    ckpt = read_checkpoint(cfg.ckpt)
    module = build_module(ckpt)
    dm = build_datamodule(
        EvalConfig(
            ckpt=cfg.ckpt, data=cfg.data, split=cfg.split, crops=1, batch=cfg.batch, num_threads=cfg.num_threads
        ),
        ckpt,
        module,
    )
    return ckpt, module, dm


def centre_crops(dm, split: str, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `limit` centre crops (N, C, H, W) of `split`, in split order, and their labels."""
    from convnets.data_pipelines.loading.datamodule import ShardDataModule

    hp = dict(dm.hparams)
    hp.update(test_split=split, test_crops=1, input_spec=dm.input_spec)
    other = ShardDataModule(**hp)
    images, labels, n = [], [], 0
    for batch in other.test_dataloader():
        v = batch["valid"]
        images.append(batch["images"][v])
        labels.append(batch["labels"][v])
        n += int(v.sum())
        if n >= limit:
            break
    return torch.cat(images)[:limit], torch.cat(labels)[:limit]


def tapped_layers(net: nn.Module) -> dict[str, nn.Module]:
    """Conv and fully connected layers in forward order, by the paper's names where the model has them."""
    if hasattr(net, "layer_paths"):  # the AlexNet family: conv1..conv5, fc6..fc8
        return {name: net.layer(name) for name in net.layer_paths if not name.startswith("bn")}
    return {name: m for name, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def choose_layers(net: nn.Module, wanted: str | None, default: list[str] | None = None) -> dict[str, nn.Module]:
    every = tapped_layers(net)
    names = [n.strip() for n in wanted.split(",")] if wanted else (default or list(every))
    unknown = [n for n in names if n not in every]
    if unknown:
        raise ValueError(f"--layers: no layer {unknown[0]!r} in this model; its layers: {', '.join(every)}")
    return {n: every[n] for n in names}


@torch.no_grad()
def features(
    module, images: torch.Tensor, layers: dict[str, nn.Module], *, batch: int, pool: int | None = None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each layer's output (flattened; conv maps average-pooled to pool x pool first when given) and the logits."""
    store: dict[str, list[torch.Tensor]] = {n: [] for n in layers}

    def hook(name):
        def save(_module, _inputs, output):
            out = output.detach().float()
            if pool and out.dim() == 4:
                out = nn.functional.adaptive_avg_pool2d(out, pool)
            store[name].append(out.flatten(1).clone())  # clone: an in-place ReLU follows some layers

        return save

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        logits = torch.cat([module(images[i : i + batch]).float() for i in range(0, len(images), batch)])
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v) for n, v in store.items()}, logits


def output_folder(cfg: AnalyzeConfig, ckpt, what: str) -> Path:
    if cfg.out is not None:
        return cfg.out
    return ckpt.run_dir / "analysis" if ckpt.run_dir else Path(f"analysis-{ckpt.path.stem}")


def publish(cfg: AnalyzeConfig, ckpt, out: Path, name: str, result: dict, pngs: dict[str, Path]) -> None:
    """JSON (+ --json copy), markdown, and W&B (training run's when known)."""
    from convnets.platform.evaluation.evaluate import wandb_logger
    from convnets.utils.files import write_json

    result["plots"] = {k: str(v) for k, v in pngs.items()}
    result["out"] = str(out)
    write_json(out / f"{name}.json", result)
    if cfg.json is not None:
        write_json(cfg.json, result)
    (out / f"{name}.md").write_text(result["table"] + "\n")
    logger = wandb_logger(cfg.wandb, ckpt, out, job_type=f"analyze-{name}")
    if logger is not None:
        for key, path in pngs.items():
            logger.log_image(key=f"analysis/{key}", images=[str(path)])
        logger.experiment.summary.update({f"analysis/{name}": result["summary"]})
        logger.experiment.finish()

"""`convnets bench e2e`: where a training step's time goes, from shards to weights.

Three rates on the same machine, same batch, same augmentation as training:
  data:  the DALI train pipeline alone (read + decode + random-resized crop + flip + normalize),
  model: a bare training loop on a synthetic device-resident batch (no data path),
  both:  the DALI pipeline feeding that training loop.
The smaller of data/model is the bottleneck; `both` close to it means they overlap well.
The shards are cycled (a plan of `warmup + steps` batches over the split, reshuffled every
pass), so a small shard set measures the same per-image work as ImageNet.

    convnets bench e2e --data SHARDS --arch alexnet --batch 256 --precision bf16-mixed \\
        --channels-last --hw-decoder-load 0.65 --json bench/e2e.json
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from convnets.platform.bench.model import ModelBench, _sync, bare_loop, synthetic_batch
from convnets.utils.environment import hardware, runtime_versions


def _loader(args, cfg: ModelBench, total_batches: int):
    """A DALI train loader over the split whose plan cycles the samples for `total_batches` batches."""
    from convnets.data_pipelines.loading.dali_loader import DaliLoader, LoaderConfig
    from convnets.data_pipelines.loading.datamodule import ShardDataModule
    from convnets.data_pipelines.loading.epoch_plan import RankPlan, epoch_permutation
    from convnets.platform.training.module import ClassifierModule

    spec = ClassifierModule(arch=cfg.arch, num_classes=1).input_spec
    dm = ShardDataModule(data_dir=str(args.data), batch_size=cfg.batch, num_threads=args.num_threads, input_spec=spec)
    index, labels = dm.samples("train")
    n, need = len(labels), total_batches * cfg.batch
    order = np.concatenate([epoch_permutation(n, seed=0, epoch=e) for e in range(-(-need // n))])[:need]
    plan = RankPlan(indices=order.astype(np.int64), valid=np.ones(need, dtype=bool), batch_size=cfg.batch)
    device_id = 0 if cfg.torch_device.type == "cuda" else None
    lc = LoaderConfig(
        train=True,
        crops=1,
        batch_size=cfg.batch,
        num_threads=args.num_threads,
        device_id=device_id,
        seed=0,
        rank=0,
        world_size=1,
        hw_decoder_load=args.hw_decoder_load,
    )

    class CycledLoader(DaliLoader):
        def plan(self, epoch: int) -> RankPlan:  # the cycled plan instead of one epoch's
            return cycled

    cycled = plan
    return CycledLoader(index, labels, dm.augment_spec("train"), lc, epoch_fn=lambda: 0), dm.num_classes


def _timed(batches, warmup: int, device: torch.device, work=None) -> float:
    """Images/s over the batches after `warmup`, optionally running `work(batch)` on each."""
    images, start = 0, None
    for i, batch in enumerate(batches):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        if work is not None:
            work(batch)
        if start is not None:
            images += batch["n_valid"]
    _sync(device)
    return images / (time.perf_counter() - start)


def _train_step_fn(cfg: ModelBench, num_classes: int):
    from convnets.platform.training.module import ClassifierModule, PerfConfig, masked_cross_entropy

    net = (
        ClassifierModule(arch=cfg.arch, num_classes=num_classes, perf=PerfConfig(channels_last=cfg.channels_last))
        .net.to(cfg.torch_device)
        .train()
    )
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(cfg.precision)

    def step(batch: dict) -> None:
        images = batch["images"].to(cfg.torch_device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(cfg.torch_device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = masked_cross_entropy(
                net(images), batch["labels"].to(cfg.torch_device), batch["valid"].to(cfg.torch_device)
            )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def bench_e2e(args: argparse.Namespace) -> dict:
    cfg = ModelBench(
        arch=args.arch,
        batch=args.batch,
        precision=args.precision,
        channels_last=args.channels_last,
        steps=args.steps,
        warmup=args.warmup,
        rounds=1,
        device=args.device,
    )
    if cfg.torch_device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    total = cfg.warmup + cfg.steps
    loader, num_classes = _loader(args, cfg, total)
    data = _timed(iter(loader), cfg.warmup, cfg.torch_device)
    from convnets.models import get_model_info

    batch = synthetic_batch(cfg.batch, get_model_info(cfg.arch).input_size, num_classes, cfg.torch_device)
    model = bare_loop(ModelBench(**{**cfg.__dict__, "num_classes": num_classes}), batch).window_rate
    loader, _ = _loader(args, cfg, total)
    both = _timed(iter(loader), cfg.warmup, cfg.torch_device, work=_train_step_fn(cfg, num_classes))
    return {
        "bench": "e2e",
        "arch": cfg.arch,
        "batch": cfg.batch,
        "precision": cfg.precision,
        "channels_last": cfg.channels_last,
        "decode": "mixed (nvJPEG)" if cfg.torch_device.type == "cuda" else "cpu",
        "hw_decoder_load": args.hw_decoder_load,
        "num_threads": args.num_threads,
        "steps": cfg.steps,
        "data_images_per_s": data,
        "model_images_per_s": model,
        "both_images_per_s": both,
        "bottleneck": "data" if data < model else "model",
        "hardware": hardware(cfg.torch_device),
        "versions": runtime_versions(),
    }

"""Where the Lightning step's time goes beside the bare step's: median milliseconds per segment.

    PYTHONPATH=src python scripts/probe_loop_segments.py --arch lenet5 --batch 256 --steps 5 --rounds 40 [--json OUT]

`convnets bench model`'s interleaved fit (`bench.interleaved_fit`: the platform's Trainer with its
callbacks, logger and progress bar, the bare blocks between Lightning's), with time stamps at the
module's hooks and between the bare step's forward, backward and optimizer.
Segments are medians over the timed steps, so they need not add up to the whole step exactly.
A diagnostic for the loop-overhead notes in docs/benchmarks.md, not a benchmark with a target.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from convnets.models import get_model_info
from convnets.platform.bench import model as bench
from convnets.platform.training.module import ClassifierModule, PerfConfig

MARKS: dict[str, list[float]] = defaultdict(list)


def mark(name: str) -> None:
    MARKS[name].append(time.perf_counter())


class StampedModule(ClassifierModule):
    def training_step(self, batch, batch_idx):
        mark("L_step_in")
        loss = super().training_step(batch, batch_idx)
        mark("L_step_out")
        return loss

    def on_before_backward(self, loss):
        mark("L_backward_in")

    def on_after_backward(self):
        mark("L_backward_out")

    def on_before_optimizer_step(self, optimizer):
        mark("L_optimizer_in")

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        mark("L_optimizer_out")


class StampedBare(bench.BareArm):
    """`bench.BareArm`'s step with time stamps between its halves and inside the update."""

    def step(self) -> None:
        mark("B_in")
        loss = self.forward()
        mark("B_step_out")
        self.update(loss)
        mark("B_out")

    def update(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()
        mark("B_backward_out")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        mark("B_optimizer_out")
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()


class Stamps(bench.Interleaved):
    """`bench.Interleaved` (same blocks, same clock) with time stamps around each Lightning step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        mark("L_start")
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        mark("L_end")
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        mark("L_resume")


SEGMENTS = [  # (label, from mark, to mark) within one step
    ("Lightning: batch start -> training_step", "L_start", "L_step_in"),
    ("Lightning: training_step (forward, loss, accuracy, logging)", "L_step_in", "L_step_out"),
    ("Lightning: training_step -> backward (closure, zero_grad hooks)", "L_step_out", "L_backward_in"),
    ("Lightning: backward", "L_backward_in", "L_backward_out"),
    ("Lightning: backward -> optimizer step hook", "L_backward_out", "L_optimizer_in"),
    ("Lightning: optimizer step", "L_optimizer_in", "L_optimizer_out"),
    ("Lightning: optimizer step -> batch end (scheduler, callbacks)", "L_optimizer_out", "L_end"),
    ("bare: forward, loss, accuracy", "B_in", "B_step_out"),
    ("bare: backward", "B_step_out", "B_backward_out"),
    ("bare: optimizer step", "B_backward_out", "B_optimizer_out"),
    ("bare: zero_grad + scheduler", "B_optimizer_out", "B_out"),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="lenet5")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    cfg = bench.ModelBench(
        arch=args.arch,
        batch=args.batch,
        steps=args.steps,
        warmup=args.warmup,
        rounds=args.rounds,
        device="cpu",
        num_classes=1000,
    )
    batch = bench.synthetic_batch(cfg.batch, get_model_info(cfg.arch).input_size, cfg.num_classes, cfg.torch_device)
    timer = Stamps(cfg, StampedBare(cfg, batch, bench.interleaved_steps(cfg)))
    torch.manual_seed(0)
    module = StampedModule(arch=cfg.arch, num_classes=cfg.num_classes, perf=PerfConfig())
    with tempfile.TemporaryDirectory() as tmp:
        bench.interleaved_fit(cfg, batch, Path(tmp), module=module, timer=timer)
    w = cfg.warmup
    out = {}
    for label, a, b in SEGMENTS:
        pairs = list(zip(MARKS[a], MARKS[b]))[w:]  # both arms: their warm-up steps first
        out[label] = 1e3 * statistics.median(y - x for x, y in pairs)
    # Between steps: the end of one Lightning step (after any bare block) to the start of the next one.
    between = list(zip(MARKS["L_resume"], MARKS["L_start"][1:]))[w:]
    out["Lightning: batch end -> next batch start (checkpoint hooks, logger, fetch)"] = 1e3 * statistics.median(
        y - x for x, y in between
    )
    lightning_step = list(zip(MARKS["L_start"], MARKS["L_end"]))[w:]
    out["Lightning: whole step, batch start -> batch end"] = 1e3 * statistics.median(y - x for x, y in lightning_step)
    bare_step = list(zip(MARKS["B_in"], MARKS["B_out"]))[w:]
    out["bare: whole step"] = 1e3 * statistics.median(y - x for x, y in bare_step)
    width = max(map(len, out))
    for label, ms in out.items():
        print(f"{label.ljust(width)}  {ms:8.3f} ms")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "segments_ms": out,
                    **vars(args),
                    "json": str(args.json),
                    "hardware": bench.hardware(cfg.torch_device),
                    "versions": bench.runtime_versions(),
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()

"""`convnets bench model` interleaves the two arms inside one fit: each arm is charged its own blocks only."""

from __future__ import annotations

import time

from pytorch_lightning.loggers import CSVLogger

from convnets.models import get_model_info
from convnets.platform.bench import model as bench

BARE_SLEEP_S = 0.4  # added to every bare step: far more than a whole LeNet-5 step at batch 8


def test_each_arm_is_charged_only_its_own_blocks(tmp_path, monkeypatch):
    cfg = bench.ModelBench(arch="lenet5", batch=8, steps=3, warmup=1, rounds=2, num_classes=10, device="cpu")
    real_step = bench.BareArm.step

    def slow_step(self):
        time.sleep(BARE_SLEEP_S)
        real_step(self)

    monkeypatch.setattr(bench.BareArm, "step", slow_step)
    monkeypatch.setattr(bench, "_logger", lambda run_dir: CSVLogger(str(run_dir)))  # W&B: test_gpu_check's run
    batch = bench.synthetic_batch(cfg.batch, get_model_info("lenet5").input_size, cfg.num_classes, cfg.torch_device)
    timer = bench.interleaved_fit(cfg, batch, tmp_path)

    assert len(timer.lightning) == len(timer.bare_blocks) == cfg.rounds
    for lightning, bare in zip(timer.lightning, timer.bare_blocks):
        assert len(lightning.marks) == len(bare.marks) == cfg.steps + 1  # each step's start, then the end
        assert bare.window_rate <= cfg.batch / BARE_SLEEP_S  # the bare block is timed, sleeps included
        # Had the Lightning clock run on through the bare block that follows each Lightning block
        # (3 x 0.4 s), the block's last step would read >= 1.2 s and its window >= 0.4 s a step.
        longest_step = max(b - a for a, b in zip(lightning.marks, lightning.marks[1:]))
        assert longest_step < BARE_SLEEP_S / 2

"""Validation metrics under 2 DDP ranks equal an independent single-process computation exactly."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tests.integration.cli_helpers import convnets

pytestmark = [pytest.mark.integration, pytest.mark.dali, pytest.mark.slow]


def test_ddp_val_metrics_equal_a_plain_recount(digits_shards, tmp_path):
    """359 held-out digits over 2 ranks x 7 per batch: padding on one rank, nothing counted twice."""
    from convnets.data_pipelines.loading.datamodule import ShardDataModule
    from convnets.platform.training.module import ClassifierModule

    fit = convnets(
        "fit",
        "--config",
        "lenet5_digits",
        "--data.data_dir",
        digits_shards,
        "--runs_dir",
        tmp_path,
        "--run_name",
        "ddp",
        "--trainer.logger",
        "false",
        "--trainer.max_epochs",
        "2",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--data.eval_batch_size",
        "7",
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    logged = json.loads((tmp_path / "ddp" / "metrics.json").read_text())["history"][-1]

    module = ClassifierModule.load_from_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.ckpt").eval()
    dm = ShardDataModule(
        data_dir=str(digits_shards),
        batch_size=16,
        eval_batch_size=50,
        num_threads=1,
        preset="pad",
        input_spec=module.input_spec,
    )
    dm.setup("validate")
    correct, top5, loss, n = 0, 0, 0.0, 0
    with torch.no_grad():
        for batch in dm.val_dataloader():  # one process, plain boolean masks: the obvious way
            v = batch["valid"]
            logits, labels = module(batch["images"])[v], batch["labels"][v]
            correct += int((logits.argmax(-1) == labels).sum())
            top5 += int((logits.topk(5, -1).indices == labels[:, None]).any(-1).sum())
            loss += float(F.cross_entropy(logits, labels, reduction="sum"))
            n += int(v.sum())
    assert n == 359
    assert logged["val_top1"] == pytest.approx(correct / n, abs=1e-6)
    assert logged["val_top5"] == pytest.approx(top5 / n, abs=1e-6)
    assert logged["val_loss"] == pytest.approx(loss / n, rel=1e-4)
    assert 0.5 < logged["val_top1"] < 1.0  # a trained model: a wrong count would show
    assert logged["images_per_s"] > 0 and 0 <= logged["data_wait_fraction"] <= 1

"""The training step's arithmetic: masked loss, learning-rate schedule, multi-crop averaging."""
from __future__ import annotations

import math

import pytest
import torch

from convnets.platform.module import ClassifierModule, OptimConfig, lr_factor, masked_cross_entropy


def test_padding_does_not_count_in_the_loss():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]])
    labels = torch.tensor([0, 1, 1])
    valid = torch.tensor([True, True, False])  # the third is DDP padding with a terrible loss
    expected = torch.nn.functional.cross_entropy(logits[:2], labels[:2])
    assert torch.allclose(masked_cross_entropy(logits, labels, valid), expected)
    assert masked_cross_entropy(logits, labels, torch.zeros(3, dtype=torch.bool)) == 0


def test_schedules():
    cosine = OptimConfig(schedule="cosine", warmup_epochs=1)
    assert lr_factor(cosine, 0.0, 10) == pytest.approx(0.1)
    assert lr_factor(cosine, 0.5, 10) == pytest.approx(0.55)  # ramps within the epoch
    assert lr_factor(cosine, 1.0, 10) == pytest.approx(1.0)
    assert lr_factor(cosine, 5.5, 10) == pytest.approx(0.5)
    assert lr_factor(cosine, 10.0, 10) == pytest.approx(0.0, abs=1e-12)
    step = OptimConfig(schedule="step", step_epochs=30, gamma=0.1)
    assert [lr_factor(step, e, 90) for e in (0, 29.9, 30, 60)] == pytest.approx([1, 1, 0.1, 0.01])


def test_multi_crop_averages_softmax_and_crop_zero_is_single_crop():
    module = ClassifierModule(arch="lenet5_modern", num_classes=10)
    module.eval()
    images = torch.randn(3, 5, 1, 32, 32)
    batch = {"images": images, "labels": torch.tensor([1, 2, 3]), "valid": torch.tensor([True, True, True])}
    module.log = lambda *a, **k: None  # no Trainer here: metrics are read back directly
    with torch.no_grad():
        module.test_step(batch, 0)
        probs = module(images.flatten(0, 1)).softmax(-1).view(3, 5, -1)
    assert torch.equal(module.test_confusion.compute().sum(1).nonzero().flatten(), torch.tensor([1, 2, 3]))
    expected_multi = (probs.mean(1).argmax(-1) == torch.tensor([1, 2, 3])).float().mean()
    expected_single = (probs[:, 0].argmax(-1) == torch.tensor([1, 2, 3])).float().mean()
    assert math.isclose(module.test_top1.compute().item(), expected_multi.item())
    assert math.isclose(module.test_top1_1crop.compute().item(), expected_single.item())


def test_checkpoint_hparams_rebuild_the_same_model():
    module = ClassifierModule(arch="lenet5", num_classes=7, optim=OptimConfig(lr=0.5))
    again = ClassifierModule(**module.hparams)
    assert again.optim.lr == 0.5 and again.net.output.centres.shape == (7, 84)

"""The training step's arithmetic: masked loss, learning-rate schedule, multi-crop averaging."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from convnets.platform.training.module import ClassifierModule, OptimConfig, lr_factor, masked_cross_entropy


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


def _bn_module():
    torch.manual_seed(0)
    module = ClassifierModule(arch="alexnet_small", num_classes=4, norm="batch")
    module.log = lambda *a, **k: None  # no Trainer: nothing to log to
    module.trainer = type("T", (), {"log_every_n_steps": 50, "num_training_batches": 100, "global_step": 0})()
    return module.train()


def _running_means(module) -> list[torch.Tensor]:
    return [
        m.running_mean.clone() for m in module.net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]


@pytest.mark.parametrize("n_valid", [4, 1])
def test_batchnorm_never_learns_from_padding(n_valid):
    """A padded batch moves BatchNorm's statistics exactly as its real samples alone would."""
    torch.manual_seed(1)
    images = torch.randn(6, 3, 64, 64)
    images[n_valid:] = 1000.0  # padding repeats: here, absurd values that would wreck the statistics
    batch = {
        "images": images,
        "labels": torch.tensor([0, 1, 2, 3, 0, 1]),
        "valid": torch.arange(6) < n_valid,
        "n_valid": n_valid,
    }
    padded, alone = _bn_module(), _bn_module()
    torch.manual_seed(2)  # the same dropout masks in both
    padded.training_step(batch, 0)
    if n_valid >= 2:  # the reference: the same module fed only the real samples
        real = {k: (v[:n_valid] if torch.is_tensor(v) else v) for k, v in batch.items()}
        torch.manual_seed(2)
        alone.training_step(real, 0)
    # n_valid = 1: no batch statistics can be formed from one sample, so the running ones stay.
    for got, want in zip(_running_means(padded), _running_means(alone)):
        assert torch.allclose(got, want, atol=1e-6)
    assert all(m.training for m in padded.net.modules())  # BatchNorm is back in training mode


def test_plateau_state_survives_a_checkpoint():
    module = ClassifierModule(arch="lenet5", num_classes=10, optim=OptimConfig(schedule="plateau"))
    module.plateau.drops, module.plateau.best = 2, 0.61
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    again = ClassifierModule(**module.hparams)
    again.on_load_checkpoint(checkpoint)
    assert again.plateau.drops == 2 and again.plateau.best == 0.61


def test_confusion_plot_stays_small_at_a_thousand_classes(tmp_path):
    """ImageNet's 1,000 classes: only the most confused are drawn, the PNG stays a normal size."""
    from PIL import Image

    from convnets.platform.training.plots import confusion_matrix, most_confused

    rng = np.random.default_rng(0)
    matrix = np.diag(rng.integers(40, 50, 1000))
    matrix[7, 3] = matrix[500, 999] = 30  # the two worst confusions
    path = confusion_matrix(matrix, [f"class {i}" for i in range(1000)], tmp_path / "cm.png")
    width, height = Image.open(path).size
    assert width < 2000 and height < 2000
    assert {3, 7, 500, 999} <= set(most_confused(matrix).tolist()) and len(most_confused(matrix)) == 20


@pytest.mark.parametrize("with_count", [True, False], ids=["n_valid_from_the_plan", "counted_from_valid"])
def test_the_test_step_counts_only_the_real_samples_of_a_mixed_batch(with_count):
    """A rank's last test batch: two real images and one padding (a repeat, here of another class)."""
    torch.manual_seed(0)
    module = ClassifierModule(arch="lenet5_modern", num_classes=10).eval()
    module.log = lambda *a, **k: None  # no Trainer here: metrics are read back directly
    module.eval_options.keep_topk = True
    module.on_test_start()
    images, labels = torch.randn(3, 5, 1, 32, 32), torch.tensor([1, 2, 3])
    batch = {
        "images": images,
        "labels": labels,
        "valid": torch.tensor([True, True, False]),
        "index": torch.tensor([7, 8, 7]),
    }
    if with_count:
        batch["n_valid"] = 2
    with torch.no_grad():
        module.test_step(batch, 0)
        probs = module(images[:2].flatten(0, 1)).softmax(-1).view(2, 5, -1).mean(1)
    for name in ("test_top1", "test_top5", "test_top1_1crop", "test_top5_1crop"):
        assert int(getattr(module, name).total) == 2, name
    assert math.isclose(module.test_top1.compute().item(), (probs.argmax(-1) == labels[:2]).float().mean().item())
    confusion = module.test_confusion.compute()
    assert int(confusion.sum()) == 2 and int(confusion[3].sum()) == 0  # the padding's class never counted
    assert int(module.test_calibration.count.sum()) == 2
    (rows,) = module.test_topk
    assert rows[:, 0].tolist() == [7, 8] and rows[:, 1].tolist() == [1, 2]

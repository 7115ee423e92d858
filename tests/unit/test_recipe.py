"""The recipe: schedules, plateau division, linear scaling, warm-up, decay groups, label smoothing, horizon."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from convnets.platform.bench.model import SyntheticBatches, synthetic_batch
from convnets.platform.training.module import ClassifierModule, masked_cross_entropy
from convnets.platform.training.recipe import OptimConfig, PlateauState, lr_factor, parameter_groups, scaled


def test_plateau_divides_after_patience_and_at_most_max_drops():
    o = OptimConfig(schedule="plateau", plateau_patience=2, plateau_max_drops=3, plateau_threshold=0.001)
    state = PlateauState()
    history = [0.30, 0.40, 0.4005, 0.39, 0.41, 0.41, 0.41, 0.41, 0.41, 0.41, 0.41, 0.41]
    drops = [state.observe(v, o) for v in history]
    # 0.4005 is within the threshold: two checks without improvement, then /10; three times at most.
    assert drops == [False, False, False, True, False, False, True, False, True, False, False, False]
    assert state.drops == 3 and lr_factor(o, 50.0, 90.0, state.drops) == pytest.approx(1e-3)


def test_multistep_and_step_and_cosine_to_zero():
    multi = OptimConfig(schedule="multistep", milestones=[30, 60, 80])
    assert [lr_factor(multi, e, 90) for e in (0, 29.99, 30, 60, 85)] == pytest.approx([1, 1, 0.1, 0.01, 0.001])
    cosine = OptimConfig(schedule="cosine")
    assert lr_factor(cosine, 45, 90) == pytest.approx(0.5) and lr_factor(cosine, 90, 90) == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match="milestones"):
        OptimConfig(schedule="multistep")


def test_linear_scaling_rule_ramps_from_the_unscaled_rate():
    o = OptimConfig(lr=0.01, reference_batch=128, warmup_epochs=5)
    lr, resolved = scaled(o, global_batch=8 * 128)
    assert lr == pytest.approx(0.08)
    assert lr * lr_factor(resolved, 0.0, 90) == pytest.approx(0.01)  # Goyal et al.: start from lr, reach k x lr
    assert lr * lr_factor(resolved, 5.0, 90) == pytest.approx(0.08)
    lr1, one_gpu = scaled(o, global_batch=128)
    assert lr1 == pytest.approx(0.01) and lr_factor(one_gpu, 0.0, 90) == pytest.approx(1.0)  # a no-op on 1 GPU


def test_decay_spares_biases_norm_gains_and_rbf_centres():
    lenet = ClassifierModule(arch="lenet5", num_classes=10).net
    decay, spared = parameter_groups(lenet, OptimConfig())
    spared_ids = {id(p) for p in spared["params"]}
    assert id(lenet.output.centres) in spared_ids
    assert all(p.ndim > 1 for p in decay["params"]) and id(lenet.conv1.bias) in spared_ids
    bn = ClassifierModule(arch="alexnet_bn", num_classes=10).net
    gains = [m.weight for m in bn.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert gains and all(id(g) in {id(p) for p in parameter_groups(bn, OptimConfig())[1]["params"]} for g in gains)
    everything = parameter_groups(lenet, OptimConfig(decay_all=True))
    assert not everything[1]["params"]


def test_label_smoothing_matches_torch_and_padding_is_ignored():
    logits, labels = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    valid = torch.tensor([True, True, True, True, False, False])
    expected = F.cross_entropy(logits[:4], labels[:4], label_smoothing=0.1)
    assert torch.allclose(masked_cross_entropy(logits, labels, valid, label_smoothing=0.1), expected)


def _fit_lr_trace(tmp_path, **trainer_kwargs) -> list[float]:
    module = ClassifierModule(
        arch="lenet5_modern", num_classes=10, optim=OptimConfig(lr=0.1, schedule="cosine", warmup_epochs=0)
    )
    lrs: list[float] = []

    class Trace(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    batch = synthetic_batch(4, (1, 32, 32), 10, torch.device("cpu"))
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[Trace()],
        default_root_dir=str(tmp_path),
        enable_model_summary=False,
        **trainer_kwargs,
    )
    trainer.fit(module, train_dataloaders=SyntheticBatches(batch, 10))
    return lrs


def test_schedule_horizon_is_max_steps_when_it_ends_training_first(tmp_path):
    """max_steps=25 with 10 steps per epoch: the cosine reaches ~0 at step 25, not at max_epochs."""
    lrs = _fit_lr_trace(tmp_path, max_steps=25, max_epochs=100)
    assert len(lrs) == 25
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] < 0.1 * 0.01 and lrs[12] == pytest.approx(0.05, rel=0.1)


def test_schedule_horizon_is_max_epochs(tmp_path):
    lrs = _fit_lr_trace(tmp_path, max_epochs=3)
    assert len(lrs) == 30 and lrs[15] == pytest.approx(0.05, rel=0.1) and lrs[-1] < 0.1 * 0.01


@pytest.mark.parametrize("decay_all", [False, True])
def test_the_optimizer_gives_each_group_its_decay(tmp_path, decay_all):
    """What configure_optimizers hands SGD: weights decayed at model.optim.weight_decay, the spared
    parameters (biases, RBF centres) at exactly 0, every parameter in one group."""
    module = ClassifierModule(arch="lenet5", num_classes=10, optim=OptimConfig(weight_decay=3e-3, decay_all=decay_all))
    batch = synthetic_batch(4, (1, 32, 32), 10, torch.device("cpu"))
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path),
        enable_model_summary=False,
        max_steps=1,
    )
    trainer.fit(module, train_dataloaders=SyntheticBatches(batch, 2))
    groups = trainer.optimizers[0].param_groups
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert sum(len(g["params"]) for g in groups) == len(decay_of) == len(list(module.net.parameters()))
    net = module.net
    assert decay_of[id(net.conv1.weight)] == 3e-3
    spared = 3e-3 if decay_all else 0.0
    assert decay_of[id(net.conv1.bias)] == spared and decay_of[id(net.output.centres)] == spared

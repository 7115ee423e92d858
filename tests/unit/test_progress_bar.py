"""The training loop between steps: no per-step host-device sync from logging or the progress bar,
and the clock-driven bar still shows the loss (one refresh here: the epoch's last step)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from tests.sync_probe import SyncRecorder, cpu_spy

STEPS = 14  # > 10: the old step logged its loss to the bar at step 10, then Lightning .item()ed it every step


class BetweenSteps(SyncRecorder):
    """Records from the start of step 1 (step 0 draws the input picture) to the start of the last step.

    Unlike test_no_sync's window it spans Lightning's own per-step work after the callbacks
    (logger connector, metric conversion for the bar) and the bar's refresh decision.
    """

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._active = 1 <= batch_idx < trainer.num_training_batches - 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pass


def test_no_sync_between_steps_and_the_bar_shows_the_loss(tmp_path):
    from convnets.models import get_model_info
    from convnets.platform.bench.model import SyntheticBatches, synthetic_batch
    from convnets.platform.training.callbacks import PlatformProgressBar, platform_callbacks
    from convnets.platform.training.module import ClassifierModule

    torch.manual_seed(0)
    batch = synthetic_batch(8, get_model_info("lenet5").input_size, 10, torch.device("cpu"))
    recorder, bar = BetweenSteps(), PlatformProgressBar(min_interval_s=1e9)  # refreshes at the last step only
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[recorder, *platform_callbacks(tmp_path, {}, progress_bar=False), bar],
        logger=CSVLogger(str(tmp_path)),
        log_every_n_steps=1000,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    with cpu_spy(recorder):
        trainer.fit(ClassifierModule(arch="lenet5", num_classes=10), train_dataloaders=SyntheticBatches(batch, STEPS))
    assert trainer.global_step == STEPS
    assert recorder.events == [], "\n".join(recorder.events[:20])
    # The bar counted every step and shows the last step's loss, the value the step logged for the curves.
    assert bar.train_progress_bar.n == STEPS
    assert f"train_loss={float(trainer.callback_metrics['train_loss']):.3f}" in bar.train_progress_bar.postfix

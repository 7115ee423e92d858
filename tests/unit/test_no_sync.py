"""The training step issues no host-device sync: a spy on CPU (the GPU test uses torch's sync debug mode)."""

from __future__ import annotations

import torch

from tests.sync_probe import SyncRecorder, cpu_spy, fit_and_record


def test_the_spy_catches_a_sync():
    """The spy must see what the old step did (int(valid.sum()), boolean-mask indexing)."""
    recorder = SyncRecorder()
    recorder._active = True
    with cpu_spy(recorder):
        valid = torch.tensor([True, False, True])
        int(valid.sum())
        torch.arange(3)[valid]
    assert len(recorder.events) == 2 and "Tensor.__int__" in recorder.events[0], recorder.events
    assert "boolean-mask" in recorder.events[1]


def test_training_steps_issue_no_host_sync(tmp_path):
    """Real Trainer, the platform's callbacks, BatchNorm AlexNet, a padded last batch: zero syncs per step."""
    report = fit_and_record(
        arch="alexnet_small",
        norm="batch",
        device="cpu",
        strategy="auto",
        precision="32-true",
        channels_last=True,
        run_dir=tmp_path,
    )
    assert report["global_step"] == 12
    assert report["syncs"] == [], "\n".join(report["syncs"][:20])
    # Counts come from the plan's host integers: 2 epochs x (5 full batches + 5 real of 8).
    assert report["throughput"]["images_per_s"] > 0

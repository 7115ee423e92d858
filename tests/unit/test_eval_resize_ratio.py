"""`convnets evaluate --resize-ratio R` reads the checkpoint's preset, in either spelling."""

from __future__ import annotations

import pytest

from convnets.platform.evaluation.evaluate import eval_crop_fraction


@pytest.mark.parametrize(
    "data_hparams,expected",
    [
        ({"preset": "pad"}, 1.25),  # the LeNet configs: the image sits in a window of size x crop_fraction
        ({"preset": "pad", "augment": None}, 1.25),
        ({"augment": "pad"}, 1.25),  # checkpoints written before `preset` existed
        ({"preset": "inception"}, 0.8),  # crop presets resize to size / crop_fraction = size x R
        ({"preset": "alexnet"}, 0.8),
        ({"augment": "scale"}, 0.8),
        ({}, 0.8),  # the data module's default preset (inception)
    ],
)
def test_resize_ratio_follows_the_checkpoint_preset(data_hparams, expected):
    assert eval_crop_fraction(data_hparams, 1.25) == pytest.approx(expected)

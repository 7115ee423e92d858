"""The space-to-depth stem computes exactly what the strided convolution computes, forward and backward."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from convnets.models import create_model
from convnets.models.space_to_depth import SpaceToDepthConv2d, use_space_to_depth_stem
from convnets.platform.training.module import ClassifierModule, PerfConfig


@pytest.mark.parametrize(
    "in_ch,kernel,stride,padding,size",
    [
        (3, 11, 4, 2, 224),  # alexnet's conv1 (55x55 out)
        (3, 11, 4, 0, 227),  # the paper's 227 input without padding
        (3, 7, 2, 1, 224),  # zfnet's conv1
        (3, 11, 4, 2, 225),  # a size that does not fill the last block
        (1, 5, 3, 1, 31),  # kernel not a multiple of the stride, one channel
    ],
)
def test_block_convolution_equals_the_strided_one(in_ch, kernel, stride, padding, size):
    torch.manual_seed(0)
    plain = nn.Conv2d(in_ch, 8, kernel, stride=stride, padding=padding).double()
    blocks = copy.deepcopy(plain)
    assert use_space_to_depth_stem(blocks) == 1 and isinstance(blocks, SpaceToDepthConv2d)
    x = torch.randn(2, in_ch, size, size, dtype=torch.double)
    y_plain, y_blocks = plain(x), blocks(x)
    assert y_blocks.shape == y_plain.shape
    torch.testing.assert_close(y_blocks, y_plain, rtol=0, atol=1e-12)
    grad = torch.randn_like(y_plain)
    (y_plain * grad).sum().backward()
    (y_blocks * grad).sum().backward()
    torch.testing.assert_close(blocks.weight.grad, plain.weight.grad, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(blocks.bias.grad, plain.bias.grad, rtol=1e-12, atol=1e-10)


def test_only_the_image_facing_strided_convolution_changes():
    for arch, expected in (("alexnet", 1), ("zfnet", 1), ("lenet5", 0)):
        assert use_space_to_depth_stem(create_model(arch, num_classes=10)) == expected, arch


def test_perf_switch_keeps_checkpoints_and_predictions():
    """A plain checkpoint loads into the switched network (same keys and shapes) and predicts the same."""
    torch.manual_seed(0)
    plain = ClassifierModule(arch="alexnet", num_classes=10).eval()
    fast = ClassifierModule(arch="alexnet", num_classes=10, perf=PerfConfig(space_to_depth=True)).eval()
    assert isinstance(fast.net.features[0], SpaceToDepthConv2d)
    fast.load_state_dict(plain.state_dict())  # strict: a renamed or reshaped parameter would fail here
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(fast(images), plain(images), rtol=1e-4, atol=1e-5)

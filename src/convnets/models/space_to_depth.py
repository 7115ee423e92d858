"""The stem convolution (few input channels, stride s) computed as a stride-1 convolution on s x s blocks.

An 11x11 stride-4 convolution of a 3-channel image maps badly onto tensor cores: cuDNN pads the
channels to 8 in an extra kernel and runs a slow small-channel kernel (on an H100 these two took
~21% of AlexNet's bf16 training step; results/h100-2026-11-26/stem-eval-data/alexnet_step_profile.txt).
Rearranging the padded image into s x s blocks (3 -> 48 channels at s=4) and the kernel likewise
(11x11 zero-padded to 12x12 -> 3x3 over 48 channels) gives the SAME output with a dense stride-1
convolution (MLPerf's ResNet "space-to-depth" trick). The parameter keeps its original shape, so
checkpoints and state_dict keys do not change; only `forward` differs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MAX_STEM_CHANNELS = 4  # only image-facing convolutions: wider inputs already suit tensor cores


class SpaceToDepthConv2d(nn.Conv2d):
    """nn.Conv2d whose forward runs as a stride-1 convolution over stride x stride blocks (same result)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, k = self.stride[0], self.kernel_size[0]
        p = self.padding[0]
        blocks = math.ceil(k / s)  # kernel side in blocks
        h, w = x.shape[-2:]
        out_h, out_w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        # Pad so each side spans whole blocks covering every output's receptive field.
        need_h, need_w = (out_h + blocks - 1) * s, (out_w + blocks - 1) * s
        x = F.pad(x, (p, max(need_w - w - p, 0), p, max(need_h - h - p, 0)))[..., :need_h, :need_w]
        n, c = x.shape[:2]
        x = x.reshape(n, c, need_h // s, s, need_w // s, s).permute(0, 1, 3, 5, 2, 4)
        x = x.reshape(n, c * s * s, need_h // s, need_w // s).contiguous(memory_format=torch.channels_last)
        weight = F.pad(self.weight, (0, blocks * s - k, 0, blocks * s - k))
        o = weight.shape[0]
        weight = (
            weight.reshape(o, c, blocks, s, blocks, s).permute(0, 1, 3, 5, 2, 4).reshape(o, c * s * s, blocks, blocks)
        )
        return F.conv2d(x, weight, self.bias)


def _eligible(conv: nn.Conv2d) -> bool:
    square = conv.stride[0] == conv.stride[1] and conv.kernel_size[0] == conv.kernel_size[1]
    return (
        square
        and conv.stride[0] > 1
        and conv.groups == 1
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
        and conv.padding[0] == conv.padding[1]
        and conv.in_channels <= MAX_STEM_CHANNELS
    )


def use_space_to_depth_stem(net: nn.Module) -> int:
    """Switch every strided image-facing Conv2d of `net` to the block form, in place; returns how many."""
    count = 0
    for module in net.modules():
        if type(module) is nn.Conv2d and _eligible(module):
            module.__class__ = SpaceToDepthConv2d  # same parameters and keys; forward differs
            count += 1
    return count

"""The two pre-BatchNorm normalizations of the AlexNet era, as parameter-free layers.

Local response normalization (Krizhevsky et al. 2012, section 3.3) divides each activation by
the energy of the same position in n neighbouring feature maps:

    b[i] = a[i] / (k + alpha * sum_{j = i - n/2}^{i + n/2} a[j]^2) ** beta     (paper)
    b[c] = a[c] / (k + alpha / n * sum_{c' = c - n/2}^{c + n/2} a[c']^2) ** beta  (torch)

torch's `nn.LocalResponseNorm` averages the squares (it divides alpha by n, as Caffe's LRN
does), while the paper sums them; both windows are the same n channels, clipped at the first
and last map (torch pads with zeros, which add nothing to the sum). So the paper's alpha = 1e-4
is torch's alpha = n * 1e-4. Caffe's reference AlexNet passes alpha = 1e-4 to a layer that
divides by n, so it runs with 5x less normalization than the paper states; we follow the paper.

Local contrast normalization (Jarrett, Kavukcuoglu, Ranzato, LeCun 2009, section 2.1, the
"contrast normalized" layers of Zeiler & Fergus 2013) removes the local mean and divides by the
local standard deviation over a window spanning space and neighbouring feature maps:

    v = x - sum_w w * x            (subtractive)
    y = v / max(sigma, c),  sigma = sqrt(sum_w w * v^2),  c = mean over positions of sigma

Dividing by max(sigma, c) rather than sigma stops flat regions (sigma ~ 0) from amplifying noise.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# The paper's constants (section 3.3, "determined using a validation set").
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0


def local_response_norm(
    size: int = LRN_SIZE, alpha: float = LRN_ALPHA, beta: float = LRN_BETA, k: float = LRN_K
) -> nn.LocalResponseNorm:
    """The paper's LRN with the paper's (summed, not averaged) alpha; see the module docstring."""
    return nn.LocalResponseNorm(size, alpha=alpha * size, beta=beta, k=k)


class LocalContrastNorm(nn.Module):
    """Subtractive + divisive normalization over `size` neighbouring maps x a k x k Gaussian.

    The window is uniform over channels and Gaussian (std `sigma` pixels) over space, normalized
    to sum to 1. At the borders the window is renormalized over the positions that exist, so a
    constant input maps to 0 everywhere (zero padding would pull border means towards 0).
    """

    def __init__(self, *, size: int = 5, kernel_size: int = 9, sigma: float = 2.0, eps: float = 1e-4) -> None:
        super().__init__()
        if size % 2 == 0 or kernel_size % 2 == 0:
            raise ValueError(f"LocalContrastNorm needs odd windows, got size={size}, kernel_size={kernel_size}")
        self.size, self.kernel_size, self.sigma, self.eps = size, kernel_size, sigma, eps
        t = torch.arange(kernel_size, dtype=torch.float32) - kernel_size // 2
        gauss = torch.exp(-(t**2) / (2 * sigma**2))
        # Non-persistent: derived from the hyperparameters, so checkpoints carry no extra keys.
        self.register_buffer("gauss", gauss / gauss.sum(), persistent=False)

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> windowed sum with zero padding: a uniform average over `size`
        # neighbouring channels as a 1x1 convolution with a banded C x C matrix (GEMM-fast, C
        # multiply-adds per element), then the k x k Gaussian as a depthwise convolution.
        c, k = x.shape[1], self.kernel_size
        idx = torch.arange(c, device=x.device)
        band = ((idx[:, None] - idx[None, :]).abs() <= self.size // 2).to(x.dtype) / self.size
        y = F.conv2d(x, band.view(c, c, 1, 1))
        gauss2d = (self.gauss[:, None] * self.gauss[None, :]).to(x.dtype)
        return F.conv2d(y, gauss2d.expand(c, 1, k, k), padding=k // 2, groups=c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # How much of the window lies inside the tensor at each position (1 in the interior).
        weight = self._blur(torch.ones_like(x[:1]))
        v = x - self._blur(x) / weight
        # eps inside the sqrt keeps the gradient finite where a window is constant (dead ReLUs)
        # and floors sigma at 0.01, so float rounding in flat regions is not blown up.
        sigma = torch.sqrt(self._blur(v * v) / weight + self.eps)
        c = sigma.mean(dim=(2, 3), keepdim=True)  # Jarrett's c: mean sigma over positions, per map
        return v / torch.maximum(sigma, c)

    def extra_repr(self) -> str:
        return f"size={self.size}, kernel_size={self.kernel_size}, sigma={self.sigma}"


__all__ = ["LocalContrastNorm", "local_response_norm", "LRN_SIZE", "LRN_ALPHA", "LRN_BETA", "LRN_K"]

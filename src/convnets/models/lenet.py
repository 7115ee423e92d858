"""LeNet-5 (LeCun, Bottou, Bengio, Haffner 1998, "Gradient-based learning applied to document
recognition"), faithful, plus the modern variant most courses teach.

Faithful network, 32x32 grey input (a 28x28 digit centred with 2 px of padding):
    C1  6 maps 5x5 conv          -> 6@28x28     156 params  (6*25 + 6)
    S2  2x2 sum * coef + bias    -> 6@14x14      12 params  (one coefficient + one bias per map)
    C3  16 maps 5x5, sparse      -> 16@10x10  1,516 params  (Table I: 6 maps see 3, 9 see 4, 1 sees 6)
    S4  2x2 sum * coef + bias    -> 16@5x5       32 params
    C5  120 maps 5x5             -> 120@1x1  48,120 params
    F6  84 units                 -> 84       10,164 params
    out Euclidean RBF, 10 units  -> 10          840 params  (one 84-d centre per class, no bias)
                                              ---------
                                                 60,840  ("about 60,000 trainable parameters")
Every layer up to F6 is followed by the scaled tanh f(a) = 1.7159 tanh(2a/3) (section II-A
and appendix A), whose gain makes f(+-1) = +-1. The RBF output is y_i = sum_j (x_j - w_ij)^2, a
penalty; we return its negative as the logit so cross-entropy over classes is the paper's
"MAP" criterion (its eq. 9) up to the constant j. The paper fixed the centres to stylised 7x12
bitmaps of the digits; with no bitmaps for other class sets we start them at random +-1 codes
(the same value range) and let them train.

The lecture slides quote "about 187,000 connections, about 14,000 trainable weights": those are the
figures of LeNet-1-era networks, not of LeNet-5 (340,908 connections, 60,000 weights in the
paper); we follow the paper and test its count exactly.

Modern variant: ReLU, 2x2 max pooling, a full C3 (every map sees all 6), a linear output layer:
156 + 2,416 + 48,120 + 10,164 + 850 = 61,706 parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from convnets.models.registry import register_model

# Table I of the paper: which of S2's 6 maps each of C3's 16 maps reads. The first six read 3
# contiguous maps, the next nine read 4 (six contiguous, three discontinuous), the last reads all.
C3_TABLE: tuple[tuple[int, ...], ...] = (
    (0, 1, 2),
    (1, 2, 3),
    (2, 3, 4),
    (3, 4, 5),
    (0, 4, 5),
    (0, 1, 5),
    (0, 1, 2, 3),
    (1, 2, 3, 4),
    (2, 3, 4, 5),
    (0, 3, 4, 5),
    (0, 1, 4, 5),
    (0, 1, 2, 5),
    (0, 1, 3, 4),
    (1, 2, 4, 5),
    (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
# crop_fraction 28/32: a 28 px digit centred in the 32 px input field, as in the paper.


class ScaledTanh(nn.Module):
    """f(a) = A tanh(S a) with A = 1.7159, S = 2/3 (LeCun 1998, appendix A)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.7159 * torch.tanh(x * (2.0 / 3.0))


class TrainableSubsampling(nn.Module):
    """S2/S4: each map's 2x2 sums times a trainable coefficient plus a trainable bias."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.coef = nn.Parameter(torch.full((channels,), 0.25))  # 0.25: starts as an average
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sums = nn.functional.avg_pool2d(x, 2) * 4.0
        return sums * self.coef.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class SparseC3(nn.Module):
    """C3 with the paper's connection table, holding only the 1,516 connected parameters.

    The 60 connected 5x5 kernels are stored compactly and scattered into a dense 16x6x5x5
    weight (zeros elsewhere) at every call: one dense convolution is ~6x faster on CPU than
    the equivalent grouped convolutions, and no dead weight is ever a parameter.
    """

    def __init__(self, table: tuple[tuple[int, ...], ...] = C3_TABLE, in_maps: int = 6, kernel_size: int = 5) -> None:
        super().__init__()
        rows = [i for i, t in enumerate(table) for _ in t]
        cols = [c for t in table for c in t]
        self.register_buffer("rows", torch.tensor(rows), persistent=False)
        self.register_buffer("cols", torch.tensor(cols), persistent=False)
        self.shape = (len(table), in_maps, kernel_size, kernel_size)
        # Fan-in of the unit each kernel feeds (75, 100 or 150 inputs), for the paper's init.
        fan_in = torch.tensor([len(table[r]) * kernel_size**2 for r in rows], dtype=torch.float32)
        self.register_buffer("fan_in", fan_in.view(-1, 1, 1), persistent=False)
        self.weight = nn.Parameter((torch.rand(len(rows), kernel_size, kernel_size) * 2 - 1) * 2.4 / self.fan_in)
        self.bias = nn.Parameter(torch.zeros(len(table)))

    def dense_weight(self) -> torch.Tensor:
        return self.weight.new_zeros(self.shape).index_put((self.rows, self.cols), self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(x, self.dense_weight(), self.bias)


class EuclideanRBF(nn.Module):
    """Output layer: logit_i = -||x - w_i||^2 / (2 variance), the paper's RBF penalty, negated.

    The paper's penalty is the Gaussian log-likelihood with unit variance up to a constant. At
    the start, F6 codes and random +-1 centres sit ~300 apart in squared distance, which makes
    the softmax one-hot and SGD diverge at usual learning rates; variance 5 (logit = -d^2/10)
    keeps the same decision rule (nearest centre) and trains at lr 0.02 (measured on digits:
    10.8% top-1 with d^2 at lr 0.02, 98.3% with d^2/10).
    """

    def __init__(self, in_features: int, num_classes: int, variance: float = 5.0) -> None:
        super().__init__()
        codes = torch.randint(0, 2, (num_classes, in_features)).float() * 2 - 1
        self.centres = nn.Parameter(codes)
        self.variance = variance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -torch.cdist(x, self.centres).pow(2) / (2 * self.variance)


class LeNet5(nn.Module):
    """The 1998 network; `faithful=False` gives the ReLU / max-pool / full-C3 variant."""

    def __init__(self, *, num_classes: int = 10, faithful: bool = True) -> None:
        super().__init__()
        act = ScaledTanh if faithful else nn.ReLU
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.features = nn.Sequential(
            self.conv1,
            act(),
            TrainableSubsampling(6) if faithful else nn.MaxPool2d(2),
            act() if faithful else nn.Identity(),
            SparseC3() if faithful else nn.Conv2d(6, 16, 5),
            act(),
            TrainableSubsampling(16) if faithful else nn.MaxPool2d(2),
            act() if faithful else nn.Identity(),
            nn.Conv2d(16, 120, 5),
            act(),  # C5: a conv whose 5x5 input makes it fully connected
        )
        self.f6 = nn.Sequential(nn.Flatten(), nn.Linear(120, 84), act())
        self.output = EuclideanRBF(84, num_classes) if faithful else nn.Linear(84, num_classes)
        if faithful:
            self._init_paper()

    def _init_paper(self) -> None:
        # Appendix A: weights uniform in +-2.4/F_i (F_i = fan-in) keep the tanh in its
        # linear-ish region at the start, where learning is fastest.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                nn.init.uniform_(m.weight, -2.4 / fan_in, 2.4 / fan_in)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.f6(self.features(x)))


@register_model(input_size=(1, 32, 32), mean=MNIST_MEAN, std=MNIST_STD, crop_fraction=28 / 32)
def lenet5(*, num_classes: int = 10) -> nn.Module:
    """LeNet-5 as published (LeCun et al. 1998): scaled tanh, trainable subsampling, sparse C3, RBF output."""
    return LeNet5(num_classes=num_classes, faithful=True)


@register_model(input_size=(1, 32, 32), mean=MNIST_MEAN, std=MNIST_STD, crop_fraction=28 / 32)
def lenet5_modern(*, num_classes: int = 10) -> nn.Module:
    """LeNet-5 as taught today: ReLU, max pooling, full C3, linear classifier."""
    return LeNet5(num_classes=num_classes, faithful=False)

"""The AlexNet family: the 2012 network as published, torchvision's one-tower AlexNet, ZFNet,
a BatchNorm AlexNet and a small-input AlexNet, all built by one class from a layer table.

alexnet2012 (Krizhevsky, Sutskever, Hinton, NIPS 2012, section 3 and Figure 2), 224x224x3 input.
The two GPUs' towers are grouped convolutions: conv2, conv4 and conv5 only see the maps of their
own tower (groups=2); conv3 and the FC layers connect across both.
    conv1   96 11x11/4 pad 2, ReLU, LRN, max 3x3/2   96@55x55 -> 27x27      34,944  (96*3*121 + 96)
    conv2  256  5x5 pad 2 groups 2, ReLU, LRN, max  256@27x27 -> 13x13     307,456  (256*48*25 + 256)
    conv3  384  3x3 pad 1, ReLU                     384@13x13              885,120  (384*256*9 + 384)
    conv4  384  3x3 pad 1 groups 2, ReLU            384@13x13              663,936  (384*192*9 + 384)
    conv5  256  3x3 pad 1 groups 2, ReLU, max       256@13x13 -> 6x6       442,624  (256*192*9 + 256)
    fc6   4096, ReLU, dropout 0.5                                       37,752,832  (9216*4096 + 4096)
    fc7   4096, ReLU, dropout 0.5                                       16,781,312  (4096*4096 + 4096)
    fc8   1000                                                           4,097,000  (4096*1000 + 1000)
                                                                        ----------
                                                                        60,965,224
The paper states 224x224 inputs, which with 11x11/4 gives 55x55 only with 2 px of padding (or a
227 input, as Caffe does); we pad. An AdaptiveAvgPool2d((6, 6)) sits before fc6, as in
torchvision: it is the identity at the declared input and lets other sizes run.

alexnet: torchvision's one-tower model (Krizhevsky 2014, "One weird trick"), with torchvision's
module names (features.0 ... classifier.6) so its state dicts load with strict=True: 64/192/384/
256/256 maps, no LRN, dropout before fc6 and fc7. 61,100,840 parameters.

zfnet (Zeiler & Fergus 2013, Figure 3): conv1 96 7x7/2, conv2 256 5x5/2, both dense (one GPU),
then 384/384/256 3x3 as in AlexNet; contrast normalization after the pooling of layers 1 and 2.
    conv1 14,208 + conv2 614,656 + conv3 885,120 + conv4 1,327,488 + conv5 884,992
    + fc6 37,752,832 + fc7 16,781,312 + fc8 4,097,000 = 62,357,608
Figure 3's maps (110, 55, 26, 13, 13, 6) come out with 1 px of conv1 padding and pooling that
rounds up (Caffe's convention), which we use.

alexnet_bn: alexnet's layer sizes, BatchNorm between every conv/hidden FC and its ReLU, no LRN.
The conv/FC bias is dropped where BN follows (BN's shift replaces it): 61,110,184 parameters.

alexnet_small: the same five-conv/three-FC shape for 32-128 px inputs (declared 64 px), narrower
(48/128/192/192/128 maps, FC 1024/1024) so an epoch of ~10k 64 px images trains on a laptop CPU.

Every builder takes the same options: init ("kaiming" | "paper"), ablate (None | "fc7" |
"fc6_fc7" | "conv3_conv4_fc6_fc7", Zeiler & Fergus's Table 3 removals), norm ("lrn" | "lcn" |
"batch" | "none"), pool ("overlap" 3x3/2 | "nonoverlap" 2x2/2) and dropout (probability; 0
keeps the Dropout modules as identities so state dicts do not depend on it).
`model.features[0]` is conv1 in every member (`model.conv1` returns it), and `model.layer("fc7")`
finds any conv/fc/bn layer by its paper name whatever the module naming.

Dropout, the paper's convention vs torch's: the paper drops units with p = 0.5 during training
and at test time "uses all the hidden units but halves their outgoing weights", i.e. multiplies
the weights of the layer consuming the dropped units by (1 - p), so each unit sends its expected
training-time signal. torch's nn.Dropout is inverted dropout: it scales the kept units by
1 / (1 - p) during training and is the identity at eval. The two are the same network: a torch
weight W equals the paper's training-time weight times (1 - p), so train-time outputs agree mask
for mask and eval outputs agree exactly. `halve_outgoing_weights` converts between them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from convnets.models.normalization import LocalContrastNorm, local_response_norm
from convnets.models.registry import register_model

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

INITS = ("kaiming", "paper")
NORMS = ("lrn", "lcn", "batch", "none")
POOLS = ("overlap", "nonoverlap")
# Zeiler & Fergus 2013, Table 3: which layers each ablation removes.
ABLATIONS: dict[str, tuple[str, ...]] = {
    "fc7": ("fc7",),
    "fc6_fc7": ("fc6", "fc7"),
    "conv3_conv4_fc6_fc7": ("conv3", "conv4", "fc6", "fc7"),
}
# Section 5: biases start at 1 in conv2, conv4, conv5 and the hidden FC layers "to accelerate
# the early stages of learning by providing the ReLUs with positive inputs", 0 elsewhere.
ALEXNET_BIAS_ONE = frozenset({"conv2", "conv4", "conv5", "fc6", "fc7"})


@dataclass(frozen=True)
class Conv:
    """One conv stage: conv -> [BN] -> ReLU -> [LRN/LCN] -> [max pool] (ZF: pool before norm)."""

    out_channels: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    groups: int = 1  # 2 = the paper's two GPU towers
    pool: bool = False  # max pool after this stage
    normalize: bool = False  # the paper's LRN/LCN place


@dataclass(frozen=True)
class Architecture:
    """The layer table of one family member; options (norm, pool, ablate...) apply on top."""

    convs: tuple[Conv, Conv, Conv, Conv, Conv]
    hidden: int  # width of fc6 and fc7
    grid: int  # side of conv5's pooled maps at the declared input (the adaptive pool's target)
    pool_padding: int = 0  # of the overlapping 3x3/2 pool
    ceil_mode: bool = False  # pool output sizes round up (ZF's Figure 3)
    norm_after_pool: bool = False  # ZF normalizes the pooled maps; AlexNet normalizes before pooling
    dropout_first: bool = False  # torchvision: Dropout before fc6/fc7; paper: after their ReLUs
    index_names: bool = False  # torchvision's module names (features.0, classifier.1, ...)
    bias_one: frozenset[str] = ALEXNET_BIAS_ONE  # init="paper": layers whose bias starts at 1


@dataclass(frozen=True)
class Options:
    """The per-builder options, validated on construction."""

    init: str = "kaiming"
    ablate: str | None = None
    norm: str = "lrn"
    pool: str = "overlap"
    dropout: float = 0.5

    def __post_init__(self) -> None:
        _check("init", self.init, INITS)
        _check("ablate", self.ablate, (None, *ABLATIONS))
        _check("norm", self.norm, NORMS)
        _check("pool", self.pool, POOLS)
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1), got {self.dropout!r}")


def _check(option: str, value: object, valid: tuple[object, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {option} {value!r}; valid {option} values: {', '.join(map(repr, valid))}")


ALEXNET2012 = Architecture(
    convs=(
        Conv(96, 11, stride=4, padding=2, pool=True, normalize=True),
        Conv(256, 5, padding=2, groups=2, pool=True, normalize=True),
        Conv(384, 3, padding=1),
        Conv(384, 3, padding=1, groups=2),
        Conv(256, 3, padding=1, groups=2, pool=True),
    ),
    hidden=4096,
    grid=6,
)
ONE_TOWER = Architecture(
    convs=(
        Conv(64, 11, stride=4, padding=2, pool=True, normalize=True),
        Conv(192, 5, padding=2, pool=True, normalize=True),
        Conv(384, 3, padding=1),
        Conv(256, 3, padding=1),
        Conv(256, 3, padding=1, pool=True),
    ),
    hidden=4096,
    grid=6,
)
TORCHVISION = replace(ONE_TOWER, dropout_first=True, index_names=True)
ZFNET = Architecture(
    convs=(
        Conv(96, 7, stride=2, padding=1, pool=True, normalize=True),  # 224 -> 110 -> pool 55
        Conv(256, 5, stride=2, pool=True, normalize=True),  # 55 -> 26 -> pool 13
        Conv(384, 3, padding=1),
        Conv(384, 3, padding=1),
        Conv(256, 3, padding=1, pool=True),  # 13 -> pool 6
    ),
    hidden=4096,
    grid=6,
    ceil_mode=True,
    norm_after_pool=True,
    bias_one=frozenset(),  # section 3: "all weights initialized to 1e-2 and biases set to 0"
)
# 64 px: conv1 /2 -> 32, pools (3x3/2 pad 1, or 2x2/2) -> 16 -> 8 -> 4. About 95 M multiply-adds
# per 64 px image (conv2 40 M, conv4 21 M), 1/7 of alexnet's ~710 M at 224 px.
SMALL = Architecture(
    convs=(
        Conv(48, 5, stride=2, padding=2, pool=True, normalize=True),
        Conv(128, 5, padding=2, pool=True, normalize=True),
        Conv(192, 3, padding=1),
        Conv(192, 3, padding=1),
        Conv(128, 3, padding=1, pool=True),
    ),
    hidden=1024,
    grid=4,
    pool_padding=1,
)


def _max_pool(arch: Architecture, pool: str) -> nn.MaxPool2d:
    if pool == "overlap":  # section 3.4: s=2 < z=3 lowered top-1 error by 0.4% vs s=z=2
        return nn.MaxPool2d(3, stride=2, padding=arch.pool_padding, ceil_mode=arch.ceil_mode)
    return nn.MaxPool2d(2, stride=2, ceil_mode=arch.ceil_mode)


def _local_norm(norm: str) -> nn.Module:
    return local_response_norm() if norm == "lrn" else LocalContrastNorm()


def _feature_layers(arch: Architecture, opts: Options, removed: set[str]) -> tuple[list[tuple[str, nn.Module]], int]:
    """conv1..conv5 stages (minus the ablated ones) as (name, module) pairs, and the output width."""
    layers: list[tuple[str, nn.Module]] = []
    batch, local = opts.norm == "batch", opts.norm in ("lrn", "lcn")
    channels = 3
    for k, spec in enumerate(arch.convs, start=1):
        if f"conv{k}" in removed:
            continue
        # With BN after it a conv bias is redundant: BN subtracts the batch mean, bias and all.
        conv = nn.Conv2d(
            channels,
            spec.out_channels,
            spec.kernel_size,
            stride=spec.stride,
            padding=spec.padding,
            groups=spec.groups,
            bias=not batch,
        )
        layers.append((f"conv{k}", conv))
        if batch:
            layers.append((f"bn{k}", nn.BatchNorm2d(spec.out_channels)))
        layers.append((f"relu{k}", nn.ReLU(inplace=True)))
        normalize = local and spec.normalize
        if normalize and not arch.norm_after_pool:
            layers.append((f"norm{k}", _local_norm(opts.norm)))
        if spec.pool:
            layers.append((f"pool{k}", _max_pool(arch, opts.pool)))
        if normalize and arch.norm_after_pool:
            layers.append((f"norm{k}", _local_norm(opts.norm)))
        channels = spec.out_channels
    return layers, channels


def _classifier_layers(
    arch: Architecture, opts: Options, in_features: int, num_classes: int, removed: set[str]
) -> list[tuple[str, nn.Module]]:
    """fc6, fc7 (minus the ablated ones), each with its ReLU and dropout, then fc8."""
    layers: list[tuple[str, nn.Module]] = []
    batch = opts.norm == "batch"
    for k in (6, 7):
        if f"fc{k}" in removed:
            continue
        block: list[tuple[str, nn.Module]] = [(f"fc{k}", nn.Linear(in_features, arch.hidden, bias=not batch))]
        if batch:
            block.append((f"bn{k}", nn.BatchNorm1d(arch.hidden)))
        block.append((f"relu{k}", nn.ReLU(inplace=True)))
        drop = (f"drop{k}", nn.Dropout(opts.dropout))
        layers += [drop, *block] if arch.dropout_first else [*block, drop]
        in_features = arch.hidden
    layers.append(("fc8", nn.Linear(in_features, num_classes)))
    return layers


class AlexNet(nn.Module):
    """features (conv stages) -> avgpool (adaptive, to grid x grid) -> flatten -> classifier."""

    def __init__(self, arch: Architecture, *, num_classes: int, options: Options) -> None:
        super().__init__()
        removed = set(ABLATIONS[options.ablate]) if options.ablate else set()
        features, channels = _feature_layers(arch, options, removed)
        classifier = _classifier_layers(arch, options, channels * arch.grid**2, num_classes, removed)
        # The paper's layer name -> module path, e.g. "conv1" -> "features.0" or "features.conv1".
        self.layer_paths: dict[str, str] = {}
        self.features = self._sequential("features", features, arch.index_names)
        self.avgpool = nn.AdaptiveAvgPool2d((arch.grid, arch.grid))
        self.classifier = self._sequential("classifier", classifier, arch.index_names)
        self._init_weights(options.init, arch.bias_one)

    def _sequential(self, where: str, layers: list[tuple[str, nn.Module]], index_names: bool) -> nn.Sequential:
        seq = nn.Sequential()
        for i, (name, module) in enumerate(layers):
            key = str(i) if index_names else name
            seq.add_module(key, module)
            if name.startswith(("conv", "fc", "bn")):
                self.layer_paths[name] = f"{where}.{key}"
        return seq

    def layer(self, name: str) -> nn.Module:
        """The module the paper calls `name` ("conv1".."conv5", "fc6".."fc8", "bnK" with norm="batch")."""
        if name not in self.layer_paths:
            raise ValueError(f"no layer {name!r} in this model; its layers: {', '.join(self.layer_paths)}")
        return self.get_submodule(self.layer_paths[name])

    @property
    def conv1(self) -> nn.Conv2d:
        """The first convolution, whose filters are the ones worth plotting."""
        return self.features[0]

    @torch.no_grad()
    def _init_weights(self, scheme: str, bias_one: frozenset[str]) -> None:
        for name in self.layer_paths:
            if name.startswith("bn"):
                continue  # BN keeps scale 1, shift 0 unless it stands in for a bias below
            layer = self.layer(name)
            if scheme == "paper" or name == "fc8":  # section 5: zero-mean Gaussian, std 0.01
                # fc8 also in the Kaiming scheme: the classifier starts near uniform (first loss
                # ~ ln(classes)). He-initialized, it gave a first loss of 8.5 on 10 classes, and
                # without LRN's damping (norm="none"/"lcn") the network never left chance at lr 0.03.
                nn.init.normal_(layer.weight, 0.0, 0.01)
            else:  # He et al. 2015: variance 2/fan_in keeps ReLU activations' scale layer to layer
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            # The bias feeding the ReLU: the layer's own, or the shift of the BN that replaced it.
            bias = layer.bias if layer.bias is not None else self.layer(f"bn{name[-1]}").bias
            nn.init.constant_(bias, 1.0 if scheme == "paper" and name in bias_one else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@torch.no_grad()
def halve_outgoing_weights(model: nn.Module, *, inverse: bool = False) -> nn.Module:
    """The paper's test-time rule: scale by (1 - p) the weights consuming each dropout's output.

    Applied to a network trained with the paper's (non-inverted) dropout, it gives the weights to
    use at test time, which are also the weights of the equivalent torch (inverted-dropout)
    model. `inverse=True` divides instead: torch weights -> the paper's training-time weights.
    In place; returns `model`. The consumer is the next Linear/Conv2d in the same nn.Sequential.
    """
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        keep = 1.0  # product of (1 - p) of the dropouts since the last weight layer
        for layer in seq:
            if isinstance(layer, nn.Dropout):
                keep *= 1.0 - layer.p
            elif isinstance(layer, (nn.Linear, nn.Conv2d)):
                layer.weight.mul_(1.0 / keep if inverse else keep)
                keep = 1.0
        if keep != 1.0:
            raise ValueError("a dropout layer has no Linear/Conv2d after it in its nn.Sequential")
    return model


def _build(arch: Architecture, num_classes: int, **options: object) -> AlexNet:
    return AlexNet(arch, num_classes=num_classes, options=Options(**options))  # type: ignore[arg-type]


@register_model(input_size=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_fraction=0.875)
def alexnet2012(
    *,
    num_classes: int = 1000,
    init: str = "kaiming",
    ablate: str | None = None,
    norm: str = "lrn",
    pool: str = "overlap",
    dropout: float = 0.5,
) -> nn.Module:
    """AlexNet as published (Krizhevsky et al. 2012): two towers as groups=2, LRN, 60,965,224 parameters."""
    return _build(ALEXNET2012, num_classes, init=init, ablate=ablate, norm=norm, pool=pool, dropout=dropout)


@register_model(input_size=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_fraction=0.875)
def alexnet(
    *,
    num_classes: int = 1000,
    init: str = "kaiming",
    ablate: str | None = None,
    norm: str = "none",
    pool: str = "overlap",
    dropout: float = 0.5,
) -> nn.Module:
    """One-tower AlexNet ("One weird trick", 2014) with torchvision's layout and names, 61,100,840 parameters."""
    return _build(TORCHVISION, num_classes, init=init, ablate=ablate, norm=norm, pool=pool, dropout=dropout)


@register_model(input_size=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_fraction=0.875)
def zfnet(
    *,
    num_classes: int = 1000,
    init: str = "kaiming",
    ablate: str | None = None,
    norm: str = "lrn",
    pool: str = "overlap",
    dropout: float = 0.5,
) -> nn.Module:
    """ZFNet (Zeiler & Fergus 2013, Figure 3): 7x7/2 conv1, dense 5x5/2 conv2, 62,357,608 parameters."""
    return _build(ZFNET, num_classes, init=init, ablate=ablate, norm=norm, pool=pool, dropout=dropout)


@register_model(input_size=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_fraction=0.875)
def alexnet_bn(
    *,
    num_classes: int = 1000,
    init: str = "kaiming",
    ablate: str | None = None,
    norm: str = "batch",
    pool: str = "overlap",
    dropout: float = 0.5,
) -> nn.Module:
    """One-tower AlexNet with BatchNorm before every conv/hidden-FC ReLU, no LRN, 61,110,184 parameters."""
    return _build(ONE_TOWER, num_classes, init=init, ablate=ablate, norm=norm, pool=pool, dropout=dropout)


@register_model(input_size=(3, 64, 64), mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_fraction=0.875)
def alexnet_small(
    *,
    num_classes: int = 1000,
    init: str = "kaiming",
    ablate: str | None = None,
    norm: str = "lrn",
    pool: str = "overlap",
    dropout: float = 0.5,
) -> nn.Module:
    """AlexNet's shape for 32-128 px inputs: 48/128/192/192/128 maps, FC 1024/1024."""
    return _build(SMALL, num_classes, init=init, ablate=ablate, norm=norm, pool=pool, dropout=dropout)

"""The AlexNet family: parameter counts, shapes, torchvision compatibility, the dropout convention,
options and their errors, the papers' initialisation and normalizations."""

from __future__ import annotations

import copy
import functools
import inspect
import math

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from convnets.models import create_model, get_model_info, list_models
from convnets.models.alexnet import halve_outgoing_weights
from convnets.models.normalization import LocalContrastNorm, local_response_norm

FAMILY = ("alexnet2012", "alexnet", "zfnet", "alexnet_bn", "alexnet_small")
OPTIONS = ["init", "ablate", "norm", "pool", "dropout"]
DEFAULT_NORM = {"alexnet2012": "lrn", "alexnet": "none", "zfnet": "lrn", "alexnet_bn": "batch", "alexnet_small": "lrn"}

# FC layers of the 224 px members: fc6 9216*4096 + 4096 = 37,752,832, fc7 4096*4096 + 4096 =
# 16,781,312, fc8 4096*1000 + 1000 = 4,097,000; together 58,631,144.
PARAMS = {
    # conv1 96*3*11*11 + 96 = 34,944; conv2 (groups 2) 256*48*5*5 + 256 = 307,456;
    # conv3 384*256*3*3 + 384 = 885,120; conv4 (groups 2) 384*192*9 + 384 = 663,936;
    # conv5 (groups 2) 256*192*9 + 256 = 442,624; convs 2,334,080 + FC 58,631,144
    "alexnet2012": 60_965_224,
    # conv1 64*3*121 + 64 = 23,296; conv2 192*64*25 + 192 = 307,392; conv3 384*192*9 + 384 =
    # 663,936; conv4 256*384*9 + 256 = 884,992; conv5 256*256*9 + 256 = 590,080;
    # convs 2,469,696 + FC 58,631,144
    "alexnet": 61_100_840,
    # conv1 96*3*7*7 + 96 = 14,208; conv2 256*96*25 + 256 = 614,656; conv3 885,120;
    # conv4 384*384*9 + 384 = 1,327,488; conv5 256*384*9 + 256 = 884,992; convs 3,726,464 + FC
    "zfnet": 62_357_608,
    # alexnet, minus the biases BN makes redundant (1,152 conv + 8,192 fc6/fc7 = 9,344), plus BN's
    # scale and shift (2 * 9,344 = 18,688)
    "alexnet_bn": 61_110_184,
    # conv1 48*3*25 + 48 = 3,648; conv2 128*48*25 + 128 = 153,728; conv3 192*128*9 + 192 =
    # 221,376; conv4 192*192*9 + 192 = 331,968; conv5 128*192*9 + 128 = 221,312 (convs 932,032);
    # fc6 128*4*4*1024 + 1024 = 2,098,176; fc7 1024*1024 + 1024 = 1,049,600; fc8 1,025,000
    "alexnet_small": 5_104_808,
}
ABLATED_PARAMS = {
    "fc7": 60_965_224 - 16_781_312,  # fc6 feeds fc8 directly: 44,183,912
    # convs 2,334,080 + fc8 on the flattened 256*6*6 = 9,216 conv5 outputs: 9216*1000 + 1000
    "fc6_fc7": 2_334_080 + 9_217_000,
    # conv1 34,944 + conv2 307,456 + conv5 reading conv2's 256 maps (groups 2):
    # 256*128*9 + 256 = 295,168; + fc8 9,217,000
    "conv3_conv4_fc6_fc7": 34_944 + 307_456 + 295_168 + 9_217_000,
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@functools.cache
def default_model(name: str) -> nn.Module:
    """One default build per model, shared by the tests that do not change weights (a 224 px
    member costs ~1 s of CPU to build, most of it initialising fc6's 37.7 M weights)."""
    return create_model(name)


@pytest.fixture(autouse=True, scope="module")
def _free_default_models() -> object:
    yield
    default_model.cache_clear()  # ~1.2 GB of weights, not kept for the rest of the session


def test_family_is_registered_with_its_input_facts() -> None:
    assert set(FAMILY) <= set(list_models())
    for name in FAMILY:
        info = get_model_info(name)
        assert info.input_size == ((3, 64, 64) if name == "alexnet_small" else (3, 224, 224))
        assert info.mean == (0.485, 0.456, 0.406) and info.std == (0.229, 0.224, 0.225)
        assert info.crop_fraction == 0.875
        assert info.options == OPTIONS  # so create_model(name, ablate=...) etc. reach every builder
        defaults = {k: p.default for k, p in inspect.signature(info.builder).parameters.items()}
        assert defaults == {
            "num_classes": 1000,
            "init": "kaiming",
            "ablate": None,
            "norm": DEFAULT_NORM[name],
            "pool": "overlap",
            "dropout": 0.5,
        }


@pytest.mark.parametrize("name", FAMILY)
def test_parameter_count(name: str) -> None:
    assert n_params(default_model(name)) == PARAMS[name]


def test_alexnet_has_torchvisions_parameter_count() -> None:
    assert n_params(torchvision.models.alexnet(weights=None)) == PARAMS["alexnet"]


@pytest.mark.parametrize("ablate", sorted(ABLATED_PARAMS))
def test_alexnet2012_ablation_parameter_count(ablate: str) -> None:
    model = create_model("alexnet2012", ablate=ablate)
    assert n_params(model) == ABLATED_PARAMS[ablate]
    if ablate == "fc7":
        assert PARAMS["alexnet2012"] - n_params(model) == 4096 * 4096 + 4096
    if ablate == "conv3_conv4_fc6_fc7":
        assert model.layer("conv5").in_channels == model.layer("conv2").out_channels == 256
        with pytest.raises(ValueError, match="no layer 'conv3'.*conv1, conv2, conv5, fc8"):
            model.layer("conv3")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert model.eval()(x).shape == (1, 1000)


@pytest.mark.parametrize("name", FAMILY)
def test_forward_backward_at_declared_size(name: str) -> None:
    model = default_model(name).train()
    x = torch.randn(2, *get_model_info(name).input_size)
    logits = model(x)
    assert logits.shape == (2, 1000)
    F.cross_entropy(logits, torch.tensor([3, 997])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname
    model.zero_grad(set_to_none=True)  # the model is shared; its gradients are not
    # conv1 (the filters to plot) is features[0] in every member, whatever the module names.
    assert model.conv1 is model.features[0] is model.layer("conv1")
    assert isinstance(model.conv1, nn.Conv2d) and model.conv1.in_channels == 3


@pytest.mark.parametrize("side", [32, 64, 96, 128])
def test_alexnet_small_runs_at_32_to_128_px(side: int) -> None:
    model = create_model("alexnet_small", num_classes=10).train()
    logits = model(torch.randn(2, 3, side, side))
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert torch.isfinite(model.conv1.weight.grad).all()


def _map_sides(model: nn.Module, side: int) -> dict[str, int]:
    """Spatial side of each named feature layer's output for a side x side input."""
    sides: dict[str, int] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, n=n: sides.__setitem__(n, out.shape[-1]))
        for n, m in model.features.named_children()
    ]
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, side, side))
    for h in hooks:
        h.remove()
    return sides


def test_alexnet2012_layout_is_the_papers() -> None:
    model = default_model("alexnet2012")
    kinds = [type(m).__name__ for m in model.features]
    assert kinds == ["Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d"] * 2 + ["Conv2d", "ReLU"] * 3 + ["MaxPool2d"]
    assert [model.layer(f"conv{k}").groups for k in range(1, 6)] == [1, 2, 1, 2, 2]  # the two GPU towers
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert all((p.kernel_size, p.stride) == (3, 2) for p in pools)  # overlapping pooling
    assert [m.p for m in model.classifier if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    sides = _map_sides(model, 224)
    assert (sides["conv1"], sides["pool1"], sides["pool2"], sides["conv5"], sides["pool5"]) == (55, 27, 13, 13, 6)


def test_zfnet_map_sizes_are_figure_3s() -> None:
    model = default_model("zfnet")
    kinds = [type(m).__name__ for m in model.features][:4]
    assert kinds == ["Conv2d", "ReLU", "MaxPool2d", "LocalResponseNorm"]  # normalized after pooling
    sides = _map_sides(model, 224)
    got = [sides[n] for n in ("conv1", "pool1", "conv2", "pool2", "conv3", "conv5", "pool5")]
    assert got == [110, 55, 26, 13, 13, 13, 6]


def test_alexnet_bn_normalizes_before_every_relu() -> None:
    model = default_model("alexnet_bn")
    for seq in (model.features, model.classifier):
        mods = list(seq)
        for i, m in enumerate(mods):
            if isinstance(m, nn.ReLU):
                assert isinstance(mods[i - 1], (nn.BatchNorm2d, nn.BatchNorm1d))
    assert not any(isinstance(m, (nn.LocalResponseNorm, LocalContrastNorm)) for m in model.modules())


def test_alexnet_loads_torchvision_weights_and_matches_its_outputs() -> None:
    reference = torchvision.models.alexnet(weights=None).eval()
    model = create_model("alexnet").eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert not torch.allclose(model(x), reference(x), atol=1e-5)  # differently initialised
        model.load_state_dict(reference.state_dict(), strict=True)
        assert torch.allclose(model(x), reference(x), atol=1e-5, rtol=0)


# Every non-default norm, the other pooling and the smallest ablation, on every member. Only
# norm="batch" touches the classifier (BatchNorm1d after fc6/fc7); the other rows drop fc6/fc7
# (ablate="fc6_fc7") to skip initialising 54 M weights each, as they change only the conv stages.
VARIANTS = [
    (name, {"norm": norm}) for name in FAMILY for norm in ("lrn", "lcn", "batch", "none") if norm != DEFAULT_NORM[name]
]
VARIANTS += [(name, {"pool": "nonoverlap"}) for name in FAMILY]
VARIANTS += [(name, {"ablate": "conv3_conv4_fc6_fc7"}) for name in FAMILY]


@pytest.mark.parametrize("name, option", VARIANTS, ids=[f"{n}-{next(iter(o.values()))}" for n, o in VARIANTS])
def test_every_option_value_builds_and_runs(name: str, option: dict[str, str]) -> None:
    cheap = {} if "ablate" in option or option.get("norm") == "batch" else {"ablate": "fc6_fc7"}
    model = create_model(name, num_classes=5, **option, **cheap).eval()  # init, dropout: below
    with torch.no_grad():
        logits = model(torch.randn(1, *get_model_info(name).input_size))
    assert logits.shape == (1, 5) and torch.isfinite(logits).all()
    norm = option.get("norm", DEFAULT_NORM[name])
    has = {
        cls: any(isinstance(m, cls) for m in model.modules())
        for cls in (nn.LocalResponseNorm, LocalContrastNorm, nn.BatchNorm2d)
    }
    assert has == {
        nn.LocalResponseNorm: norm == "lrn",
        LocalContrastNorm: norm == "lcn",
        nn.BatchNorm2d: norm == "batch",
    }
    if "pool" in option:
        assert all(p.kernel_size == 2 for p in model.modules() if isinstance(p, nn.MaxPool2d))


def test_nonoverlapping_pool_is_2x2_stride_2() -> None:
    model = create_model("alexnet2012", pool="nonoverlap")
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3 and all((p.kernel_size, p.stride) == (2, 2) for p in pools)
    assert n_params(model) == PARAMS["alexnet2012"]  # 55 -> 27 -> 13 -> 6, as with 3x3/2


class NonInvertedDropout(nn.Dropout):
    """The paper's dropout: training zeroes units without rescaling the rest; eval is the identity."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        # The same draw torch's CPU dropout makes (a Bernoulli(1 - p) mask shaped like x), so
        # one seed gives both conventions the same mask.
        return x * torch.empty_like(x).bernoulli_(1.0 - self.p)


def paper_convention_copy(model: nn.Module) -> nn.Module:
    """The network the paper would have trained: non-inverted dropout, consumers' weights W/(1-p)."""
    paper = copy.deepcopy(model)
    for seq in paper.modules():
        for child_name, child in list(seq.named_children()):
            if type(child) is nn.Dropout:
                setattr(seq, child_name, NonInvertedDropout(child.p))
    return halve_outgoing_weights(paper, inverse=True)


# alexnet2012 drops fc6/fc7 outputs (consumers fc7, fc8); torchvision's alexnet drops the
# inputs of fc6/fc7 (consumers fc6, fc7).
@pytest.mark.parametrize("name", ["alexnet2012", "alexnet", "alexnet_small"])
def test_inverted_dropout_equals_the_papers_halved_weights(name: str) -> None:
    torch_model = create_model(name, num_classes=10)
    paper_model = paper_convention_copy(torch_model)
    x = torch.randn(2, *get_model_info(name).input_size)
    with torch.no_grad():
        # Training, same mask: torch feeds W * (m * x / (1-p)), the paper (W / (1-p)) * (m * x).
        torch_model.train()
        paper_model.train()
        torch.manual_seed(1)
        y_torch = torch_model(x)
        torch.manual_seed(1)
        assert torch.allclose(paper_model(x), y_torch, atol=1e-5)
        torch.manual_seed(2)
        assert not torch.allclose(torch_model(x), y_torch, atol=1e-5)  # the masks do matter
        # Test time: every unit is used; the paper halves the outgoing weights, torch does nothing.
        torch_model.eval()
        paper_model.eval()
        y_torch = torch_model(x)
        assert not torch.allclose(paper_model(x), y_torch, atol=1e-5)  # unhalved: too strong
        halve_outgoing_weights(paper_model)
        assert torch.allclose(paper_model(x), y_torch, atol=1e-5)


@pytest.mark.parametrize("name, halved", [("alexnet2012", ("fc7", "fc8")), ("alexnet", ("fc6", "fc7"))])
def test_halve_outgoing_weights_scales_the_consumers_of_dropped_units(name: str, halved: tuple[str, ...]) -> None:
    model = create_model(name)
    before = {n: model.layer(n).weight.clone() for n in ("conv5", "fc6", "fc7", "fc8")}
    halve_outgoing_weights(model)
    for n, w in before.items():
        assert torch.equal(model.layer(n).weight, w * 0.5 if n in halved else w), n


def test_zero_dropout_disables_dropout_but_keeps_the_state_dict_keys() -> None:
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for p, deterministic in ((0.0, True), (0.5, False)):
            model = create_model("alexnet_small", dropout=p)
            assert torch.equal(model.train()(x), model.eval()(x)) == deterministic, p
    assert list(create_model("alexnet_small", dropout=0.0).state_dict()) == list(model.state_dict())


def test_unknown_model_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'alexnet2013'; valid models: .*alexnet2012.*zfnet"):
        create_model("alexnet2013")


@pytest.mark.parametrize("name", FAMILY)
@pytest.mark.parametrize(
    "option, value, valid",
    [
        ("ablate", "fc8", ["None", "'fc7'", "'fc6_fc7'", "'conv3_conv4_fc6_fc7'"]),
        ("norm", "group", ["'lrn'", "'lcn'", "'batch'", "'none'"]),
        ("pool", "average", ["'overlap'", "'nonoverlap'"]),
        ("init", "xavier", ["'kaiming'", "'paper'"]),
    ],
)
def test_unknown_option_value_names_the_option_and_valid_values(
    name: str, option: str, value: str, valid: list[str]
) -> None:
    with pytest.raises(ValueError, match=f"unknown {option} '{value}'; valid {option} values: ") as err:
        create_model(name, **{option: value})
    assert all(v in str(err.value) for v in valid), str(err.value)


def test_bad_dropout_and_unknown_option_fail() -> None:
    with pytest.raises(ValueError, match=r"dropout must be a probability in \[0, 1\), got 1.0"):
        create_model("alexnet_small", dropout=1.0)
    with pytest.raises(ValueError, match="no option 'width'; valid options: init, ablate, norm, pool, dropout"):
        create_model("alexnet", width=2)


def test_paper_init_gaussian_001_and_unit_biases() -> None:
    model = create_model("alexnet2012", init="paper")
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        layer = model.layer(name)
        assert abs(layer.weight.std().item() - 0.01) < 5e-4, name
        assert abs(layer.weight.mean().item()) < 5e-4, name
        expected_bias = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        assert torch.equal(layer.bias, torch.full_like(layer.bias, expected_bias)), name


def test_paper_init_in_zfnet_and_batchnorm_members() -> None:
    # ZF section 3: "biases are set to 0"; with BN the bias feeding the ReLU is BN's shift.
    # (fc6/fc7 ablated: the biases checked are the conv ones, and builds stay cheap.)
    zf = create_model("zfnet", init="paper", ablate="fc6_fc7")
    assert all(torch.equal(zf.layer(n).bias, torch.zeros_like(zf.layer(n).bias)) for n in ("conv2", "conv4", "conv5"))
    assert abs(zf.layer("conv3").weight.std().item() - 0.01) < 5e-4
    bn = create_model("alexnet_bn", init="paper", ablate="fc6_fc7")
    assert bn.layer("conv2").bias is None
    assert torch.equal(bn.layer("bn2").bias, torch.ones(192)) and torch.equal(bn.layer("bn1").bias, torch.zeros(64))


def test_default_init_is_he_normal() -> None:
    model = default_model("alexnet2012")
    for name, fan_in in (("conv1", 3 * 11 * 11), ("conv2", 48 * 5 * 5), ("fc6", 9216)):
        std = model.layer(name).weight.std().item()
        assert abs(std / math.sqrt(2.0 / fan_in) - 1.0) < 0.03, name  # ReLU gain, fan-in mode
    assert torch.equal(model.layer("conv2").bias, torch.zeros(256))


def test_lrn_uses_the_papers_summed_alpha() -> None:
    # b_i = a_i / (k + alpha * sum_{j=i-n/2}^{i+n/2} a_j^2)^beta, k=2, n=5, alpha=1e-4, beta=0.75,
    # the window clipped at the first and last map. Activations ~100 make the sum matter.
    a = torch.rand(1, 7, 3, 3) * 100
    b = local_response_norm()(a)
    for i in (0, 1, 3, 6):
        lo, hi = max(0, i - 2), min(6, i + 2)
        denom = (2.0 + 1e-4 * (a[0, lo : hi + 1, 1, 2] ** 2).sum()) ** 0.75
        assert torch.isclose(b[0, i, 1, 2], a[0, i, 1, 2] / denom, rtol=1e-5), i


def _lcn_by_hand(x: torch.Tensor, size: int, k: int, sigma: float, eps: float) -> torch.Tensor:
    """Jarrett et al. 2009's LCN by explicit window sums (uniform over `size` maps, Gaussian over
    k x k), each window renormalized over its in-bounds part."""
    _, c, h, w = x.shape
    t = torch.arange(k, dtype=torch.float64) - k // 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    gg = g[:, None] * g[None, :]
    r, s = size // 2, k // 2

    def local_mean(z: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(z)
        for ci in range(c):
            for hi in range(h):
                for wi in range(w):
                    c0, c1 = max(0, ci - r), min(c, ci + r + 1)
                    h0, h1, w0, w1 = max(0, hi - s), min(h, hi + s + 1), max(0, wi - s), min(w, wi + s + 1)
                    wt = gg[h0 - hi + s : h1 - hi + s, w0 - wi + s : w1 - wi + s]
                    out[0, ci, hi, wi] = (z[0, c0:c1, h0:h1, w0:w1] * wt).sum() / (wt.sum() * (c1 - c0))
        return out

    v = x - local_mean(x)
    sd = torch.sqrt(local_mean(v * v) + eps)
    return v / torch.maximum(sd, sd.mean(dim=(2, 3), keepdim=True))


def test_lcn_matches_a_hand_computation() -> None:
    lcn = LocalContrastNorm(size=3, kernel_size=5, sigma=1.5)
    x = torch.randn(1, 6, 9, 9, dtype=torch.float64) * 2 + 3
    got, want = lcn(x), _lcn_by_hand(x, size=3, k=5, sigma=1.5, eps=lcn.eps)
    assert torch.allclose(got, want, atol=1e-6)  # interior (e.g. [0, 3, 4, 4]) and borders alike
    assert got[0, 3, 4, 4] != 0 and (got - x).abs().max() > 1  # it did transform the input


def test_lcn_removes_local_brightness_and_contrast() -> None:
    lcn = LocalContrastNorm()
    x = torch.randn(2, 8, 20, 20)
    assert torch.allclose(lcn(3.0 * x + 5.0), lcn(x), atol=1e-3)  # invariant to gain and offset
    assert lcn(torch.full((1, 8, 20, 20), 7.0)).abs().max() < 1e-3  # flat input -> 0, not noise
    y = lcn(x + 10.0)
    assert y.mean().abs() < 0.05 and 0.5 < y.std() < 2.0  # zero mean, unit-ish scale

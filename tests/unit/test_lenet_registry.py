"""LeNet-5 as published and its modern variant; the registry's contract with users."""

from __future__ import annotations

import pytest
import torch

from convnets.models import create_model, get_model_info, list_models
from convnets.models.lenet import C3_TABLE, SparseC3


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_lenet5_has_the_papers_parameter_count():
    # C1 6*(25+1)=156, S2 6*2=12, C3 6*(3*25+1)+9*(4*25+1)+1*(6*25+1)=1,516, S4 16*2=32,
    # C5 120*(16*25+1)=48,120, F6 84*(120+1)=10,164, RBF 10*84=840 (no bias)  -> 60,840
    assert n_params(create_model("lenet5", num_classes=10)) == 60_840


def test_lenet5_modern_parameter_count():
    # 156 + full C3 16*(6*25+1)=2,416 + 48,120 + 10,164 + linear 84*10+10=850 -> 61,706
    assert n_params(create_model("lenet5_modern", num_classes=10)) == 61_706


@pytest.mark.parametrize("name", ["lenet5", "lenet5_modern"])
def test_lenet_forward_backward_at_32px(name):
    model = create_model(name, num_classes=10)
    logits = model(torch.randn(4, 1, 32, 32))
    assert logits.shape == (4, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_c3_follows_the_connection_table():
    """Output map i changes only when one of the S2 maps of Table I row i changes."""
    c3 = SparseC3()
    x = torch.randn(1, 6, 14, 14)
    base = c3(x)
    for source_map in range(6):
        bumped = x.clone()
        bumped[:, source_map] += 1.0
        changed = (c3(bumped) - base).abs().flatten(2).amax(-1)[0] > 1e-6
        expected = torch.tensor([source_map in row for row in C3_TABLE])
        assert torch.equal(changed, expected), f"S2 map {source_map}"


def test_registry_lists_models_and_declares_inputs():
    assert {"lenet5", "lenet5_modern"} <= set(list_models())
    info = get_model_info("lenet5")
    assert info.input_size == (1, 32, 32)
    assert len(info.mean) == len(info.std) == 1


def test_unknown_model_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown model 'lenet6'.*lenet5"):
        create_model("lenet6", num_classes=10)


def test_unknown_option_names_the_valid_ones():
    with pytest.raises(ValueError, match="has no option 'ablate'"):
        create_model("lenet5", num_classes=10, ablate="fc7")

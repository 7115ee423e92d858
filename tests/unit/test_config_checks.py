"""The pre-flight checks accept every registered model at its declared size and refuse what cannot run."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from convnets.errors import ConfigError, ConvnetsInputError
from convnets.models import create_model, get_model_info, list_models
from convnets.platform.training.config_checks import check_config, check_crop, check_model, world_size_of


@pytest.mark.parametrize("arch", list_models())
def test_every_model_passes_at_its_declared_size_and_small_sizes_as_a_real_forward_says(arch):
    info = get_model_info(arch)
    assert check_model({"arch": arch}, 10) == info.input_size[1]
    net = create_model(arch, num_classes=10).eval()
    try:  # the independent answer: a real forward pass at 16 px on the CPU
        with torch.no_grad():
            net(torch.zeros(1, info.input_size[0], 16, 16))
        runs = True
    except RuntimeError:
        runs = False
    if runs:
        assert check_model({"arch": arch, "image_size": 16}, 10) == 16
    else:
        with pytest.raises(ConfigError, match="model.image_size=16"):
            check_model({"arch": arch, "image_size": 16}, 10)


def test_model_option_typos_and_class_mismatch():
    with pytest.raises(ConfigError, match="unknown model 'alexnett'"):
        check_model({"arch": "alexnett"}, 10)
    with pytest.raises(ConfigError, match="norm"):
        check_model({"arch": "alexnet", "norm": "bogus"}, 10)
    with pytest.raises(ConfigError, match="the data has 10 classes"):
        check_model({"arch": "lenet5", "num_classes": 7}, 10)


def test_crop_larger_than_the_resize():
    check_crop({"resize": 256, "preset": "alexnet"}, 224)
    for data in (
        {"resize": 200, "preset": "inception"},
        {"resize": 200, "preset": "alexnet"},
        {"resize": 200},
        {"resize": 200, "augment": "scale"},
    ):  # the deprecated spelling means inception
        with pytest.raises(ConfigError, match="data.resize=200 is smaller than the 224 px crop"):
            check_crop(data, 224)
    # pad places the image in a window: a resize below the window is no crop error
    check_crop({"resize": 28, "preset": "pad"}, 32)
    check_crop({"resize": 28, "augment": "pad"}, 32)
    with pytest.raises(ConfigError, match="crop_fraction"):
        check_crop({"crop_fraction": 1.2}, 224)


def test_world_size_from_the_trainer_config():
    assert world_size_of({"devices": 4, "num_nodes": 2}) == 8
    assert world_size_of({"devices": [0, 1]}) == 2
    assert world_size_of({"devices": "auto"}) == 1


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "sub/shard.tar", ".."])
def test_manifest_shard_names_cannot_leave_the_split_folder(name, digits_shards, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(digits_shards, data)
    path = data / "train" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["shards"][0]["name"] = name
    path.write_text(json.dumps(manifest))
    cfg = {"data": {"data_dir": str(data), "batch_size": 8}, "model": {"arch": "lenet5"}}
    with pytest.raises(ConvnetsInputError, match="path traversal refused"):
        check_config(cfg, "fit", world_size=1)

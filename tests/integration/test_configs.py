"""Every shipped recipe parses into the objects it describes; the small ones train a few steps on real data."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import shared_data
from tests.integration.cli_helpers import convnets

pytestmark = [pytest.mark.dali, pytest.mark.integration]


def _packaged():
    from convnets.platform.training.lightning_cli import PACKAGED_CONFIGS, packaged_configs

    return PACKAGED_CONFIGS, packaged_configs()


def test_the_shipped_recipes_are_all_there():
    _, names = _packaged()
    assert {
        "alexnet2012_imagenet",
        "alexnet_imagenet_fast",
        "zfnet_imagenet",
        "alexnet_bn_imagenet",
        "lenet5_mnist",
        "lenet5_digits",
        "alexnet_small_imagenette",
    } <= set(names)


@pytest.mark.parametrize("name", _packaged()[1])
def test_recipe_parses_and_builds(name, tmp_path, monkeypatch):
    from convnets.data_pipelines.loading.datamodule import ShardDataModule
    from convnets.platform.training.lightning_cli import ConvnetsCLI
    from convnets.platform.training.module import ClassifierModule

    monkeypatch.delenv("CONVNETS_RUN_NAME", raising=False)
    folder, _ = _packaged()
    raw = yaml.safe_load((folder / f"{name}.yaml").read_text())
    assert (folder / f"{name}.yaml").read_text().startswith("#"), "each recipe starts with where its numbers come from"
    # The GPU recipes are parsed here on the CPU: only the device flags are overridden.
    cli = ConvnetsCLI(
        ClassifierModule,
        ShardDataModule,
        run=False,
        auto_configure_optimizers=False,
        args=[
            "--config",
            name,
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "1",
            "--trainer.strategy",
            "auto",
            "--trainer.logger",
            "false",
            "--runs_dir",
            str(tmp_path),
            "--run_name",
            "parse",
        ],
    )
    assert cli.model.hparams.arch == raw["model"]["arch"]
    for key, value in raw["model"].get("optim", {}).items():
        assert getattr(cli.model.optim, key) == value, key
    for key, value in raw["model"].get("perf", {}).items():
        assert getattr(cli.model.perf, key) == value, key
    assert cli.datamodule.hparams.batch_size == raw["data"]["batch_size"]
    assert cli.datamodule.preset == raw["data"]["preset"]  # every recipe names its augmentation
    assert cli.trainer.max_epochs == raw["trainer"]["max_epochs"]


def _mnist_shards(tmp_path):
    from convnets.data_pipelines.shards.sources import MnistSource
    from convnets.data_pipelines.shards.writer import write_shards

    write_shards(MnistSource(root=shared_data("mnist"), n_train=600), tmp_path / "mnist", shard_size=500)
    return tmp_path / "mnist"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lenet5_digits", "lenet5_mnist", "alexnet_small_imagenette"])
def test_small_recipe_trains_a_few_steps_on_real_data(name, tmp_path, digits_shards, imagenette_small_shards):
    data = {
        "lenet5_digits": lambda: digits_shards,
        "alexnet_small_imagenette": lambda: imagenette_small_shards,
        "lenet5_mnist": lambda: _mnist_shards(tmp_path),
    }[name]()
    result = convnets(
        "fit",
        "--config",
        name,
        "--data.data_dir",
        data,
        "--trainer.max_steps",
        "3",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.logger",
        "false",
        "--runs_dir",
        tmp_path,
        "--run_name",
        "few",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "few" / "checkpoints" / "last.ckpt").exists()


def test_an_unknown_recipe_name_is_one_line_listing_the_shipped_ones(tmp_path):
    result = convnets("fit", "--config", "alexnet2013_imagenet", "--runs_dir", tmp_path)
    assert result.returncode == 2
    assert "alexnet2012_imagenet" in result.stderr and len(result.stderr.strip().splitlines()) == 1

"""`convnets sweep ablation` end to end: real child fits/tests on real Imagenette JPEGs, and early failures."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from convnets.models import create_model
from convnets.platform.experiments.sweep import VARIANTS
from tests.integration.cli_helpers import convnets

VARIANT_NAMES = (
    "full",
    "no_fc7",
)  # two children keep the suite short; every norm option builds in tests/unit/test_alexnet.py


def _sweep(*args: object, timeout: int = 300) -> subprocess.CompletedProcess:
    return convnets("sweep", "ablation", *map(str, args), timeout=timeout)


def _config(tmp_path: Path, *, arch: str, data_dir: Path) -> Path:
    config = {
        "model": {"arch": arch, "optim": {"lr": 0.02}},
        "data": {"data_dir": str(data_dir), "batch_size": 12, "num_threads": 1, "min_area": 0.25},
        "trainer": {"max_epochs": 3, "accelerator": "cpu", "enable_progress_bar": False},
    }
    path = tmp_path / f"{arch}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.dali
@pytest.mark.integration
def test_sweep_tabulates_exact_params_and_resumes(tmp_path, imagenette_small_shards):
    config, out = _config(tmp_path, arch="alexnet_small", data_dir=imagenette_small_shards), tmp_path / "sweep"
    # --epochs overrides the config's 3; the flags after `--` reach every child (no W&B run per child: faster).
    result = _sweep(
        "--config",
        config,
        "--variants",
        ",".join(VARIANT_NAMES),
        "--epochs",
        1,
        "--out",
        out,
        "--",
        "--model.image_size",
        32,
        "--trainer.logger",
        "false",
    )
    assert result.returncode == 0, result.stderr[-3000:]

    rows = json.loads((out / "ablation.json").read_text())
    assert [r["variant"] for r in rows] == list(VARIANT_NAMES)
    by_name = {r["variant"]: r for r in rows}
    for name, row in by_name.items():
        assert row["params"] == _params(create_model("alexnet_small", num_classes=3, **VARIANTS[name].options)), name
        assert row["epochs"] == 1, name
        assert 0.0 <= row["test_top1"] <= row["test_top5"] <= 1.0, name
        assert row["flags"] == VARIANTS[name].flags
    fc7 = _params(create_model("alexnet_small", num_classes=3).layer("fc7"))
    assert fc7 == 1024 * 1024 + 1024
    assert by_name["full"]["params"] - by_name["no_fc7"]["params"] == fc7
    assert by_name["full"]["delta_top1_err_pts"] == 0.0 and by_name["full"]["delta_top5_err_pts"] == 0.0
    expected_delta = 100 * (by_name["full"]["test_top1"] - by_name["no_fc7"]["test_top1"])
    assert by_name["no_fc7"]["delta_top1_err_pts"] == pytest.approx(expected_delta)

    # Each variant's flags reached its model (the checkpoint rebuilds exactly that network).
    import torch

    hparams = {
        n: torch.load(out / n / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["hyper_parameters"]
        for n in VARIANT_NAMES
    }
    assert (hparams["no_fc7"]["ablate"], hparams["full"].get("ablate")) == ("fc7", None)

    markdown = (out / "ablation.md").read_text()
    assert all(f"| {name} |" in markdown for name in VARIANT_NAMES)
    assert f"| {by_name['no_fc7']['params']:,} |" in markdown and "1.1% drop in performance" in markdown
    assert markdown.strip() in result.stdout  # the table is printed at the end
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "wandb").glob("offline-run-*")), "the W&B summary run is missing"

    # A rerun finds every variant finished: nothing trains again, the table is rebuilt.
    checkpoints = {n: (out / n / "checkpoints" / "last.ckpt").stat().st_mtime_ns for n in VARIANT_NAMES}
    start = time.perf_counter()
    again = _sweep(
        "--config",
        config,
        "--variants",
        ",".join(VARIANT_NAMES),
        "--epochs",
        1,
        "--out",
        out,
        "--",
        "--model.image_size",
        32,
        "--trainer.logger",
        "false",
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("skipping") == len(VARIANT_NAMES)
    assert {n: (out / n / "checkpoints" / "last.ckpt").stat().st_mtime_ns for n in VARIANT_NAMES} == checkpoints
    assert json.loads((out / "ablation.json").read_text()) == rows
    assert time.perf_counter() - start < 60  # no child process ran (one takes ~10 s just to import)


@pytest.mark.integration
def test_unknown_variant_fails_with_one_line_before_training(tmp_path):
    out = tmp_path / "sweep"
    result = _sweep(
        "--config",
        _config(tmp_path, arch="alexnet_small", data_dir=tmp_path / "no_data"),
        "--variants",
        "full,no_fc8",
        "--out",
        out,
        timeout=120,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "no_fc8" in result.stderr and all(name in result.stderr for name in VARIANTS)  # lists the valid ones
    assert not out.exists()


@pytest.mark.integration
def test_variant_the_model_cannot_take_fails_with_one_line_naming_it(tmp_path):
    # LeNet-5 has no `ablate` option: the sweep must stop at planning, naming the variant, not in a child.
    out = tmp_path / "sweep"
    result = _sweep(
        "--config",
        _config(tmp_path, arch="lenet5", data_dir=tmp_path / "no_data"),
        "--variants",
        "full,no_fc7",
        "--out",
        out,
        timeout=120,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "variant no_fc7" in result.stderr and "ablate" in result.stderr
    assert not out.exists()

"""`convnets bench e2e` on the CPU: the three rates come out and the bottleneck is the slower side."""

from __future__ import annotations

import json

import pytest

from tests.integration.cli_helpers import convnets

pytestmark = [pytest.mark.integration, pytest.mark.dali, pytest.mark.slow]


def test_e2e_reports_data_model_and_both(imagenette_small_shards, tmp_path):
    result = convnets(
        "bench",
        "e2e",
        "--data",
        imagenette_small_shards,
        "--arch",
        "alexnet_small",
        "--batch",
        "8",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--num-threads",
        "1",
        "--device",
        "cpu",
        "--json",
        tmp_path / "e2e.json",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads((tmp_path / "e2e.json").read_text())
    assert min(r["data_images_per_s"], r["model_images_per_s"], r["both_images_per_s"]) > 0
    slower = "data" if r["data_images_per_s"] < r["model_images_per_s"] else "model"
    assert r["bottleneck"] == slower and r["decode"] == "cpu"

"""`convnets bench imagenette` end to end on a few real Imagenette images (the timing run is
`make bench-imagenette`)."""

from __future__ import annotations

import json

import pytest

from tests.integration.cli_helpers import convnets

pytestmark = [pytest.mark.integration, pytest.mark.dali, pytest.mark.slow]


def test_time_to_accuracy_report_on_a_small_tree(imagenette_small_tree, tmp_path):
    out = tmp_path / "bench"
    result = convnets(
        "bench",
        "imagenette",
        "--data",
        imagenette_small_tree,
        "--out",
        out,
        "--max-epochs",
        "2",
        "--resize",
        "48",
        "--json",
        tmp_path / "copy.json",
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    bench = json.loads((out / "bench.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert bench == json.loads((tmp_path / "copy.json").read_text())
    assert bench["top1_10crop"] == metrics["test_top1"] and bench["top1_1crop"] == metrics["test_top1_1crop"]
    assert [round(p["val_top1"], 6) for p in bench["curve"]] == [
        round(v["val_top1"], 6) for v in metrics["val_history"]
    ]
    assert len(bench["curve"]) == 2 and all(0 < p["wall_s"] < bench["wall_s"] for p in bench["curve"])
    assert bench["wall_s"] == pytest.approx(bench["shards_s"] + bench["fit_s"] + bench["test_s"])
    assert bench["met"] is False  # 2 epochs on 36 images cannot reach 80%: the verdict is computed, not assumed
    assert (out / "time_to_accuracy.png").stat().st_size > 5_000
    assert "| alexnet_small_imagenette_fast" in result.stdout

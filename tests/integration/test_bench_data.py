"""`convnets bench data` on tiny real shards: every backend runs and reports what a reader of the
README table needs (rate, n, CPU model, versions); a wrong folder is one line, exit code 2."""

from __future__ import annotations

import json

import pytest

from convnets.cli import main
from tests.integration.cli_helpers import convnets

pytestmark = [pytest.mark.integration, pytest.mark.dali]


@pytest.mark.parametrize("backend", ["feed", "decode", "decode-crop", "dali", "torch"])
def test_each_backend_reports_images_per_second(imagenette_small_shards, tmp_path, capsys, backend):
    out = tmp_path / f"{backend}.json"
    # The folder of splits: the train split is used.
    code = main(
        [
            "bench",
            "data",
            "--shards",
            str(imagenette_small_shards),
            "--backend",
            backend,
            "--threads",
            "1",
            "--batch",
            "8",
            "--seconds",
            "0.3",
            "--warmup",
            "1",
            "--image-size",
            "64",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    r = json.loads(out.read_text())
    assert r["backend"] == backend and r["shards"].endswith("train") and r["batch"] == 8 and r["threads"] == 1
    assert r["images"] >= 2 * 8 and r["batches"] >= 2 and r["images"] <= 8 * r["batches"]
    assert r["images_per_s"] > 0 and r["images_per_s_median_batch"] > 0 and r["images_per_cpu_second"] > 0
    assert r["hardware"] and r["versions"]["nvidia_dali"] and r["versions"]["torch"]
    table = capsys.readouterr().out
    assert f"| {backend}" in table and "images/s" in table


def test_a_folder_without_shards_is_one_line(tmp_path):
    result = convnets("bench", "data", "--shards", tmp_path, "--backend", "feed", timeout=120)
    assert result.returncode == 2
    assert "no manifest.json" in result.stderr and str(tmp_path) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

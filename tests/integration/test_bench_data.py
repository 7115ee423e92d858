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


def test_whole_epochs_over_http_report_cold_and_cached_epochs_and_the_bytes_fetched(
    digits_shards, tmp_path, nginx, nginx_root
):
    """`bench data --shards URL --epochs 2`: the first epoch fetches the split once over a real nginx, the
    second reads the cache (nothing fetched); both epochs read every training sample; each rate is set
    beside the local folder's same epoch."""
    import shutil

    from convnets.data_pipelines.shards.format import read_manifest

    served = nginx_root / "digits-bench"
    shutil.copytree(digits_shards, served)
    out = tmp_path / "epochs.json"
    result = convnets(
        "bench", "data", "--shards", f"{nginx.url}/{served.name}", "--baseline", digits_shards,
        "--epochs", "2", "--batch", "64", "--image-size", "32", "--cache-dir", tmp_path, "--json", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    manifest = read_manifest(digits_shards / "train")
    split_bytes = sum(s.num_bytes for s in manifest.shards)
    rows = {(r["source"], r["epoch"]): r for r in report["epochs_measured"]}
    assert sorted(rows) == [
        ("local folder", 0),
        ("local folder", 1),
        ("through the cache", 0),
        ("through the cache", 1),
    ]
    assert all(r["images"] == manifest.num_samples for r in rows.values())
    cold, warm = rows[("through the cache", 0)], rows[("through the cache", 1)]
    assert cold["bytes_fetched"] == split_bytes and warm["bytes_fetched"] == 0
    assert rows[("local folder", 0)]["bytes_fetched"] == 0
    assert cold["ratio_to_local"] == pytest.approx(cold["images_per_s"] / rows[("local folder", 0)]["images_per_s"])
    assert "through the cache" in result.stdout and "x split" in result.stdout  # the table
    assert not list(tmp_path.glob("convnets-bench-cache-*"))  # the fresh cache is removed afterwards

"""scripts/make_scale_shards.py on a small count, and `convnets bench epoch` on the CPU over its tiny split."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from convnets.data_pipelines.shards.format import read_manifest
from convnets.data_pipelines.shards.sources import Encoding, read_image_file
from convnets.platform.bench.epoch import project_recipe
from tests.conftest import REPO, shared_data
from tests.integration.cli_helpers import convnets, last_line

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PHOTOS, TRAIN, VAL = 5, 48, 16
SCRIPT = REPO / "scripts" / "make_scale_shards.py"


def _script(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Five real ImageNet photos (linked, not copied), larger and smaller than 256 px, one grayscale among 500."""
    sample = shared_data("imagenet-sample")
    folder = tmp_path_factory.mktemp("photos")
    chosen = sorted(sample.iterdir())[:PHOTOS]
    for p in chosen:
        (folder / p.name).symlink_to(p)
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def scale(photos, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("scale") / "shards"
    result = _script(
        out,
        "--from",
        photos[0].parent,
        "--samples",
        TRAIN,
        "--val-samples",
        VAL,
        "--resize",
        256,
        "--shard-size",
        10,
        "--workers",
        2,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def _tar_members(split_dir: Path) -> list[tuple[str, bytes, int]]:
    """(key, image bytes, label) of every sample, straight from the tar files."""
    import tarfile

    samples: dict[str, dict] = {}
    for tar_path in sorted(split_dir.glob("shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar:
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return [(k, v["jpg"], int(v["cls"])) for k, v in samples.items()]


def test_scale_shards_verify_and_repeat_the_reencoded_photos_under_distinct_keys(scale, photos):
    out, _ = scale
    verify = convnets("shards", "verify", out)
    assert verify.returncode == 0, verify.stderr[-2000:]
    encoded = [read_image_file(p, encoding=Encoding(resize=256, quality=90, rgb_jpeg=True))[0] for p in photos]
    which = {data: i for i, data in enumerate(encoded)}
    keys = []
    for split, n, offset in (("train", TRAIN, 0), ("val", VAL, TRAIN)):
        samples = _tar_members(out / split)
        keys += [k for k, _, _ in samples]
        assert len(samples) == n == read_manifest(out / split).num_samples
        # Every stored image is byte for byte one photo's re-encoding, each photo as often as i mod 5 picks it.
        assert all(data in which for _, data, _ in samples)
        expected = Counter((offset + i) % PHOTOS for i in range(n))
        assert Counter(which[data] for _, data, _ in samples) == expected
        # Labels i mod 1000, continuing from train into val: spread over as many classes as there are samples.
        assert sorted(label for _, _, label in samples) == sorted((offset + i) % 1000 for i in range(n))
        assert read_manifest(out / split).num_classes == 1000
    assert len(set(keys)) == len(keys) == TRAIN + VAL
    assert min(map(len, encoded)) < max(map(len, encoded))  # distinct photos, not one repeated


def test_scale_shards_say_accuracy_on_them_means_nothing(scale):
    out, result = scale
    for text in (read_manifest(out / "train").source, (out / "README.txt").read_text(), result.stderr):
        assert "accuracy on it means nothing" in text


def test_scale_shards_refuse_a_missing_photo_folder_in_one_line(tmp_path):
    result = _script(tmp_path / "out", "--from", tmp_path / "nowhere", "--samples", 10)
    assert result.returncode == 2
    assert last_line(result.stderr) == f"make_scale_shards: error: --from {tmp_path / 'nowhere'}: not a directory"
    assert not (tmp_path / "out").exists()


@pytest.mark.dali
def test_bench_epoch_on_cpu_counts_every_image_and_accounts_for_the_wall_time(scale, tmp_path):
    out, _ = scale
    result = convnets(
        "bench",
        "epoch",
        "--shards",
        out,
        "--recipe",
        "alexnet_small_imagenette",
        "--arch",
        "alexnet_small",
        "--batch",
        8,
        "--epochs",
        2,
        "--val",
        "--test-crops",
        10,
        "--device",
        "cpu",
        "--blocks",
        3,
        "--json",
        tmp_path / "epoch.json",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads((tmp_path / "epoch.json").read_text())
    phases = r["phases"]
    # Every training image once per epoch, in exactly one phase; validation and test see the val split.
    assert r["train_images"] == TRAIN * 2 == sum(phases[k]["images"] for k in ("startup", "steady", "tail"))
    assert phases["startup"]["images"] == 8  # the first step's batch
    assert phases["validation"]["images"] == VAL * 2 and r["test"]["images"] == VAL
    assert r["test"]["crops_per_s"] == pytest.approx(10 * r["test"]["images_per_s"])
    # The phases tile the fit: together they are its wall time.
    assert sum(p["seconds"] for p in phases.values()) == pytest.approx(r["wall_s"], rel=1e-6)
    assert all(p["seconds"] > 0 for p in phases.values())
    blocks = phases["steady"]["blocks"]
    assert len(blocks) == 2 * 3 and sum(b["images"] for b in blocks) == phases["steady"]["images"] == 2 * 4 * 8
    assert len(r["data_wait_fraction_per_epoch"]) == 2
    assert r["mfu"] is None and r["gpu_utilization"] is None and r["device"] == "cpu"  # no peak, no driver
    # The projection: the recipe's own epochs, ImageNet's sizes, the measured rates.
    recipe = yaml.safe_load((REPO / "src/convnets/configs/alexnet_small_imagenette.yaml").read_text())
    p = r["projection"]
    assert p["epochs"] == recipe["trainer"]["max_epochs"] and p["train_images"] == 1_281_167
    assert p["train_images_per_s"] == pytest.approx(
        (phases["steady"]["images"] + phases["tail"]["images"])
        / (phases["steady"]["seconds"] + phases["tail"]["seconds"])
    )
    assert p["total_s"] == pytest.approx(
        project_recipe(
            epochs=p["epochs"],
            train_images=1_281_167,
            train_images_per_s=p["train_images_per_s"],
            val_images=50_000,
            val_images_per_s=phases["validation"]["images_per_s"],
            startup_s=phases["startup"]["seconds"],
        )["total_s"]
    )
    assert "| alexnet_small |" in result.stdout and "8 GPUs (linear)" in result.stdout


@pytest.mark.dali
def test_bench_epoch_data_only_reads_every_image_of_each_epoch_through_the_fits_loader(scale, tmp_path):
    out, _ = scale
    result = convnets(
        "bench",
        "epoch",
        "--shards",
        out,
        "--recipe",
        "alexnet_small_imagenette",
        "--arch",
        "alexnet_small",
        "--batch",
        8,
        "--epochs",
        2,
        "--data-only",
        "--device",
        "cpu",
        "--json",
        tmp_path / "data.json",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads((tmp_path / "data.json").read_text())
    assert r["mode"] == "data" and r["data_device"] == "cpu" and r["num_threads"] == 2  # the recipe's threads
    assert r["train_images"] == TRAIN * 2 and r["phases"]["startup"]["images"] == 8
    assert sum(p["seconds"] for p in r["phases"].values()) == pytest.approx(r["wall_s"], rel=1e-6)
    assert "| alexnet_small loader |" in result.stdout


def test_bench_epoch_names_a_bad_recipe_or_fit_flag_in_one_line(scale):
    out, _ = scale
    bad = convnets("bench", "epoch", "--shards", out, "--recipe", "nope")
    assert bad.returncode == 2 and last_line(bad.stderr).startswith("convnets: error: --recipe nope: no such file")
    flag = convnets(
        "bench",
        "epoch",
        "--shards",
        out,
        "--recipe",
        "alexnet_small_imagenette",
        "--arch",
        "alexnet_small",
        "--device",
        "cpu",
        "--",
        "--data.nonsense",
        "1",
    )
    assert flag.returncode == 2
    assert (
        last_line(flag.stderr)
        == "convnets: error: bench epoch: the fit refused its flags: unrecognized arguments: --data.nonsense 1"
    )

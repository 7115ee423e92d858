"""Bad input through the real command: one line naming the culprit, exit code 2, no traceback."""

from __future__ import annotations

import json
import shutil

import pytest

from convnets.data_pipelines.shards.format import load_sample_index
from tests.integration.cli_helpers import REPO, convnets, last_line

pytestmark = [pytest.mark.integration, pytest.mark.dali]
CONFIG = REPO / "configs" / "lenet5_digits.yaml"


def fit(data_dir, tmp_path, *extra):
    return convnets(
        "fit",
        "--config",
        CONFIG,
        "--data.data_dir",
        data_dir,
        "--runs_dir",
        tmp_path / "runs",
        "--run_name",
        "r",
        "--trainer.max_epochs",
        "1",
        "--trainer.logger",
        "false",
        *extra,
    )


def assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr[-2000:]
    line = last_line(result.stderr)
    assert line.startswith("convnets: error: "), result.stderr[-2000:]
    for needle in needles:
        assert needle in line, line
    assert "Traceback" not in result.stderr


def test_missing_data_path(tmp_path):
    assert_one_line_error(fit(tmp_path / "nowhere", tmp_path), str(tmp_path / "nowhere"))


def test_unknown_model_lists_the_valid_ones(digits_shards, tmp_path):
    assert_one_line_error(fit(digits_shards, tmp_path, "--model.arch", "lenet6"), "lenet6", "lenet5_modern", "alexnet")


def test_truncated_shard(digits_shards, tmp_path):
    data = tmp_path / "shards"
    shutil.copytree(digits_shards, data)
    shard = sorted((data / "train").glob("*.tar"))[0]
    shard.write_bytes(shard.read_bytes()[:-4096])
    assert_one_line_error(fit(data, tmp_path), shard.name, "truncated")


def test_corrupt_image(digits_shards, tmp_path):
    data = tmp_path / "shards"
    shutil.copytree(digits_shards, data)
    index = load_sample_index(data / "train")
    shard = index.shard_paths[int(index.shard_id[0])]
    raw = bytearray(shard.read_bytes())
    start, size = int(index.img_offset[0]), int(index.img_size[0])
    raw[start : start + size] = b"\xff" * size
    shard.write_bytes(bytes(raw))
    assert_one_line_error(fit(data, tmp_path), shard.name, index.key(0), "cannot decode")


def test_label_outside_the_classes(digits_shards, tmp_path):
    data = tmp_path / "shards"
    shutil.copytree(digits_shards, data)
    for split in ("train", "val"):  # claim 5 classes: digits 5..9 are now out of range
        path = data / split / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["classes"] = manifest["classes"][:5]
        manifest["class_counts"] = manifest["class_counts"][:5]
        manifest["num_classes"] = 5
        path.write_text(json.dumps(manifest))
    assert_one_line_error(fit(data, tmp_path), "label", "outside the 5 classes")


def test_shards_command_on_a_missing_source(tmp_path):
    result = convnets("shards", "imagefolder", tmp_path / "absent", tmp_path / "out")
    assert_one_line_error(result, "absent")


def test_models_json_lists_every_model():
    result = convnets("models", "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["lenet5"]["params"] == 60_000 + 84 * 1000  # 60,840 minus 10 RBF centres, plus 1,000
    assert rows["alexnet"]["params"] == 61_100_840 and rows["alexnet"]["input_size"] == [3, 224, 224]
    assert 1.0 < rows["alexnet"]["gflops"] < 2.0  # 0.71 G multiply-adds = 1.43 GFLOPs

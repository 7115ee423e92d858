"""`convnets evaluate` on a trained checkpoint and real images, checked against crops cut by hand.

The val images are real Imagenette photos stored as PNGs whose shorter side is already the
model's resize (73 px for 64 px crops): decoding is lossless and the pipeline's resize is the
identity, so numpy slicing of the stored pixels gives exactly what the network must see.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from convnets.data_pipelines.loading.augment import CROP_POSITIONS
from tests.conftest import shared_data
from tests.integration.cli_helpers import convnets

pytestmark = [pytest.mark.integration, pytest.mark.dali, pytest.mark.slow]
SIDE, CROP = 73, 64  # alexnet_small: 64 px crops of images resized to 64 / 0.875 = 73 px
PER_CLASS = {"train": 12, "val": 11}  # 33 val images: uneven over 2 ranks


def _png_tree(root: Path, tree: Path) -> None:
    from PIL import Image

    for split, count in PER_CLASS.items():
        for class_dir in sorted((root / split).iterdir())[:3]:
            (tree / split / class_dir.name).mkdir(parents=True)
            for path in sorted(class_dir.iterdir())[:count]:
                with Image.open(path) as img:
                    img = img.convert("RGB")
                    w, h = img.size
                    size = (SIDE, round(h * SIDE / w)) if w < h else (round(w * SIDE / h), SIDE)
                    img.resize(size, Image.BILINEAR).save(tree / split / class_dir.name / f"{path.stem}.png")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, shards): alexnet_small (BatchNorm, dropout 0.2) trained 4 epochs on 36 real images."""
    from convnets.data_pipelines.shards.sources import ImageFolderSource
    from convnets.data_pipelines.shards.writer import write_shards

    base = tmp_path_factory.mktemp("evaluate")
    _png_tree(shared_data("imagenette"), base / "tree")
    write_shards(ImageFolderSource(root=base / "tree"), base / "shards", shard_size=10, seed=0)
    fit = convnets(
        "fit",
        "--config",
        "alexnet_small_imagenette_fast",
        "--data.data_dir",
        base / "shards",
        "--runs_dir",
        base / "runs",
        "--run_name",
        "r",
        "--trainer.logger",
        "false",
        "--trainer.max_epochs",
        "4",
        "--data.batch_size",
        "12",
        "--model.optim.lr",
        "0.05",
        "--model.optim.warmup_epochs",
        "1",
        "--trainer.check_val_every_n_epoch",
        "4",
        # Smoothed targets keep the softmax off 0/1 whatever the draws: on a saturated network
        # a wrong crop or logit averaging would hide below the comparison's tolerance.
        "--model.optim.label_smoothing",
        "0.3",
        "--trainer.enable_progress_bar",
        "false",
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    return base / "runs" / "r" / "checkpoints" / "last.ckpt", base / "shards"


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory):
    """evaluated(crops=..., average=...) -> (result, predictions) of the trained checkpoint, each computed once."""
    cache: dict = {}

    def run(**kw) -> tuple[dict, dict]:
        key = tuple(sorted(kw.items()))
        if key not in cache:
            cache[key] = _evaluate(*trained, tmp_path_factory.mktemp("eval"), **kw)
        return cache[key]

    return run


def _evaluate(ckpt: Path, shards: Path, out: Path, **kw) -> tuple[dict, dict]:
    from convnets.platform.evaluation.evaluate import EvalConfig, evaluate

    result = evaluate(
        EvalConfig(ckpt=ckpt, data=shards, split="val", out=out, wandb=False, batch=8, num_threads=1, **kw)
    )
    return result, dict(np.load(out / "predictions.npz"))


def _hand_crops(shards: Path, mean, std) -> tuple[torch.Tensor, np.ndarray]:
    """(N, 10, 3, 64, 64) crops cut by numpy slicing, in sample order, and the labels."""
    from PIL import Image

    from convnets.data_pipelines.shards.format import load_sample_index, read_labels
    from convnets.data_pipelines.shards.reader import ShardFiles

    index = load_sample_index(shards / "val")
    files = ShardFiles(index)
    out = []
    for i in range(len(index.shard_id)):
        pixels = np.asarray(Image.open(io.BytesIO(files.image(i))).convert("RGB"), dtype=np.float32) / 255
        x = (pixels - np.array(mean, np.float32)) / np.array(std, np.float32)
        h, w = x.shape[:2]
        assert min(h, w) == SIDE
        # anchor = position x (side - crop), rounded half up (DALI's convention): centre of 9 spare px -> 5
        crops = [
            x[int(py * (h - CROP) + 0.5) :][:CROP, int(px * (w - CROP) + 0.5) :][:, :CROP] for px, py in CROP_POSITIONS
        ]
        crops += [c[:, ::-1] for c in crops]
        out.append(np.stack(crops).transpose(0, 3, 1, 2))
    files.close()
    return torch.from_numpy(np.ascontiguousarray(np.stack(out))), read_labels(index, num_classes=3)


def _probs(logits: torch.Tensor, crops: list[int], average: str) -> np.ndarray:
    sel = logits[:, crops]
    p = sel.softmax(-1).mean(1) if average == "softmax" else sel.mean(1).softmax(-1)
    return p.numpy()


def test_multi_crop_equals_crops_cut_by_hand(trained, evaluated):
    from convnets.platform.training.restore import build_module, read_checkpoint

    ckpt, shards = trained
    module = build_module(read_checkpoint(ckpt))
    spec = module.input_spec
    crops, labels = _hand_crops(shards, spec.mean, spec.std)
    with torch.no_grad():
        logits = module(crops.flatten(0, 1)).view(len(crops), 10, -1)
    cases = {
        (1, "softmax"): [0],
        (5, "softmax"): list(range(5)),
        (10, "softmax"): list(range(10)),
        (10, "logits"): list(range(10)),
    }
    expected = {key: _probs(logits, which, key[1]) for key, which in cases.items()}
    for (n_crops, average), want in expected.items():
        result, pred = evaluated(crops=n_crops, average=average)
        order = np.argsort(pred["index"])
        got = np.zeros_like(want)
        got[pred["index"][order][:, None], pred["classes"][order]] = pred["probs"][order]
        assert result["n"] == len(want) == 33 and result["crops"] == n_crops
        np.testing.assert_allclose(got, want, atol=2e-5, err_msg=f"{n_crops} crops, {average}")
        assert result["top1"] == pytest.approx(float((want.argmax(1) == labels).mean()), abs=1e-7)
        assert result["top1_1crop"] == pytest.approx(
            float((expected[1, "softmax"].argmax(1) == labels).mean()), abs=1e-7
        )
    # The comparison can fail: logit averaging, a crop one pixel off, or unmirrored crops differ from the
    # right answer by far more than the tolerance on this trained network.
    assert np.abs(expected[10, "logits"] - expected[10, "softmax"]).max() > 1e-3
    shifted = crops.clone()
    shifted[:, 0] = torch.from_numpy(np.ascontiguousarray(_shift_centre(crops[:, 0].numpy())))
    with torch.no_grad():
        off = module(shifted[:, 0]).softmax(-1).numpy()
    assert np.abs(off - expected[1, "softmax"]).max() > 1e-3
    assert np.abs(_probs(logits, list(range(5)) * 2, "softmax") - expected[10, "softmax"]).max() > 1e-3


def _shift_centre(centre: np.ndarray) -> np.ndarray:
    return np.roll(centre, 1, axis=-1)  # a crop one pixel to the left (edge column wrapped)


def _evaluate_ddp(ckpt: Path, data: Path, out: Path, *, devices: int, batch: int) -> tuple[dict, dict, str]:
    run = convnets(
        "evaluate",
        "--ckpt",
        ckpt,
        "--data",
        data,
        "--devices",
        str(devices),
        "--accelerator",
        "cpu",
        "--batch",
        str(batch),
        "--num-threads",
        "1",
        "--no-wandb",
        "--out",
        out,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads((out / "eval.json").read_text()), dict(np.load(out / "predictions.npz")), run.stdout


def _assert_same_evaluation(ddp: tuple[dict, dict], single: tuple[dict, dict], *, world_size: int, n: int) -> None:
    (result, pred), (alone, pred1) = ddp, single
    assert result["world_size"] == world_size and result["n"] == alone["n"] == n
    for key in ("top1", "top5", "top1_1crop", "top5_1crop"):
        assert result[key] == alone[key], key
    assert [r["n"] for r in result["per_class"]] == [r["n"] for r in alone["per_class"]]
    assert result["per_class"] == alone["per_class"] and result["most_confused"] == alone["most_confused"]
    assert sorted(pred["index"].tolist()) == list(range(n))  # each image exactly once
    o1, o2 = np.argsort(pred1["index"]), np.argsort(pred["index"])
    np.testing.assert_allclose(pred["probs"][o2], pred1["probs"][o1], atol=1e-5)


# 33 images over 2 ranks: rank 1 reads 16 and one padding. Batch 3: its last batch is one real
# image and the padding (a mixed batch); batch 4: its last batch is the padding alone (skipped).
@pytest.mark.parametrize("batch", [3, 4], ids=["last_batch_mixed", "last_batch_all_padding"])
def test_ddp_evaluation_over_an_uneven_split_equals_one_process(trained, evaluated, tmp_path, batch):
    """An uneven split over 2 ranks: the counts and numbers must equal one process's exactly."""
    ckpt, shards = trained
    single = evaluated(crops=10, average="softmax")
    result, pred, stdout = _evaluate_ddp(ckpt, shards / "val", tmp_path / "ddp", devices=2, batch=batch)
    _assert_same_evaluation((result, pred), single, world_size=2, n=33)
    assert [r["n"] for r in result["per_class"]] == [11, 11, 11]
    assert "images/s" in stdout  # the progress bar
    assert (tmp_path / "ddp" / "plots" / "predictions.png").exists()


def test_three_ranks_with_a_mixed_last_batch_equal_one_process(trained, tmp_path):
    """32 images over 3 ranks: 11, 11 and 10 plus one padding. Batch 3: rank 2's last batch is its last real
    image and the padding; ranks 0 and 1 end on two real images."""
    from convnets.data_pipelines.shards.sources import ImageFolderSource
    from convnets.data_pipelines.shards.writer import write_shards

    ckpt, shards = trained
    shutil.copytree(shards.parent / "tree", tmp_path / "tree")
    sorted((tmp_path / "tree" / "val").rglob("*.png"))[-1].unlink()
    write_shards(ImageFolderSource(root=tmp_path / "tree"), tmp_path / "shards", shard_size=10, seed=0)
    single = _evaluate(ckpt, tmp_path / "shards", tmp_path / "one", crops=10, average="softmax")
    result, pred, _ = _evaluate_ddp(ckpt, tmp_path / "shards" / "val", tmp_path / "ddp", devices=3, batch=3)
    _assert_same_evaluation((result, pred), single, world_size=3, n=32)
    assert [r["n"] for r in result["per_class"]] == [11, 11, 10]


def test_a_folder_with_only_the_evaluated_split_evaluates_like_the_full_one(trained, evaluated, tmp_path):
    """`--data DIR` holding only val/ (no train/ to read the classes from): the same result as with train/."""
    ckpt, shards = trained
    shutil.copytree(shards / "val", tmp_path / "valonly" / "val")
    full, pred = evaluated(crops=1, average="softmax")
    alone, pred_alone = _evaluate(ckpt, tmp_path / "valonly", tmp_path / "out", crops=1, average="softmax")
    assert alone["n"] == full["n"] == 33 and alone["top1"] == full["top1"]
    np.testing.assert_array_equal(pred_alone["index"], pred["index"])
    np.testing.assert_allclose(pred_alone["probs"], pred["probs"], atol=1e-6)


def test_mc_dropout_one_mask_without_dropout_equals_plain(trained, tmp_path):
    ckpt, shards = trained
    raw = torch.load(ckpt, weights_only=True)
    raw["hyper_parameters"]["dropout"] = 0.0  # the same weights; dropout layers now keep every unit
    off = tmp_path / "no_dropout.ckpt"
    torch.save(raw, off)
    result, _ = _evaluate(off, shards, tmp_path / "off", crops=5, mc_dropout=1)
    mc, plain = result["mc_dropout"], result["calibration"]
    assert mc["top1"] == result["top1"] and mc["top5"] == result["top5"]
    assert mc["nll"] == pytest.approx(plain["nll"], rel=1e-6) and mc["ece"] == pytest.approx(plain["ece"], abs=1e-6)
    # With the trained dropout (p = 0.2) the sampled masks change the probabilities.
    sampled, _ = _evaluate(ckpt, shards, tmp_path / "on", crops=5, mc_dropout=3)
    assert sampled["mc_dropout"]["nll"] != pytest.approx(sampled["calibration"]["nll"], rel=1e-4)
    assert (tmp_path / "on" / "plots" / "reliability.png").exists()
    assert "option 1: 3 dropout masks" in (tmp_path / "on" / "eval.md").read_text()


def test_bad_checkpoints_and_shards_are_one_line_errors(trained, tmp_path, capsys):
    from convnets.cli import main

    ckpt, shards = trained
    raw = torch.load(ckpt, weights_only=True)
    truncated, bare, other = tmp_path / "truncated.ckpt", tmp_path / "bare.pt", tmp_path / "other.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    torch.save(raw["state_dict"], bare)
    torch.save({**raw, "hyper_parameters": {**raw["hyper_parameters"], "arch": "alexnet", "norm": None}}, other)
    renamed = tmp_path / "renamed"
    shutil.copytree(shards, renamed)
    for split in ("train", "val"):
        manifest = json.loads((renamed / split / "manifest.json").read_text())
        manifest["classes"][1] = "not-" + manifest["classes"][1]
        (renamed / split / "manifest.json").write_text(json.dumps(manifest))
    cases = [
        (tmp_path / "absent.ckpt", shards, "no such checkpoint"),
        (truncated, shards, "not a PyTorch checkpoint"),
        (bare, shards, "not a Lightning checkpoint"),
        (other, shards, "do not fit model 'alexnet'"),
        (ckpt, renamed, "class 1 is 'not-"),
    ]
    for path, data, needle in cases:
        code = main(["evaluate", "--ckpt", str(path), "--data", str(data), "--no-wandb", "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err[-1].startswith("convnets: error: ") and needle in err[-1], (needle, err[-3:])
        assert not (tmp_path / "o" / "eval.json").exists()  # nothing written


def test_invariance_curves_start_at_the_plain_prediction(trained, evaluated, tmp_path):
    """At magnitude 0 the distance is 0 and P(true class) is the centre-crop evaluation's own."""
    from convnets.platform.analysis.common import AnalyzeConfig
    from convnets.platform.analysis.invariance import run_invariance

    ckpt, shards = trained
    result = run_invariance(
        AnalyzeConfig(ckpt=ckpt, data=shards, samples=12, batch=12, num_threads=1, out=tmp_path / "inv", wandb=False)
    )
    _, pred = evaluated(crops=1, average="softmax")
    first = np.argsort(pred["index"])[:12]  # the analysis samples the split's first 12 images
    p_true = np.where(pred["classes"][first] == pred["label"][first][:, None], pred["probs"][first], 0).sum(1)
    assert result["layers"] == ["conv1", "fc7"] and result["n"] == 12
    for name, curve in result["curves"].items():
        zero = curve["magnitudes"].index(1.0 if name == "scale" else 0.0)
        assert all(curve["distance"][layer][zero] < 1e-5 for layer in result["layers"]), name
        assert curve["p_true"][zero] == pytest.approx(float(p_true.mean()), abs=1e-5), name
        assert max(curve["distance"]["conv1"]) > 0.1  # the transforms do change the features
    assert (tmp_path / "inv" / "plots" / "invariance.png").exists()
    assert json.loads((tmp_path / "inv" / "invariance.json").read_text())["curves"].keys() == result["curves"].keys()


def test_layer_probes_cover_every_layer(trained, evaluated, tmp_path):
    from convnets.platform.analysis.common import AnalyzeConfig
    from convnets.platform.analysis.probes import run_layer_probes

    ckpt, shards = trained
    result = run_layer_probes(
        AnalyzeConfig(
            ckpt=ckpt,
            data=shards,
            samples=33,
            train_samples=36,
            batch=36,
            num_threads=1,
            out=tmp_path / "layers",
            wandb=False,
        )
    )
    names = [r["layer"] for r in result["layers"]]
    assert names == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    assert result["layers"][0]["features"] == 48 * 4 and result["layers"][-1]["features"] == 3
    # 36 training images in >= 512 standardized dimensions are linearly separable: a probe that fits
    # them all shows the optimiser works; test accuracy is what the table is about.
    assert all(r["train_top1"] == 1.0 for r in result["layers"][:-1])
    assert all(0.0 <= r["top1"] <= 1.0 for r in result["layers"])
    _, pred = evaluated(crops=1, average="softmax")
    assert result["model_top1"] == pytest.approx(float((pred["classes"][:, 0] == pred["label"]).mean()), abs=1e-9)
    assert (tmp_path / "layers" / "plots" / "layer_probes.png").exists()


def test_evaluation_logs_to_the_training_runs_wandb_run(trained, tmp_path, monkeypatch):
    """A checkpoint in its run folder: outputs go to RUN/eval and W&B resumes the run's stored id."""
    from convnets.platform.evaluation.evaluate import EvalConfig, evaluate

    monkeypatch.setenv("WANDB_MODE", "offline")
    ckpt, shards = trained
    run_dir = ckpt.parent.parent
    (run_dir / "wandb_id").write_text("evaltest01\n")
    try:
        result = evaluate(EvalConfig(ckpt=ckpt, data=shards, split="val", crops=1, batch=33, num_threads=1))
    finally:
        (run_dir / "wandb_id").unlink()
    assert Path(result["out"]) == run_dir / "eval" and (run_dir / "eval" / "eval.json").exists()
    assert list((run_dir / "wandb").glob("offline-run-*-evaltest01"))


def test_reports_name_classes_as_a_person_does_and_keep_ids_in_the_json(trained, tmp_path):
    """Shards that carry human class names (as `shards imagenet` writes from synset_words.txt): the report and
    the pictures say "tench", the JSON keeps n01440764 beside it."""
    ckpt, shards = trained
    named = tmp_path / "shards"
    shutil.copytree(shards, named)
    words = dict(
        line.split(" ", 1) for line in (shared_data("imagenet-meta") / "synset_words.txt").read_text().splitlines()
    )
    for split in ("train", "val"):
        path = named / split / "manifest.json"
        raw = json.loads(path.read_text())
        raw["class_names"] = [words[c].strip() for c in raw["classes"]]
        path.write_text(json.dumps(raw))
    result, _ = _evaluate(ckpt, named, tmp_path / "out")
    classes = json.loads((named / "val" / "manifest.json").read_text())["classes"]
    expected = {c: words[c].split(",")[0].strip() for c in classes}  # "tench, Tinca tinca" -> "tench"
    assert "tench" in expected.values()
    assert {r["class"]: r["name"] for r in result["per_class"]} == expected
    assert all(
        p["true_name"] == expected[p["true"]] and p["predicted_name"] == expected[p["predicted"]]
        for p in result["most_confused"]
    )
    report = (tmp_path / "out" / "eval.md").read_text()
    worst = min(result["per_class"], key=lambda r: r["top1"])
    assert f"| {worst['name']} ({worst['class']})" in report


def test_a_shard_folder_served_over_http_evaluates_like_the_local_one(trained, evaluated, tmp_path, nginx, nginx_root):
    """`evaluate --data https://...`: the split read from a real nginx through the node-local cache gives the
    same predictions as the local folder."""
    ckpt, shards = trained
    served = nginx_root / "evaluate-val"
    shutil.copytree(shards / "val", served / "val")
    local, pred = evaluated(crops=1, average="softmax")
    remote, pred_remote = _evaluate(ckpt, f"{nginx.url}/{served.name}", tmp_path / "out", crops=1, average="softmax")
    assert remote["n"] == local["n"] == 33 and remote["top1"] == local["top1"]
    np.testing.assert_array_equal(pred_remote["index"], pred["index"])
    np.testing.assert_allclose(pred_remote["probs"], pred["probs"], atol=1e-6)

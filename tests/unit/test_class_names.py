"""Class names as a person reads them: the first synonym of the manifest's human name, the id otherwise."""

from __future__ import annotations

import numpy as np

from convnets.data_pipelines.shards.format import Manifest
from convnets.platform.evaluation.report import confused_pairs, markdown_report, per_class


def manifest(classes, names=()) -> Manifest:
    return Manifest(
        split="val",
        num_samples=3,
        classes=tuple(classes),
        class_counts=(1,) * len(classes),
        flip_ok=True,
        source="test",
        seed=0,
        shard_size=10,
        shards=(),
        class_names=tuple(names),
    )


def test_display_names_are_the_first_synonym_or_the_id():
    named = manifest(["n01440764", "n01443537"], ["tench, Tinca tinca", "goldfish, Carassius auratus"])
    assert named.display_names == ("tench", "goldfish")
    assert manifest(["n01440764", "n01443537"]).display_names == ("n01440764", "n01443537")  # no names: the ids
    assert manifest(["7"], ["seven"]).display_names == ("seven",)


def test_per_class_and_confused_pairs_carry_ids_and_names():
    confusion = np.array([[5, 3, 0], [1, 4, 0], [0, 0, 2]])
    ids, names = ["a1", "b2", "c3"], ["apple", "banana", "cherry"]
    rows = per_class(confusion, ids, names)
    assert [(r["class"], r["name"], r["n"]) for r in rows] == [
        ("a1", "apple", 8),
        ("b2", "banana", 5),
        ("c3", "cherry", 2),
    ]
    assert rows[0]["top1"] == 5 / 8
    pairs = confused_pairs(confusion, ids, names)
    assert pairs == [
        {"true": "a1", "true_name": "apple", "predicted": "b2", "predicted_name": "banana", "count": 3},
        {"true": "b2", "true_name": "banana", "predicted": "a1", "predicted_name": "apple", "count": 1},
    ]
    result = {
        "ckpt": "x.ckpt",
        "arch": "lenet5",
        "split": "val",
        "n": 15,
        "images_per_s": 1.0,
        "world_size": 1,
        "crops": 10,
        "average": "probs",
        "top1": 0.7,
        "top5": 1.0,
        "top1_1crop": 0.7,
        "top5_1crop": 1.0,
        "calibration": {"nll": 1.0, "ece": 0.1},
        "per_class": rows,
        "most_confused": pairs,
    }
    report = markdown_report(result)
    assert "| apple (a1) " in report and "| banana (b2) " in report

"""`bench epoch`'s projection against hand arithmetic, and its table with what a CPU run lacks."""

from __future__ import annotations

import pytest

from convnets.platform.bench.epoch import format_epoch_table, project_recipe


def test_projection_is_epochs_times_epoch_and_validation_plus_startup():
    # By hand: 1,281,167 / 32,000 = 40.03646875 s per epoch; 50,000 / 50,000 = 1 s per validation;
    # 90 x 41.03646875 = 3,693.2821875 s; + 60 s start-up = 3,753.2821875 s = 62.554703125 min.
    p = project_recipe(
        epochs=90,
        train_images=1_281_167,
        train_images_per_s=32_000.0,
        val_images=50_000,
        val_images_per_s=50_000.0,
        startup_s=60.0,
    )
    assert p["epoch_s"] == pytest.approx(40.03646875)
    assert p["val_s"] == pytest.approx(1.0)
    assert p["total_s"] == pytest.approx(3753.2821875)
    assert p["total_min"] == pytest.approx(62.554703125)
    assert p["validation_included"] is True


def test_eight_gpus_divide_training_and_validation_but_not_the_startup():
    # By hand: 3,693.2821875 / 8 = 461.66027344 s; + 60 s = 521.66027344 s.
    p = project_recipe(
        epochs=90,
        train_images=1_281_167,
        train_images_per_s=32_000.0,
        val_images=50_000,
        val_images_per_s=50_000.0,
        startup_s=60.0,
        gpus=8,
    )
    assert p["total_s"] == pytest.approx(521.660273438)
    assert p["epoch_s"] == pytest.approx(40.03646875 / 8)


def test_without_a_validation_rate_validation_is_left_out_and_says_so():
    # By hand: 10 x (1,000 / 100) + 5 = 105 s.
    p = project_recipe(
        epochs=10, train_images=1000, train_images_per_s=100.0, val_images=500, val_images_per_s=None, startup_s=5.0
    )
    assert p["total_s"] == pytest.approx(105.0) and p["val_s"] == 0.0 and p["validation_included"] is False


def _result(**over) -> dict:
    span = {"seconds": 1.0, "images": 10, "images_per_s": 10.0}
    projection = project_recipe(
        epochs=6, train_images=100, train_images_per_s=10.0, val_images=50, val_images_per_s=None, startup_s=2.0
    )
    return {
        "arch": "lenet5",
        "batch": 8,
        "precision": "32-true",
        "compile": False,
        "space_to_depth": False,
        "train_images": 96,
        "wall_s": 3.0,
        "epoch_images_per_s": 10.0,
        "data_wait_fraction": 0.05,
        "mfu": None,
        "gpu_utilization": None,
        "decoder_utilization": None,
        "jpeg_utilization": None,
        "test": None,
        "phases": {
            "startup": span,
            "steady": {**span, "block_ci95": [9.0, 11.0]},
            "tail": span,
            "validation": {"seconds": 0.0, "images": 0, "images_per_s": None},
        },
        "projection": {"recipe": "lenet5_digits", **projection, "gpus_8": {**projection, "total_min": 0.1}},
        **over,
    }


def test_table_says_n_a_where_a_cpu_has_no_figure_and_not_measured_for_missing_validation():
    text = format_epoch_table([_result()])
    runs, projection = text.split("\n\n")
    row = runs.splitlines()[2]
    assert row.count("n/a") == 6  # val img/s, MFU, GPU, decoder and JPEG utilization, 10-crop img/s
    assert "10 [9, 11]" in row and "5%" in row
    # By hand: 2 s + 6 epochs x 100 images / 10 images/s = 62 s = 1.0 min.
    assert "not measured" in projection and "| 1.0 min |" in projection and "0.1 min" in projection


def test_bench_epoch_parser_takes_fit_flags_after_the_separator():
    import argparse

    from convnets.platform.bench.cli import add_bench_subcommands

    parser = argparse.ArgumentParser()
    add_bench_subcommands(parser.add_subparsers(dest="bench_command"))
    args = parser.parse_args(["epoch", "--shards", "S", "--batch", "8", "--", "--data.normalize_on_device", "true"])
    assert args.arch == "alexnet" and args.recipe == "alexnet2012_imagenet" and args.batch == 8
    assert args.fit_args == ["--", "--data.normalize_on_device", "true"]


def test_fit_flags_start_from_the_recipe_and_end_with_the_users():
    import argparse
    from pathlib import Path

    from convnets.platform.bench.cli import add_bench_subcommands
    from convnets.platform.bench.epoch import fit_argv

    parser = argparse.ArgumentParser()
    add_bench_subcommands(parser.add_subparsers(dest="bench_command"))
    args = parser.parse_args(["epoch", "--shards", "S", "--device", "cpu", "--compile", "--", "--data.seed", "3"])
    argv = fit_argv(args, Path("runs/x"))
    assert argv[:2] == ["--config", "alexnet2012_imagenet"] and argv[-2:] == ["--data.seed", "3"]
    flags = dict(zip(argv[::2], argv[1::2]))
    assert flags["--trainer.accelerator"] == "cpu" and flags["--model.perf.compile"] == "true"
    assert flags["--trainer.limit_val_batches"] == "0" and "--data.batch_size" not in flags  # the recipe's batch

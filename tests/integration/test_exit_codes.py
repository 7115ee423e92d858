"""Exit codes a user can rely on: 2 + one line + nothing written for bad configs, 1 + traceback for run failures.

In-process through convnets.cli.main (one Python start for all cases); single-process runs only.
"""

from __future__ import annotations

import pytest

from convnets.cli import main
from tests.integration.cli_helpers import last_line

pytestmark = [pytest.mark.integration, pytest.mark.dali]


@pytest.fixture
def run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("CONVNETS_RUN_NAME", raising=False)

    def _run(data_dir, *extra):
        code = main(
            [
                "fit",
                "--config",
                "lenet5_digits",
                "--data.data_dir",
                str(data_dir),
                "--runs_dir",
                str(tmp_path / "runs"),
                "--run_name",
                "r",
                "--trainer.max_epochs",
                "1",
                "--trainer.enable_progress_bar",
                "false",
                *map(str, extra),
            ]
        )
        return code, capsys.readouterr().err

    return _run


BAD_CONFIGS = {
    "unknown key": (["--data.bogus", "3"], "--data.bogus"),
    "wrong type": (["--data.batch_size", "abc"], "data.batch_size"),
    "unknown model": (["--model.arch", "lenet6"], "valid models: alexnet"),
    "unknown preset": (["--config", "alexnet_2013"], "packaged recipe"),
    "image too small for the model": (["--model.arch", "alexnet", "--model.image_size", "32"], "model.image_size=32"),
    "zero batch": (["--data.batch_size", "0"], "data.batch_size=0"),
    "head disagrees with the data": (["--model.num_classes", "5"], "the data has 10 classes"),
    "out-of-range hyper-parameter": (["--model.optim.lr", "-1"], "model.optim.lr=-1.0 is out of range"),
    "bad trainer value": (["--trainer.devices", "0"], "devices"),
    "missing checkpoint": (["--ckpt_path", "/nonexistent/last.ckpt"], "no such file"),
    "not a checkpoint": (["--ckpt_path", "/etc/hostname"], "not a PyTorch checkpoint"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_is_one_line_exit_2_and_writes_nothing(case, run, digits_shards, tmp_path):
    extra, needle = BAD_CONFIGS[case]
    code, err = run(digits_shards, *extra)
    assert code == 2, err[-2000:]
    line = last_line(err)
    assert line.startswith("convnets: error: ") and needle in line, err[-2000:]
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # no run folder, no W&B run, no config written


def test_missing_data_folder_leaves_no_run_folder_nor_wandb_run(run, tmp_path):
    code, err = run(tmp_path / "nowhere")
    assert code == 2 and str(tmp_path / "nowhere") in last_line(err)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "callback, summary",
    [
        ("ShapeMismatch", "ValueError: Expected input batch_size (2) to match target batch_size (3)"),
        ("OutOfMemory", "out of memory: lower --data.batch_size"),
    ],
)
def test_failures_during_the_run_exit_1_with_traceback_and_summary(callback, summary, run, digits_shards):
    code, err = run(
        digits_shards,
        "--trainer.logger",
        "false",
        "--trainer.callbacks+",
        f"tests.integration.failing_callbacks.{callback}",
    )
    assert code == 1, err[-2000:]
    assert "Traceback (most recent call last)" in err
    line = last_line(err)
    assert line.startswith("convnets: failed: ") and summary in line, line

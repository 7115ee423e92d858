"""Secrets in the environment never reach anything a run writes or prints (W&B key included)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.dali, pytest.mark.slow]
FAKE_KEY = "local-f4k3c0nvn375k3y" + "0" * 20  # W&B keys are 40 characters; this one is recognizably fake
SECRETS = {
    "WANDB_API_KEY": FAKE_KEY,
    "AWS_SECRET_ACCESS_KEY": "AKIAFAKECONVNETSSECRET99",
    "HF_TOKEN": "hf_fakeconvnetstokenxyz",
}


def test_a_real_run_writes_no_secret_anywhere(digits_shards, tmp_path):
    env = {**os.environ, **SECRETS, "WANDB_MODE": "offline", "WANDB_SILENT": "false"}
    env.pop("CONVNETS_RUN_NAME", None)
    runs = tmp_path / "runs"
    common = [
        "--config",
        "lenet5_digits",
        "--data.data_dir",
        str(digits_shards),
        "--runs_dir",
        str(runs),
        "--run_name",
        "r",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.limit_train_batches",
        "3",
        "--trainer.limit_val_batches",
        "2",
    ]
    outputs = []
    for args in (["fit", *common, "--trainer.max_epochs", "1"],):  # fit writes every kind of file a run has
        result = subprocess.run(
            [sys.executable, "-m", "convnets.cli", *args], cwd=tmp_path, env=env, capture_output=True, timeout=600
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
        outputs += [result.stdout, result.stderr]
    files = [p for p in runs.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    # the run really wrote what we grep: checkpoints, config, run record, W&B offline run files
    assert {"last.ckpt", "config.yaml", "run_info.json", "metrics.json"} <= names
    assert any(p.suffix == ".wandb" for p in files)
    for name, value in SECRETS.items():
        needle = value.encode()
        leaks = [str(p.relative_to(runs)) for p in files if needle in p.read_bytes()]
        assert not leaks, f"{name} found in {leaks}"
        assert not any(needle in out for out in outputs), f"{name} printed by the command"
    # the run record keeps what reproduces the run (argv, cwd, config), never the environment
    assert b"WANDB_API_KEY" not in (runs / "r" / "run_info.json").read_bytes()


def test_a_dry_run_submission_prints_and_writes_no_secret(digits_shards, tmp_path, monkeypatch, capfd):
    from convnets.cli import _parser, main

    commands = next(a for a in _parser()._actions if a.dest == "command").choices
    if "submit" not in commands:
        pytest.skip("`convnets submit` is not in this tree yet (the Slurm branch adds it)")
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "submit",
            "--config",
            "lenet5_digits",
            "--data.data_dir",
            str(digits_shards),
            "--runs_dir",
            str(tmp_path / "runs"),
            "--run_name",
            "r",
            "--slurm.cluster",
            "local",
            "--dry-run",
        ]
    )
    out = capfd.readouterr()
    assert code == 0, out.err[-3000:]
    assert "#SBATCH" in out.out  # the generated script is what we grep
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    for name, value in SECRETS.items():
        assert value not in out.out + out.err, f"{name} in the printed sbatch script"
        assert not [p for p in written if value.encode() in p.read_bytes()], f"{name} written by the submission"

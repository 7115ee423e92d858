"""`convnets submit --dry-run` and `convnets slurm template` on a machine without Slurm: they print the
script and submit or write nothing. Slurm may be installed here: the commands run with a PATH that
holds no Slurm command (checked), as on a laptop."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SLURM_COMMANDS = ("sbatch", "srun", "squeue", "sacct", "scontrol", "scancel", "slurmctld")


@pytest.fixture()
def no_slurm_env(tmp_path) -> dict:
    """The environment with PATH = a folder of links to a few ordinary tools, none of Slurm's."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "sh", "env", "git", "uname", "ls"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    assert not [c for c in SLURM_COMMANDS if shutil.which(c, path=str(bin_dir))]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_", "CONVNETS_RUN_NAME"))}
    return {**env, "PATH": str(bin_dir), "WANDB_MODE": "offline"}


def _convnets(env: dict, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "convnets.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_dry_run_and_template_print_the_script_without_slurm(no_slurm_env, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    fit = ["--config", "lenet5_digits", "--data.data_dir", str(tmp_path / "shards-on-the-cluster"), "--run_name", "r"]
    dry = _convnets(no_slurm_env, work, "submit", *fit, "--slurm.cluster", "local", "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    lines = dry.stdout.splitlines()
    assert "#SBATCH --requeue" in lines and "#SBATCH --signal=USR2@90" in lines and "#SBATCH --job-name=r" in lines
    srun = shlex.split(next(line for line in lines if line.startswith("srun ")))
    assert "--kill-on-bad-exit=1" in srun and srun[-1] == str(work / "runs" / "r" / "slurm")

    sweep = tmp_path / "lrs.yaml"
    sweep.write_text("- {name: a, model.optim.lr: 0.01}\n- {name: b, model.optim.lr: 0.05}\n")
    array = _convnets(
        no_slurm_env, work, "submit", *fit[:4], "--sweep", str(sweep), "--slurm.cluster", "local", "--dry-run"
    )
    assert array.returncode == 0, array.stderr[-3000:]
    assert "#SBATCH --array=0-1%2" in array.stdout.splitlines() and "# b: convnets fit" in array.stdout

    made = _convnets(no_slurm_env, work, "slurm", "template", "--slurm.cluster", "local", "--", *fit)
    assert made.returncode == 0, made.stderr[-3000:]
    assert subprocess.run(["bash", "-n"], input=made.stdout, text=True).returncode == 0
    assert made.stdout.startswith("#!/bin/bash\n") and "\nsrun --kill-on-bad-exit=1 convnets fit " in made.stdout
    assert _files(work) == []  # printed, nothing submitted, nothing written


def test_template_without_a_run_name_is_one_line(no_slurm_env, tmp_path):
    made = _convnets(
        no_slurm_env, tmp_path, "slurm", "template", "--slurm.cluster", "local", "--", "--config", "lenet5_digits"
    )
    assert made.returncode == 2 and made.stdout == ""
    assert made.stderr.strip().splitlines() == [
        (
            "convnets: error: --run_name NAME is required (after `--`): a requeued job finds its checkpoint "
            "(runs/NAME/checkpoints/last.ckpt) and its W&B run by that name"
        )
    ]

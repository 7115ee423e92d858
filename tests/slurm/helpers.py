"""Shared by the slurm tests: `convnets` with the test cluster's environment, and the tiny recipe."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.integration.cli_helpers import REPO

CONFIG = REPO / "configs" / "lenet5_digits.yaml"


def convnets_env(cluster: dict, **extra: str) -> dict:
    env = {**cluster["env"], "WANDB_MODE": "offline", "WANDB_SILENT": "true", **extra}
    env.pop("CONVNETS_RUN_NAME", None)
    return env


def run_convnets(
    cluster: dict, *args: object, timeout: int = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "convnets.cli", *map(str, args)],
        env=convnets_env(cluster),
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def fit_flags(data: Path, runs: Path, name: str, *, epochs: int = 2) -> list[str]:
    """LeNet-5 on the real digits: ~45 steps an epoch at 2 ranks x 16 (seconds on 2 CPU cores)."""
    return [
        "--config",
        str(CONFIG),
        "--data.data_dir",
        str(data),
        "--runs_dir",
        str(runs),
        "--run_name",
        name,
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.enable_progress_bar",
        "false",
    ]


def train_count(data: Path) -> int:
    return int(json.loads((data / "train" / "manifest.json").read_text())["num_samples"])


def wandb_run_ids(run_dir: Path) -> set[str]:
    """The run ids W&B wrote: each process's offline folder holds run-<id>.wandb (its transaction log)."""
    return {p.stem.removeprefix("run-") for p in (run_dir / "wandb").glob("offline-run-*/run-*.wandb")}


def squeue_empty(cluster: dict) -> bool:
    out = subprocess.run(["squeue", "--noheader"], env=cluster["env"], capture_output=True, text=True, timeout=30)
    return out.returncode == 0 and not out.stdout.strip()


def wait_for_file(path: Path, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout:.0f} s"
        time.sleep(0.2)


def release_requeued(env: dict, job_id: str, *, timeout: float = 120) -> None:
    """Slurm holds a requeued job for ~2 minutes (reason BeginTime); an admin may start it now, as here."""
    deadline = time.monotonic() + timeout
    reason = []
    while time.monotonic() < deadline:
        reason = subprocess.run(
            ["squeue", "-h", "-o", "%T %r", "-j", job_id], env=env, capture_output=True, text=True, timeout=30
        ).stdout.split()
        if reason[:2] == ["PENDING", "BeginTime"]:
            # slurmd refuses a job credential issued in the second its previous instance's was revoked
            # ("Job credential revoked": the job FAILS): start it in a later second than the requeue.
            time.sleep(1.2)
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=env, check=True, timeout=30)
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} was not requeued within {timeout:.0f} s (state: {' '.join(reason)})")


PREEMPT_BATCH = 4  # per rank, 2 ranks: ~180 steps an epoch, so a signal sent after the first one lands mid-epoch


def start_reference_fit(cluster: dict, data: Path, runs: Path):
    """The uninterrupted run a preempted one-epoch job is compared with: the same fit, 2 gloo ranks, outside
    Slurm, batch PREEMPT_BATCH, no logger. Started in the background (the jobs it is compared with spend most
    of their time waiting for a signal or a requeue); the returned function waits for it and loads its last.ckpt."""
    flags = [*fit_flags(data, runs, "reference", epochs=1), "--data.batch_size", PREEMPT_BATCH, "--trainer.devices", 2]
    flags += ["--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.logger", "false"]
    log = open(runs / "reference.log", "w")  # a file, not a pipe: nobody reads it while it runs
    proc = subprocess.Popen(
        [sys.executable, "-m", "convnets.cli", "fit", *map(str, flags)],
        env=convnets_env(cluster),
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    loaded: list[dict] = []

    def result() -> dict:
        if not loaded:
            try:
                proc.wait(timeout=400)
            finally:
                proc.kill()
                log.close()
            assert proc.returncode == 0, (runs / "reference.log").read_text()[-3000:]
            ckpt = runs / "reference" / "checkpoints" / "last.ckpt"
            loaded.append(torch.load(ckpt, map_location="cpu", weights_only=False))
        return loaded[0]

    return result


def assert_same_weights(run_dir: Path, expected: dict) -> None:
    """The run's last.ckpt holds the uninterrupted run's step count and, bit for bit, its weights."""
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == expected["global_step"]
    differ = [k for k in expected["state_dict"] if not torch.equal(final["state_dict"][k], expected["state_dict"][k])]
    assert not differ, f"final weights differ from an uninterrupted run with the same seed: {differ}"

"""Stock Slurm preemption on the suite's one-node cluster: `scontrol requeue` (SIGTERM; Slurm requeues the job
itself), the time-limit warning during validation (USR2; the platform requeues), two requeues in a row, and a
plain `scancel` (the user's own: saved, not requeued). Each ends as an uninterrupted run of the same command."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from tests.slurm.conftest import job_state, wait_for_jobs
from tests.slurm.helpers import (
    assert_same_weights,
    convnets_env,
    fit_flags,
    release_requeued,
    run_convnets,
    train_count,
    wait_for_file,
)
from tests.wandb_history import history

pytestmark = [pytest.mark.slurm, pytest.mark.integration, pytest.mark.slow, pytest.mark.dali]
BATCH = 8  # per rank, 2 ranks: ~90 steps an epoch
CHECK_EVERY = 2  # --slurm.preempt_check_steps: a signal is acted on within this many steps
LOG_EVERY = 25


def _submit(cluster, flags, *extra) -> str:
    submitted = run_convnets(
        cluster,
        "submit",
        *flags,
        "--slurm.cluster",
        "local",
        "--slurm.preempt_check_steps",
        CHECK_EVERY,
        *extra,
        timeout=120,
    )
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    return re.search(r"submitted job (\d+)", submitted.stdout).group(1)


def _start_reference(cluster, data, runs, name: str, epochs: int) -> subprocess.Popen:
    """The same fit, uninterrupted, as 2 local DDP processes (its W&B run is the reference for the rows),
    run beside the Slurm job, which spends much of its time waiting for signals and requeues."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "convnets.cli",
            "fit",
            *fit_flags(data, runs, name, epochs=epochs),
            "--data.batch_size",
            str(BATCH),
            "--trainer.log_every_n_steps",
            str(LOG_EVERY),
            "--trainer.devices",
            "2",
            "--trainer.strategy",
            "ddp",
            "--trainer.accelerator",
            "cpu",
        ],
        env=convnets_env(cluster),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _reference_result(proc: subprocess.Popen, run_dir) -> dict:
    try:
        _, stderr = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def test_scontrol_requeue_then_usr2_in_validation_end_as_one_uninterrupted_run(
    slurm_cluster, digits_shards, tmp_path, capsys
):
    env, run_dir, marks = slurm_cluster["env"], tmp_path / "twice", tmp_path / "marks"
    marks.mkdir()
    pause_step = 60  # after W&B rows at steps 24 and 49: they must survive SIGTERM
    markers = [
        "--trainer.callbacks+=tests.slurm.probes.Markers",
        "--trainer.callbacks.folder",
        str(marks),
        "--trainer.callbacks.pause_step",
        str(pause_step),
        "--trainer.callbacks.pause_s",
        "3",
        "--trainer.callbacks.val_epoch",
        "0",
        "--trainer.callbacks.val_restart",
        "1",
        "--trainer.callbacks.val_delay_s",
        "0.5",
    ]
    flags = [
        *fit_flags(digits_shards, tmp_path, "twice", epochs=2),
        "--data.batch_size",
        str(BATCH),
        "--trainer.log_every_n_steps",
        str(LOG_EVERY),
    ]
    job_id = _submit(slurm_cluster, [*flags, *markers])

    # 1. `scontrol requeue` mid-epoch 0: SIGCONT + SIGTERM to every task, SIGKILL after KillWait (10 s here).
    wait_for_file(marks / f"step-{pause_step}", timeout=240)
    subprocess.run(["scontrol", "requeue", job_id], env=env, check=True, timeout=30)
    release_requeued(env, job_id)
    # Only now: the save after SIGTERM must fit in KillWait, on CPUs the reference would share.
    reference_run = _start_reference(slurm_cluster, digits_shards, tmp_path, "reference", epochs=2)
    # 2. The time-limit warning while the requeued job validates epoch 0.
    wait_for_file(marks / "val-0-1", timeout=240)
    subprocess.run(["scancel", "--signal=USR2", job_id], env=env, check=True, timeout=30)
    release_requeued(env, job_id)
    wait_for_jobs(env, [job_id], timeout=400)
    assert job_state(env, job_id) == "COMPLETED"

    record = json.loads((run_dir / "slurm.json").read_text())
    assert [e["event"] for e in record["events"]] == [
        "start",
        "requeued by Slurm",
        "resume after requeue 1",
        "resumed",
        "requeue",
        "resume after requeue 2",
        "resumed",
        "finished",
    ]
    assert record["slurm_requeues"] == 1 and record["requeues"] == 1  # only the platform's counts against the limit
    from convnets.cli import main

    capsys.readouterr()
    assert main(["status", str(run_dir), "--json"]) == 0  # what `convnets status` shows of them
    shown = json.loads(capsys.readouterr().out)
    assert (shown["state"], shown["requeues"], shown["slurm_requeues"], shown["dead_rank"]) == ("COMPLETED", 1, 1, None)
    first, second = record["events"][1], record["events"][4]
    assert first["signal"] == "SIGTERM" and second["signal"] == "SIGUSR2"
    assert [e["step"] for e in record["events"] if e["event"] == "resumed"] == [
        first["saved_step"],
        second["saved_step"],
    ]
    steps_per_epoch = -(-train_count(digits_shards) // (2 * BATCH))  # the last global batch is padded
    assert pause_step <= first["saved_step"] < steps_per_epoch - 1  # mid-epoch
    assert second["saved_step"] == steps_per_epoch  # epoch 0 trained, its validation stopped
    rank0 = (run_dir / "slurm" / f"{job_id}_0_log.err").read_text()
    signalled = int(
        re.search(rf"signal received after step (\d+): saved .* at step {first['saved_step']}", rank0).group(1)
    )
    print(
        f"\nscontrol requeue: signal after step {signalled}, saved at step {first['saved_step']} "
        f"({first['saved_step'] - signalled} steps later; preempt_check_steps {CHECK_EVERY}); "
        f"the requeued job resumed at step {first['saved_step']}: 0 steps trained twice"
    )
    assert first["saved_step"] - signalled <= CHECK_EVERY
    assert not (marks / "val-0-2").exists()  # the USR2 job never finished that validation: it was requeued

    assert_same_weights(run_dir, _reference_result(reference_run, tmp_path / "reference"))

    # One history: metrics.json and W&B hold each epoch once, W&B's steps only go forward, and the rows the
    # uninterrupted run logged are there (below: the one row a SIGTERM may catch in flight).
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [0, 1]
    assert [h["epoch"] for h in metrics["val_history"]] == [0, 1]
    runs = history(run_dir)
    rows = [row for rows in runs for row in rows]
    steps = [row["_step"] for row in rows]
    assert len(runs) >= 2 and steps == sorted(steps) and len(set(steps)) == len(steps)
    reference = [row for rows in history(tmp_path / "reference") for row in rows]

    # Train rows at the same steps with the same losses; each epoch's validation once, with the same numbers
    # (a validation rerun after a requeue logs one step later than the uninterrupted run did).
    def train(rs):
        return [(r["_step"], r["train_loss"]) for r in rs if "train_loss" in r]

    def val(rs):
        return [(r["epoch"], r["val_top1"], r["val_loss"]) for r in rs if "val_top1" in r]

    # Slurm's SIGTERM also ends W&B's own service process at once: a row it had not written yet is lost (the
    # documented limit). That can only be the last row logged before the signal, so at most the one row in the
    # LOG_EVERY steps before the save may be missing; every other row must be there, with the same loss.
    in_flight = {s for s, _ in train(reference) if first["saved_step"] - LOG_EVERY < s <= first["saved_step"]}
    assert set(train(rows)) <= set(train(reference))
    assert [r for r in train(reference) if r[0] not in in_flight] == [r for r in train(rows) if r[0] not in in_flight]
    assert val(rows) == val(reference)


def test_scancel_saves_and_does_not_requeue(slurm_cluster, digits_shards, tmp_path):
    env, run_dir = slurm_cluster["env"], tmp_path / "cancelled"
    job_id = _submit(
        slurm_cluster, [*fit_flags(digits_shards, tmp_path, "cancelled", epochs=1), "--data.batch_size", "2"]
    )
    wait_for_file(run_dir / "plots" / "train_samples.png", timeout=240)
    subprocess.run(["scancel", job_id], env=env, check=True, timeout=30)
    wait_for_jobs(env, [job_id], timeout=120)
    assert job_state(env, job_id) == "CANCELLED"  # not PENDING: no requeue

    record = json.loads((run_dir / "slurm.json").read_text())
    assert [e["event"] for e in record["events"]] == ["start", "cancelled"]
    assert record.get("requeues", 0) == 0 and "slurm_requeues" not in record
    saved = record["events"][1]["saved_step"]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == saved > 0
    rank0 = (run_dir / "slurm" / f"{job_id}_0_log.err").read_text()
    assert re.search(
        rf"job {job_id} cancelled \(SIGTERM; not requeued\): saved last.ckpt at step {saved}; "
        rf"to resume, submit the same command again \(same --run_name cancelled\)",
        rank0,
    )

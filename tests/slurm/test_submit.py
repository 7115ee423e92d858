"""`convnets submit` against the real test cluster: a 2-rank DDP fit, preemption + requeue, bad requests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.integration.cli_helpers import REPO
from tests.slurm.conftest import job_state, wait_for_jobs
from tests.slurm.helpers import (
    CONFIG,
    convnets_env,
    fit_flags,
    release_requeued,
    run_convnets,
    squeue_empty,
    train_count,
    wait_for_file,
    wandb_run_ids,
)

pytestmark = [pytest.mark.slurm, pytest.mark.integration, pytest.mark.slow, pytest.mark.dali]
BATCH = 16  # lenet5_digits.yaml's per-rank batch


def _job_id(stdout: str) -> str:
    match = re.search(r"submitted job (\d+)", stdout)
    assert match, stdout
    return match.group(1)


def test_two_task_ddp_fit_through_submit(slurm_cluster, digits_shards, tmp_path, capsys):
    name = "odd name's $(touch pwned)"  # reaches sbatch and srun: must arrive quoted
    result = run_convnets(
        slurm_cluster,
        "submit",
        *fit_flags(digits_shards, tmp_path, name),
        "--slurm.cluster",
        "local",
        "--wait",
        timeout=400,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    job_id = _job_id(result.stdout)
    wait_for_jobs(slurm_cluster["env"], [job_id], timeout=60)  # --wait returns once the result is written
    assert job_state(slurm_cluster["env"], job_id) == "COMPLETED"
    assert not (tmp_path / "pwned").exists()
    run_dir = tmp_path / name
    logs = {p.name: p.read_text() for p in (run_dir / "slurm").glob(f"{job_id}_*_log.err")}
    assert sorted(logs) == [f"{job_id}_0_log.err", f"{job_id}_1_log.err"]  # one stderr per rank
    assert "MEMBER: 1/2" in logs[f"{job_id}_0_log.err"] and "MEMBER: 2/2" in logs[f"{job_id}_1_log.err"]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    per_epoch = train_count(digits_shards) / (2 * BATCH)  # 2 ranks share each epoch (1 rank: twice the steps)
    assert int(per_epoch) * 2 <= ckpt["global_step"] <= -(-train_count(digits_shards) // (2 * BATCH)) * 2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["history"]) == 2 and metrics["val_top1"] > 0.5, metrics  # chance: 0.1
    assert f"job:        {job_id} COMPLETED" in result.stdout  # the status printed by --wait
    assert wandb_run_ids(run_dir) == {(run_dir / "wandb_id").read_text().strip()}

    from convnets.cli import main

    assert main(["status", str(run_dir), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["job_id"], status["state"], status["requeues"]) == (job_id, "COMPLETED", 0)
    assert status["metrics"]["val_top1"] == pytest.approx(metrics["val_top1"]) and len(status["logs"]) == 4


def test_sweep_file_runs_as_an_array_with_a_summary(slurm_cluster, digits_shards, tmp_path):
    sweep = tmp_path / "lrs.yaml"
    sweep.write_text(
        "- {name: lr-a, model.optim.lr: 0.01}\n- {name: lr-b, model.optim.lr: 0.05}\n"
        "- {name: lr-c, model.optim.lr: 0.1}\n"
    )
    flags = [
        f for f in fit_flags(digits_shards, tmp_path / "runs", "unused", epochs=1) if f not in ("--run_name", "unused")
    ]
    result = run_convnets(
        slurm_cluster,
        "submit",
        *flags,
        "--trainer.limit_train_batches",
        "5",
        "--sweep",
        sweep,
        "--slurm.cluster",
        "local",
        "--slurm.tasks_per_node",
        "1",
        "--wait",
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "runs" / "sweep.json").read_text())
    assert [r["run"] for r in rows] == ["lr-a", "lr-b", "lr-c"]
    array_id = rows[0]["job_id"].split("_")[0]
    assert [r["job_id"] for r in rows] == [f"{array_id}_{i}" for i in range(3)]  # one array, three tasks
    for row, lr in zip(rows, (0.01, 0.05, 0.1)):
        run_dir = tmp_path / "runs" / row["run"]
        ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        assert ckpt["hyper_parameters"]["optim"]["lr"] == lr and ckpt["global_step"] == 5  # its own overrides
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert row["state"] == "COMPLETED" and row["val_top1"] == pytest.approx(metrics["val_top1"])
    assert (tmp_path / "runs" / "sweep.md").read_text().strip() in result.stdout


@pytest.mark.parametrize("case", ["gpus", "devices", "config"])
def test_bad_requests_are_one_line_and_queue_nothing(slurm_cluster, digits_shards, tmp_path, case, monkeypatch, capfd):
    flags = fit_flags(digits_shards, tmp_path, "bad", epochs=1)
    extra, needle = {
        "gpus": (
            ["--trainer.accelerator", "gpu", "--slurm.gpus_per_node", "4", "--slurm.tasks_per_node", "4"],
            "sbatch refused",
        ),  # the test node has no GPU: sbatch itself refuses
        "devices": (["--trainer.devices", "3"], "trainer.devices 3 contradicts"),
        "config": (["--data.batch_size", "many"], "data.batch_size"),
    }[case]
    from convnets.cli import main  # in process: the refusal comes before any training import matters

    monkeypatch.chdir(tmp_path)
    code = main(["submit", *flags, *extra, "--slurm.cluster", "local"])
    stderr = capfd.readouterr().err
    assert code == 2, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convnets: error:") and needle in lines[0], stderr
    assert squeue_empty(slurm_cluster)
    assert not (tmp_path / "bad").exists()  # nothing written either


def _ablation(cluster: dict, data: Path, out: Path, *extra: object) -> list[object]:
    """`convnets sweep ablation` of the full model, 5 steps, its one variant as a 1-task Slurm job."""
    return [
        sys.executable,
        "-m",
        "convnets.cli",
        "sweep",
        "ablation",
        "--config",
        CONFIG,
        "--variants",
        "full",
        "--epochs",
        "1",
        "--out",
        out,
        "--slurm.cluster",
        "local",
        "--slurm.tasks_per_node",
        "1",
        "--",
        "--data.data_dir",
        data,
        "--trainer.limit_train_batches",
        "5",
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


@pytest.fixture(scope="module")
def uninterrupted_ablation(slurm_cluster, digits_shards, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("uninterrupted") / "ablation"
    result = subprocess.run(
        list(map(str, _ablation(slurm_cluster, digits_shards, out))),
        env=convnets_env(slurm_cluster),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_a_variant_warned_during_its_test_requeues_and_tests_after_the_requeue(
    slurm_cluster, digits_shards, tmp_path, request
):
    """USR2 while the variant's test runs (its fit done): the job stops the test and requeues; the requeued
    job's fit finds its epochs done and the test runs to the end, with an uninterrupted variant's numbers."""
    env, out, marks = slurm_cluster["env"], tmp_path / "ablation", tmp_path / "marks"
    marks.mkdir()
    probe = ["--trainer.callbacks+=tests.slurm.probes.TestPhase", "--trainer.callbacks.folder", marks]
    probe += ["--trainer.callbacks.delay_s", "1"]
    with open(tmp_path / "stdout", "w") as stdout, open(tmp_path / "stderr", "w") as stderr:  # not pipes: not read
        sweep = subprocess.Popen(  # while the fixture below runs
            list(map(str, _ablation(slurm_cluster, digits_shards, out, *probe))),
            env=convnets_env(slurm_cluster),
            cwd=REPO,
            stdout=stdout,
            stderr=stderr,
        )
    try:
        wait_for_file(marks / "test-start-0", timeout=240)
        job_id = json.loads((out / "full" / "slurm.json").read_text())["job_id"]
        subprocess.run(["scancel", "--signal=USR2", job_id], env=env, check=True, timeout=30)
        release_requeued(env, job_id)
        # The uninterrupted variant (shared with the next test) trains now, beside the requeued job: 1 task each.
        reference_out, _ = request.getfixturevalue("uninterrupted_ablation")
        sweep.wait(timeout=400)
    finally:
        sweep.kill()
    stdout, stderr = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert sweep.returncode == 0, stderr[-3000:]
    wait_for_jobs(env, [job_id], timeout=60)
    control = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True).stdout
    assert job_state(env, job_id) == "COMPLETED" and "Restarts=1" in control, control

    record = json.loads((out / "full" / "slurm.json").read_text())
    assert [e["event"] for e in record["events"]] == ["start", "requeue", "resume after requeue 1", "finished"]
    assert record["requeues"] == 1 and record["events"][1]["saved_step"] is None  # the fit was already saved
    assert sorted(p.name for p in marks.iterdir()) == ["test-end-1", "test-start-0", "test-start-1"]
    rank0 = (Path(record["log_folder"]) / f"{job_id}_0_log.err").read_text()  # the array's folder
    assert "SIGUSR2 during `convnets test`: stopped it; the requeued job runs it again" in rank0

    (row,), (expected,) = (json.loads((o / "ablation.json").read_text()) for o in (out, reference_out))
    metrics, reference = (json.loads((o / "full" / "metrics.json").read_text()) for o in (out, reference_out))
    tested = {k: v for k, v in reference.items() if k.startswith("test_")}
    assert tested and {k: metrics[k] for k in tested} == tested
    assert row["test_top1"] == expected["test_top1"] and "| full |" in stdout


def test_ablation_sweep_runs_its_variants_as_slurm_jobs(slurm_cluster, uninterrupted_ablation):
    out, result = uninterrupted_ablation
    record = json.loads((out / "full" / "slurm.json").read_text())
    assert [e["event"] for e in record["events"]] == ["start", "finished"]  # it ran as a Slurm job
    wait_for_jobs(slurm_cluster["env"], [record["job_id"]], timeout=60)
    assert job_state(slurm_cluster["env"], record["job_id"]) == "COMPLETED"
    (row,) = json.loads((out / "ablation.json").read_text())
    metrics = json.loads((out / "full" / "metrics.json").read_text())
    assert row["variant"] == "full" and row["test_top1"] == metrics["test_top1"] and row["epochs"] == 1
    assert "| full |" in result.stdout  # the table, printed when the array finished

"""The Slurm request: flags over cluster fragments, the Trainer geometry it implies, the sbatch template."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
from pathlib import Path

import pytest

from convnets.slurm.job import RequeueLimitError, TrainingJob, read_record
from convnets.slurm.request import SlurmRequest, add_slurm_arguments, check_trainer, parse_time, request_from_args
from convnets.slurm.template import template


def _request(*flags: str) -> SlurmRequest:
    parser = argparse.ArgumentParser()
    add_slurm_arguments(parser)
    return request_from_args(parser.parse_args(list(flags)))


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("90", 90), ("01:30:00", 90), ("2-00:00:00", 2880), ("1-12", 2160), ("10:30", 11), ("0:59", 1)],
)
def test_slurm_time_forms_become_minutes(text, minutes):
    assert parse_time(text) == minutes


def test_one_task_per_gpu_and_the_trainer_geometry():
    r = _request("--slurm.nodes", "2", "--slurm.gpus_per_node", "8")
    assert (r.ntasks_per_node, r.world_size) == (8, 16)
    assert r.trainer_flags() == [
        "--trainer.devices",
        "8",
        "--trainer.num_nodes",
        "2",
        "--trainer.accelerator",
        "gpu",
        "--trainer.strategy",
        "ddp",
    ]
    assert r.sbatch_parameters()["gpus_per_node"] == 8 and r.sbatch_parameters()["ntasks_per_node"] == 8


def test_fragment_then_command_line():
    r = _request("--slurm.cluster", "local", "--slurm.time", "2:00:00")
    assert (r.partition, r.gpus_per_node, r.tasks_per_node, r.time) == ("debug", 0, 2, 120)  # time: the flag wins
    assert r.trainer_flags()[-3:] == ["cpu", "--trainer.strategy", "ddp"]


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--slurm.gpus_per_node", "0"], "--slurm.tasks_per_node"),
        (["--slurm.gpus_per_node", "4", "--slurm.tasks_per_node", "2"], "one task per GPU"),
        (["--slurm.nodes", "0"], "at least 1"),
        (["--slurm.time", "soon"], "--slurm.time"),
        (["--slurm.additional_parameters", "[1]"], "JSON object"),
        (["--slurm.cluster", "nowhere"], "local"),  # lists the packaged fragments
    ],
)
def test_bad_requests_name_the_flag(flags, needle):
    with pytest.raises(ValueError, match=needle):
        _request(*flags)


def test_fragment_with_an_unknown_key_is_refused(tmp_path):
    (tmp_path / "c.yaml").write_text("partition: gpu\ngpus: 8\n")
    with pytest.raises(ValueError, match="unknown key 'gpus'"):
        _request("--slurm.cluster", str(tmp_path / "c.yaml"))


@pytest.mark.parametrize(
    ("trainer", "needle"),
    [
        ({"devices": 3}, "trainer.devices 3"),
        ({"num_nodes": 4}, "num_nodes 4"),
        ({"accelerator": "gpu"}, "accelerator gpu"),
    ],
)
def test_contradicting_trainer_settings(trainer, needle):
    with pytest.raises(ValueError, match=needle):
        check_trainer(
            {"trainer": trainer},
            _request("--slurm.gpus_per_node", "0", "--slurm.tasks_per_node", "2", "--slurm.nodes", "2"),
        )
    check_trainer(
        {"trainer": {"devices": "auto", "num_nodes": 1, "accelerator": "cpu"}},
        _request("--slurm.gpus_per_node", "0", "--slurm.tasks_per_node", "2"),
    )


def test_template_quotes_user_strings_for_the_shell(tmp_path):
    name = "odd name's $(touch pwned)"
    fit = ["--config", "configs/lenet5_digits.yaml", "--run_name", name]
    script = template(
        fit, _request("--slurm.gpus_per_node", "8", "--slurm.partition", "a b"), job_name=name, logs="runs/x-%j"
    )
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    srun = shlex.split(next(line for line in script.splitlines() if line.startswith("srun ")))
    assert srun[:4] == ["srun", "--kill-on-bad-exit=1", "convnets", "fit"] and srun[4:8] == fit
    assert srun[8:16] == [
        "--trainer.devices",
        "8",
        "--trainer.num_nodes",
        "1",
        "--trainer.accelerator",
        "gpu",
        "--trainer.strategy",
        "ddp",
    ]
    assert f"#SBATCH --job-name={shlex.quote(name)}" in script and "#SBATCH --partition='a b'" in script


def test_template_requeues_through_the_platforms_own_preemption_path():
    """USR2 (not Lightning's USR1 and its hpc_ckpt), the agreeing callback, scontrol's hand-over, last.ckpt."""
    script = template(
        ["--config", "c.yaml", "--run_name=r"],
        _request("--slurm.signal_delay_s", "120", "--slurm.max_requeues", "4"),
        job_name="j",
        logs="runs/x-%j",
    )
    sbatch = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --signal=USR2@120" in sbatch and "#SBATCH --requeue" in sbatch
    assert not [line for line in sbatch if "USR1" in line]
    srun = shlex.split(next(line for line in script.splitlines() if line.startswith("srun ")))
    assert srun[-2:] == ["--ckpt_path", "last"]
    plugins = [json.loads(a.split("=", 1)[1]) for a in srun if a.startswith("--trainer.plugins=")]
    assert plugins == [
        {"class_path": "pytorch_lightning.plugins.environments.SLURMEnvironment", "init_args": {"auto_requeue": False}}
    ]
    callbacks = [json.loads(a.split("=", 1)[1]) for a in srun if a.startswith("--trainer.callbacks+=")]
    # One preemption hook; without submitit it requeues the job itself, at most --slurm.max_requeues times.
    assert [c["class_path"] for c in callbacks] == ["convnets.slurm.requeue_signal.RequeueOnSignal"]
    assert callbacks[0]["init_args"]["max_requeues"] == 4


@pytest.mark.parametrize(
    "fit", [["--config", "c.yaml"], ["--config", "c.yaml", "--run_name"], ["--config", "c.yaml", "--run_name="]]
)
def test_template_without_a_run_name_is_refused(fit):
    with pytest.raises(ValueError, match="--run_name NAME is required"):
        template(fit, _request(), job_name="j", logs="runs/x-%j")


def test_the_batch_script_requeues_and_ends_the_step_when_a_task_dies():
    from convnets.slurm.submit import batch_script

    script = batch_script(
        Path("/shared/runs/r/slurm"), _request("--slurm.additional_parameters", '{"mail-type": "END"}'), job_name="r"
    )
    assert "#SBATCH --requeue" in script.splitlines() and "#SBATCH --mail-type=END" in script.splitlines()
    srun = shlex.split(next(line for line in script.splitlines() if line.startswith("srun ")))
    assert "--kill-on-bad-exit=1" in srun and srun[-1] == "/shared/runs/r/slurm"


def test_requeues_are_bounded_with_a_clear_failure(tmp_path):
    job = TrainingJob(fit_args=(), run_dir=str(tmp_path), max_requeues=2, requeues=2)
    with pytest.raises(RequeueLimitError, match="2 requeues done"):
        job.checkpoint()
    assert "max_requeues 2" in read_record(tmp_path)["failed"]
    assert json.loads((tmp_path / "slurm.json").read_text())["failed"]

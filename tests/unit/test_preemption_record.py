"""How a Slurm job tells a requeue from a cancel, and the run record that survives resumes (no Slurm needed)."""

from __future__ import annotations

import signal

import pytest

from convnets.platform.training.callbacks import RunReport, ThroughputMonitor
from convnets.slurm import job

# `scontrol show job -o ID` as the job's own tasks saw it right after SIGTERM on the suite's cluster
# (Slurm 22+): a requeue and a cancel both read COMPLETING; only Restarts differs.
AFTER_SCANCEL = (
    "JobId=1 JobName=job.sh UserId=root(0) JobState=COMPLETING Reason=None Dependency=(null) Requeue=1 "
    "Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:02 EndTime=2026-12-06T03:12:09"
)
AFTER_REQUEUE = (
    "JobId=2 JobName=job.sh UserId=root(0) JobState=COMPLETING Reason=None Dependency=(null) Requeue=1 "
    "Restarts=1 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 EndTime=Unknown"
)


@pytest.mark.parametrize(
    ("text", "restarts", "cause"),
    [
        (AFTER_SCANCEL, 0, "ending"),
        (AFTER_REQUEUE, 0, "requeued"),
        (AFTER_REQUEUE.replace("Restarts=1", "Restarts=3"), 2, "requeued"),  # the third requeue of a job
        (AFTER_REQUEUE, 1, "ending"),  # a requeued job's own cancel: the count did not grow in this run
        (AFTER_SCANCEL.replace("COMPLETING", "RUNNING"), 0, "running"),  # a bare TERM: the job goes on
        ("", 0, "ending"),  # scontrol unreachable: never requeue what might be the user's cancel
    ],
)
def test_sigterm_cause_reads_the_restart_count(text, restarts, cause):
    assert job.sigterm_cause(text, restarts) == cause


def test_a_term_outranks_a_warning_and_the_step_is_kept(monkeypatch):
    monkeypatch.setattr(job, "_noted", {})
    monkeypatch.setitem(job.progress, "step", 41)
    job._note(signal.SIGUSR2, None)
    job.progress["step"] = 42
    job._note(signal.SIGTERM, None)
    job._note(signal.SIGUSR2, None)
    assert job.noted_signal() == signal.SIGTERM and job.signal_code(job.noted_signal()) == 2
    assert job.noted_after_step() == 42


def test_hand_over_outside_slurm_stops_with_a_resume_line(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert job.hand_over(tmp_path / "r", signal.SIGTERM, 7) == job.INTERRUPTED_EXIT
    assert "saved last.ckpt at step 7; to resume, run the same command with --ckpt_path last" in caplog.text


def test_run_report_history_and_fit_time_travel_in_the_checkpoint(tmp_path):
    first = RunReport(tmp_path, ThroughputMonitor())
    first.history = [{"epoch": 0, "train_loss": 1.0}]
    first.val_history = [{"epoch": 0, "val_top1": 0.5}]
    first.fit_seconds_before = 10.0
    state = first.state_dict()
    assert state["fit_seconds"] == 10.0  # not started in this process: nothing added

    resumed = RunReport(tmp_path, ThroughputMonitor())
    resumed.load_state_dict(state)
    resumed.history.append({"epoch": 1, "train_loss": 0.5})
    assert [h["epoch"] for h in resumed.history] == [0, 1] and resumed.fit_seconds_before == 10.0
    assert [h["epoch"] for h in first.history] == [0]  # restored copies, not shared lists

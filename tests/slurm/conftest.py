"""A real one-node Slurm cluster on localhost for the `slurm` tests, started once per session.

Debian's slurm-wlm is installed when missing (`make test` installs it up front: scripts/install_slurm.sh;
this fixture does the same for a bare `pytest`). Without root the tests skip, saying why. The
controller and the node daemon run from a generated slurm.conf with every state file in a tmp
folder and free ports, so a stale cluster elsewhere on the machine does not interfere; both are
stopped at the end. Client commands (sbatch, squeue, scancel, and submitit's calls to them) find
this cluster through SLURM_CONF, set for the whole session.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

DAEMONS = ("slurmctld", "slurmd")
CPUS = 2  # what the tests' 2-task DDP jobs need; the node claims exactly this many


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _install_slurm() -> None:
    """Skips only where nothing could install it (no root); for root a failed install fails the tests."""
    if all(shutil.which(d) for d in (*DAEMONS, "sbatch")):
        return
    if os.geteuid() != 0:
        pytest.skip("slurm-wlm is not installed and installing it needs root (sudo apt-get install slurm-wlm)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm"]):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            pytest.fail(f"`{' '.join(cmd)}` failed as root: {result.stderr.strip()[-300:]}")


def slurm_conf(state: Path, *, memory_mb: int) -> str:
    return "\n".join(
        [
            "ClusterName=convnets-test",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/none",
            "CredType=cred/none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "MpiDefault=none",
            "ReturnToService=2",
            "JobRequeue=1",
            "SchedulerType=sched/builtin",
            "MinJobAge=600",  # finished jobs stay visible to squeue/scontrol for the assertions
            "KillWait=10",
            "InactiveLimit=0",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            f"StateSaveLocation={state / 'ctld'}",
            f"SlurmdSpoolDir={state / 'd'}",
            f"SlurmctldPidFile={state / 'slurmctld.pid'}",
            f"SlurmdPidFile={state / 'slurmd.pid'}",
            f"SlurmctldLogFile={state / 'slurmctld.log'}",
            f"SlurmdLogFile={state / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory={memory_mb} State=UNKNOWN",
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


def _node_state(env: dict) -> str:
    result = subprocess.run(["sinfo", "--noheader", "-o", "%T"], env=env, capture_output=True, text=True, timeout=30)
    return result.stdout.strip()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> dict:
    """Start slurmctld + slurmd on localhost; yield the environment the clients need; stop them."""
    _install_slurm()
    state = tmp_path_factory.mktemp("slurm")
    for sub in ("ctld", "d"):
        (state / sub).mkdir()
    memory_mb = min(8000, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2)
    conf = state / "slurm.conf"
    conf.write_text(slurm_conf(state, memory_mb=memory_mb))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)  # submitit and the CLI under test call sbatch/squeue/sacct
    procs = [
        subprocess.Popen(
            [d, "-D", "-f", str(conf)] if d == "slurmd" else [d, "-D", "-i", "-f", str(conf)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(state / f"{d}.err", "w"),
        )
        for d in DAEMONS
    ]
    try:
        deadline = time.monotonic() + 60
        while _node_state(env) not in ("idle", "mixed"):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                logs = "\n".join(
                    (state / f).read_text()[-1500:]
                    for f in ("slurmctld.log", "slurmd.log", "slurmctld.err", "slurmd.err")
                    if (state / f).exists()
                )
                pytest.fail(f"Slurm did not come up (node state {_node_state(env)!r}):\n{logs}")
            time.sleep(0.5)
        yield {"env": env, "conf": conf, "state": state, "cpus": CPUS, "partition": "debug"}
    finally:
        subprocess.run(["scancel", "--full", "--user", str(os.getuid())], env=env, capture_output=True, timeout=30)
        deadline = time.monotonic() + 30  # let slurmd end the job steps: stopped first, it would orphan them
        while (
            time.monotonic() < deadline
            and subprocess.run(
                ["squeue", "--noheader"], env=env, capture_output=True, text=True, timeout=30
            ).stdout.strip()
        ):
            time.sleep(0.5)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


@pytest.fixture(scope="session")
def uninterrupted_epoch(slurm_cluster, digits_shards, tmp_path_factory):
    """uninterrupted_epoch() -> last.ckpt of one uninterrupted epoch (helpers.start_reference_fit), trained once,
    beside the first test that asks, for every test whose preempted one-epoch job must end equal to it."""
    from tests.slurm.helpers import start_reference_fit

    return start_reference_fit(slurm_cluster, digits_shards, tmp_path_factory.mktemp("uninterrupted"))


def wait_for_jobs(env: dict, job_ids: list[str], *, timeout: float) -> None:
    """Until none of the jobs is pending, running, requeued or completing (squeue empty for them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["squeue", "--noheader", "-h", "-o", "%i %T", "-j", ",".join(job_ids)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if out.returncode == 0 and not out.stdout.strip():  # not a failed squeue: that says nothing
            return
        time.sleep(0.25)
    raise TimeoutError(f"jobs {job_ids} still queued after {timeout:.0f} s")


def job_state(env: dict, job_id: str) -> str:
    out = subprocess.run(
        ["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True, timeout=30
    ).stdout
    for token in out.split():
        if token.startswith("JobState="):
            return token.split("=", 1)[1]
    return "UNKNOWN"

"""`python -m convnets.slurm.task_guard COMMAND...`: runs one Slurm task's process and, when it dies, says which.

srun's `--kill-on-bad-exit=1` ends the whole job when one task dies, but nothing in the job then
says which rank it was: the others fail with a bare "connection reset" from the collective they
were in. This parent (a few MB, no torch) waits for its child, the rank, and when the child is
killed by a signal (SIGKILL from the kernel's OOM-killer, SIGSEGV, SIGBUS...) or exits non-zero on
its own, prints one line naming the rank, the host and the cause, sends SIGKILL to the job step's
other tasks (a crash is not a preemption: nothing to save), then exits as the child did, so srun
reports the task the same way. It stays silent where Slurm itself stopped the task (a
preemption, a requeue, `scancel`, or srun ending the others after a failure: it got SIGTERM too).
Slurm signals every process of the task: this parent ignores them all; the child acts on them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

# A rank whose peer died fails in its next collective (gloo: "connection reset") within seconds; srun's
# SIGTERM for it follows the first failure by well under a second. Waiting this long before reporting
# an error exit keeps the line for the rank that died first, not for the ones that followed it.
FOLLOWER_WAIT_S = 3.0
FORWARDED_BY_SLURM = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGCONT, signal.SIGINT, signal.SIGHUP)
REQUEUED_STATES = ("REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "PENDING")
REPORT_PREFIX = "convnets: rank "  # the line's start, which `convnets status` looks for in the task logs
HINTS = {
    signal.SIGKILL: " (the kernel's OOM-killer sends SIGKILL when the node runs out of memory)",
    signal.SIGSEGV: " (a crash in native code: a driver, a kernel or an extension)",
    signal.SIGBUS: " (a bad memory access: often a full /dev/shm)",
}


def describe(returncode: int) -> str:
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode)
        except ValueError:
            return f"was killed by signal {-returncode}"
        return f"was killed by {sig.name}{HINTS.get(sig, '')}"
    return f"exited with code {returncode} (its error is above in this log)"


def _job_requeued(job_id: str) -> bool:
    """Whether the job is going back in the queue (a preemption hand-over exits non-zero on purpose)."""
    try:
        out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(t.split("=", 1)[1] in REQUEUED_STATES for t in out.split() if t.startswith("JobState="))


def _stop_the_step() -> None:
    """SIGKILL to every task of this job step now. srun's --kill-on-bad-exit sends SIGTERM first and SIGKILL
    only after the cluster's KillWait (30 s by default), and a rank stuck in a collective, or one that
    takes SIGTERM for a preemption and saves first, would hold the job that long."""
    job, step = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_STEP_ID")
    if job and step:
        try:
            subprocess.run(["scancel", "--signal=KILL", f"{job}.{step}"], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass  # srun's --kill-on-bad-exit still ends the step, after KillWait


def report(returncode: int) -> str:
    env = os.environ
    rank, job_id, host = (
        env.get("SLURM_PROCID", "?"),
        env.get("SLURM_JOB_ID", "?"),
        env.get("SLURMD_NODENAME", os.uname().nodename),
    )
    return (
        f"{REPORT_PREFIX}{rank} (Slurm task {rank} of job {job_id} on host {host}) {describe(returncode)} at "
        f"{time.strftime('%H:%M:%S')}; the other ranks are stopped now and the job ends without "
        "a requeue (a crash is not a preemption): fix the cause, then submit the same command again to resume "
        "from the run's checkpoints/last.ckpt"
    )


def main(command: list[str]) -> int:
    stopped_by_slurm = []
    for sig in FORWARDED_BY_SLURM:
        signal.signal(sig, lambda signum, frame: stopped_by_slurm.append(signum) if signum == signal.SIGTERM else None)
    child = subprocess.Popen(command)
    while True:
        try:
            returncode = child.wait()
            break
        except InterruptedError:  # pragma: no cover (PEP 475 retries wait() itself)
            continue
    if returncode > 0:  # an error exit may be this rank's reaction to another's death: srun then stops us soon
        deadline = time.monotonic() + FOLLOWER_WAIT_S
        while not stopped_by_slurm and time.monotonic() < deadline:
            time.sleep(0.1)
    if returncode != 0 and not stopped_by_slurm and not _job_requeued(os.environ.get("SLURM_JOB_ID", "")):
        print(report(returncode), file=sys.stderr, flush=True)
        _stop_the_step()
    if returncode < 0:  # die the same way, so srun says "task N: Killed" as it would for the rank itself
        if -returncode != signal.SIGKILL:  # the only one that cannot be given a handler
            signal.signal(-returncode, signal.SIG_DFL)
        os.kill(os.getpid(), -returncode)
    return returncode if returncode >= 0 else 128 - returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""`convnets ARGS` as a child process, in its own process group, that never outlives its parent.

DDP re-executes its command line on every rank, so a demo, sweep or bench runs each training as
a child. The child gets a session of its own (start_new_session): Lightning's rank processes join
its group, and a SIGTERM or Ctrl-C to the parent is forwarded to the whole group, after which the
parent waits for every rank to exit (SIGKILL after GRACE_S) and stops itself. The terminal's
Ctrl-C reaches only the parent's group, hence the forwarding.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

GRACE_S = 30.0  # after a forwarded signal: time for the ranks to save and exit before SIGKILL


class ChildFailed(RuntimeError):
    """`convnets ...` exited non-zero; the message names the command and the exit code."""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(pgid: int, signum: int = signal.SIGTERM, *, grace_s: float = GRACE_S) -> None:
    """Signal every process of the group, wait up to grace_s for all to exit, then SIGKILL the rest."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait(proc: subprocess.Popen, received: list[int]) -> int:
    """The child's exit code; once a signal was forwarded, after at most GRACE_S more (then the group is
    SIGKILLed): a rank blocked in a collective never sees the signal, and a parent waiting for it would
    hang with it."""
    deadline = None
    while True:
        try:
            return proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
        if received and deadline is None:
            deadline = time.monotonic() + GRACE_S
        if deadline is not None and time.monotonic() > deadline:
            stop_group(proc.pid, signal.SIGKILL, grace_s=5.0)
            return proc.wait()


def run_convnets(args: list[str], *, env: dict | None = None, failure: str = "") -> None:
    """Run `convnets ARGS` to completion; ChildFailed on a non-zero exit; signals reach all its ranks."""
    proc = subprocess.Popen([sys.executable, "-m", "convnets.cli", *args], env=env, start_new_session=True)
    received: list[int] = []

    def forward(signum: int, frame) -> None:
        received.append(signum)
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    watched = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, forward) for s in watched}
    try:
        code = _wait(proc, received)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        # Ranks Lightning started may outlive rank 0 (e.g. it was SIGKILLed): none may outlive us.
        if _group_alive(proc.pid):
            stop_group(proc.pid, received[0] if received else signal.SIGTERM)
    if received:
        if received[0] == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + received[0])
    if code != 0:
        raise ChildFailed(f"{failure + ': ' if failure else ''}`convnets {args[0]}` failed with exit code {code}")

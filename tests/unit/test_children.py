"""A parent that forwarded a signal waits for its child's group a bounded time (platform/children.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from convnets.utils import children

# A "rank" that never reacts to SIGTERM (as one blocked inside a collective does not).
DEAF = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"


def test_after_a_forwarded_signal_a_deaf_child_is_killed_after_the_grace(monkeypatch):
    monkeypatch.setattr(children, "GRACE_S", 1.0)
    proc = subprocess.Popen([sys.executable, "-c", DEAF], start_new_session=True, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)  # what run_convnets forwards; ignored
        started = time.monotonic()
        code = children._wait(proc, [signal.SIGTERM])
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == -signal.SIGKILL
    assert 1.0 <= took < 10.0, took


def test_without_a_signal_the_parent_waits_for_the_child():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"], start_new_session=True)
    assert children._wait(proc, []) == 0

"""A DDP rank that dies takes the others down within seconds, with a line naming it.

On one node Lightning starts ranks 1..N-1 as children of rank 0. RankWatchdog, on rank 0, waits on
each child (a blocking wait per child: it wakes the moment the child dies, at no polling cost); on
the other ranks it checks once a second that rank 0, their parent, is still there. When a peer is
gone, the watchdog logs which rank (pid, exit code or signal), waits `grace_s` for this rank's own
error to surface, then stops the local ranks and exits with code 1. The checkpoints are written
atomically, so `--ckpt_path last` resumes from the last completed save, step count included.

Ranks on other nodes are not children: there the collective timeout (`--ddp_timeout_s`, given to
torch.distributed as the process group's timeout) bounds the wait, and gloo/NCCL's error names
the failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytorch_lightning as pl
from typing_extensions import override

GRACE_S = 5.0  # time for the rank's own error (a gloo "connection closed") to print before we exit
PARENT_POLL_S = 1.0
HANDLING_S = 60.0  # a rank already handling its own error gets this long to exit by itself
NOTE_WAIT_S = 2.0  # after a failure in a DDP run: how long to wait for word of a dead child rank


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    if returncode == 2:  # failures.INPUT_ERROR_EXIT: the rank printed which file, sample or option
        return "exited with code 2 (bad input: its one-line error, naming the file or sample, is above)"
    return f"exited with code {returncode}"


class RankWatchdog(pl.Callback):
    """Watches the other local DDP ranks from setup() on; does nothing in a single process."""

    def __init__(self, *, grace_s: float = GRACE_S) -> None:
        self.grace_s = grace_s
        self.done = threading.Event()  # set at teardown: a rank finishing normally is no failure
        self.deaths: list[str] = []  # "DDP rank 1 (pid 123) killed by SIGKILL", as the threads learn them
        self.handling = threading.Event()  # this rank's main thread is already failing: let it exit itself

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.world_size <= 1:
            return
        children = list(getattr(trainer.strategy.launcher, "procs", None) or [])
        if trainer.local_rank == 0:
            _retire_lightnings_observer()
            first = trainer.node_rank * trainer.num_devices
            for i, proc in enumerate(children):
                threading.Thread(
                    target=self._wait_child,
                    args=(proc, first + i + 1, children),
                    daemon=True,
                    name=f"convnets-watch-rank{first + i + 1}",
                ).start()
        else:
            threading.Thread(
                target=self._watch_parent,
                args=(os.getppid(), trainer.global_rank),
                daemon=True,
                name="convnets-watch-rank0",
            ).start()

    def _wait_child(self, proc: subprocess.Popen, rank: int, children: list[subprocess.Popen]) -> None:
        returncode = proc.wait()
        if self.done.is_set() or returncode == 0:
            return
        self.deaths.append(f"DDP rank {rank} (pid {proc.pid}) {describe_exit(returncode)}")
        self._stop(self.deaths[-1], children)

    def _watch_parent(self, parent: int, rank: int) -> None:
        while not self.done.wait(PARENT_POLL_S):
            if os.getppid() != parent:  # re-parented: rank 0 is gone
                self.deaths.append(f"DDP rank 0 (pid {parent}) died")  # for on_exception's note, as on rank 0
                self._stop(f"{self.deaths[-1]}; rank {rank} cannot continue", [])

    def _stop(self, message: str, children: list[subprocess.Popen]) -> None:
        print(
            f"convnets: failed: {message}; stopping this rank. Resume with --ckpt_path last",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(self.grace_s)
        if self.handling.is_set():  # its own error is on the way out (exit code, one-line summary): a
            time.sleep(HANDLING_S)  # longer wait, only against a teardown stuck in a collective
        for proc in children:
            if proc.poll() is None:
                proc.kill()  # SIGTERM does not stop a rank blocked inside a collective
        os._exit(1)  # the main thread may be blocked in a collective: no clean way out of it

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # gloo's "connection reset" and the child's exit arrive together: give the waiting threads a
        # moment, then note the dead rank on the exception, so the summary line names it.
        deadline = time.monotonic() + NOTE_WAIT_S
        while trainer.world_size > 1 and not self.deaths and time.monotonic() < deadline:
            time.sleep(0.05)
        self.handling.set()
        if self.deaths:
            exception.__notes__ = [*getattr(exception, "__notes__", []), *self.deaths]

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.done.set()


def _retire_lightnings_observer() -> None:
    """Lightning's launcher polls its child ranks every 5 s and, when one has failed, SIGKILLs every rank
    and rank 0 itself: the run then ends with exit code -9/137 and Lightning's line instead of this
    rank's own error, its summary and exit code 1, whichever of the two comes first. The waits above do
    the same job (stop the ranks, bounded) after letting this rank explain itself."""
    for thread in threading.enumerate():
        if thread.name == "child-process-observer" and hasattr(thread, "_run"):
            thread._run = lambda: True  # "all done": its loop ends at its next wake-up, killing nothing


def ddp_strategy(strategy: object, *, timeout_s: float) -> object:
    """`"ddp"` as a DDPStrategy whose collectives give up after `timeout_s` (torch's default: 30 min)."""
    if strategy != "ddp":
        return strategy  # an explicit strategy object or another name keeps its own settings
    from pytorch_lightning.strategies import DDPStrategy

    return DDPStrategy(timeout=timedelta(seconds=timeout_s))

"""A DDP rank that dies or fails takes the others down within seconds, with a line naming it.

Two ways a rank learns of a peer, both cheap:
- On one node Lightning starts ranks 1..N-1 as children of rank 0: rank 0 waits on each child (a
  blocking wait per child: it wakes the moment the child dies, at no polling cost).
- Every rank keeps a connection to the process group's rendezvous store (TCPStore) and polls it
  every POLL_S (one request, ~40 us). Rank 0's process hosts it, whether the ranks are Lightning's
  children or Slurm tasks: a failed request means rank 0 is gone (its pid and host are published
  there at setup). (Under torchrun its agent hosts the store and stops the ranks itself.) A rank
  that fails publishes its one-line error there too, before it exits, so the others can name it;
  when it was bad input (a corrupt sample) every rank exits with code 2 and that line, as if it
  had read the sample itself.

When a peer is gone, the watchdog waits `grace_s` for this rank's own error (a gloo "connection
reset") to end the process through the CLI (exit code, one-line summary naming the peer); if it
has not, it prints the line itself, stops the local child ranks and exits. The checkpoints are
written atomically, so `--ckpt_path last` resumes from the last completed save, step count included.

A rank that hangs without dying (on another node, say) is bounded by the collective timeout
(`--ddp_timeout_s`, the process group's timeout), which also bounds how long the watchdog lets a
rank that is already handling its own error take to exit.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytorch_lightning as pl
from typing_extensions import override

from convnets.data_pipelines.errors import ConvnetsInputError

log = logging.getLogger(__name__)

GRACE_S = 5.0  # time for the rank's own error (a gloo "connection closed") to end the process before we do
POLL_S = 0.5  # rank 0's store, polled by every rank: 2 requests/s per rank (1,000/s at 512 ranks)
HANDLING_S = 60.0  # a rank already handling its own error gets this long (at most the DDP timeout) to exit
NOTE_WAIT_S = 2.0  # after a failure in a DDP run: how long to wait for word of the peer behind it
# Keys in the process group's store; torchrun's agent keeps its store across restarts: one set per attempt.
STORE_PREFIX = f"convnets/watchdog/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
FAILED_KEY = STORE_PREFIX + "failed"  # "1,3," : the ranks that published a failure, appended to


class PeerInputError(ConvnetsInputError):
    """Another DDP rank stopped on bad input (its line, naming the sample); this rank's error was its echo."""


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


def connect_store(timeout_s: float):
    """A client of the process group's rendezvous store (None outside env:// rendezvous)."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        return None
    from torch.distributed import TCPStore

    try:
        return TCPStore(addr, int(port), is_master=False, timeout=timedelta(seconds=timeout_s))
    except Exception as exc:  # no store there (an init_method other than env://): no store watching
        log.warning("rank watchdog: no store at %s:%s (%s); relying on the DDP timeout", addr, port, exc)
        return None


class RankWatchdog(pl.Callback):
    """Watches the other DDP ranks from setup() on; does nothing in a single process."""

    def __init__(self, *, grace_s: float = GRACE_S, timeout_s: float = HANDLING_S) -> None:
        self.grace_s = min(grace_s, timeout_s)
        self.handling_s = min(HANDLING_S, timeout_s)
        self.done = threading.Event()  # set at teardown: a rank finishing normally is no failure
        self.deaths: list[str] = []  # "DDP rank 1 (pid 123) killed by SIGKILL", as the threads learn them
        self.peer_input: str | None = None  # a peer's bad-input line: this rank exits 2 with it
        self.handling = threading.Event()  # this rank's main thread is already failing: let it exit itself
        self._store = None
        self._store_lock = threading.Lock()  # one client, used by the watcher thread and on_exception
        self._rank = 0
        self._children: list[subprocess.Popen] = []
        self._threads: dict[str, threading.Thread] = {}
        self._seen: set[int] = set()  # peers whose published failure this rank has read

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.world_size <= 1:
            return
        self.done.clear()  # a second stage (fit, then test) on the same Trainer watches again
        self._rank = trainer.global_rank
        self._children = list(getattr(trainer.strategy.launcher, "procs", None) or [])
        if trainer.local_rank == 0:
            first = trainer.node_rank * trainer.num_devices
            for i, proc in enumerate(self._children):
                self._start(f"convnets-watch-rank{first + i + 1}", self._wait_child, proc, first + i + 1)
        # Called after the process group exists: its store is up (hosted by rank 0 or torchrun's agent).
        if self._store is None:
            self._store = connect_store(max(self.handling_s, 10.0))
            if self._store is not None and self._rank == 0:
                self._store.set(STORE_PREFIX + "rank0", f"{os.getpid()} {socket.gethostname()}")
        if self._store is not None:
            self._start("convnets-watch-store", self._watch_store)
            atexit.register(self._quiet)  # once per process: register() of a bound method twice is harmless

    def _quiet(self) -> None:
        """At interpreter exit: end the store thread first. A daemon thread still inside a store call
        when Python finalizes is unwound through C++ frames on its return: std::terminate, SIGABRT,
        instead of the exit code the CLI chose (seen with a rank exiting after a peer's bad input)."""
        self.done.set()
        thread = self._threads.get("convnets-watch-store")
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2 * POLL_S)

    def _start(self, name: str, target, *args) -> None:
        if name not in self._threads or not self._threads[name].is_alive():
            self._threads[name] = threading.Thread(target=target, args=args, daemon=True, name=name)
            self._threads[name].start()

    def _wait_child(self, proc: subprocess.Popen, rank: int) -> None:
        returncode = proc.wait()
        if self.done.is_set() or returncode == 0:
            return
        self.deaths.append(f"DDP rank {rank} (pid {proc.pid}) {describe_exit(returncode)}")
        self._stop()

    def _watch_store(self) -> None:
        rank0 = None  # rank 0's "pid host", published at its setup
        while not self.done.wait(POLL_S):
            try:
                with self._store_lock:
                    if rank0 is None and self._store.check([STORE_PREFIX + "rank0"]):
                        rank0 = self._store.get(STORE_PREFIX + "rank0").decode()
                self._read_failures()
            except Exception:  # the store answers no more: rank 0 (its host) is gone
                if self._rank == 0 or self.done.is_set():
                    return
                self.deaths.append(f"DDP rank 0 ({self._describe_rank0(rank0)}) died")
                self._stop()
                return

    def _read_failures(self) -> None:
        """Read the failures the peers published (and say so: a failing rank 0 waits for that)."""
        with self._store_lock:
            failed = self._store.get(FAILED_KEY).decode() if self._store.check([FAILED_KEY]) else ""
            for r in {int(r) for r in failed.split(",") if r} - self._seen - {self._rank}:
                record = json.loads(self._store.get(f"{STORE_PREFIX}failed/{r}"))
                self._store.add(f"{STORE_PREFIX}read/{r}", 1)
                self._seen.add(r)
                who = f"DDP rank {r} (pid {record['pid']} on {record['host']})"
                if record["input"]:
                    self.peer_input = f"{record['line']} [found by {who}; every rank stopped]"
                self.deaths.append(f"{who} failed: {record['line']}")

    @staticmethod
    def _describe_rank0(rank0: str | None) -> str:
        if rank0 is None:
            return "pid unknown"
        pid, _, host = rank0.partition(" ")
        return f"pid {pid}" if host == socket.gethostname() else f"pid {pid} on {host}"

    def _publish(self, exception: BaseException, peers: int) -> None:
        """Tell the peers why this rank fails, before it exits (rank 0 waits until they have read it:
        its store goes with it)."""
        from convnets.platform.failures import is_input_error, one_line

        bad_input = is_input_error(exception)
        record = {"rank": self._rank, "pid": os.getpid(), "host": socket.gethostname(), "input": bad_input,
                  "line": one_line(exception) if bad_input else f"{type(exception).__name__}: {one_line(exception)}"}
        try:
            with self._store_lock:
                self._store.set(f"{STORE_PREFIX}failed/{self._rank}", json.dumps(record))
                self._store.append(FAILED_KEY, f"{self._rank},")
            deadline = time.monotonic() + NOTE_WAIT_S
            while self._rank == 0 and time.monotonic() < deadline:
                with self._store_lock:
                    if self._store.add(f"{STORE_PREFIX}read/0", 0) >= peers:
                        return
                time.sleep(0.05)
        except Exception:  # rank 0 is gone with its store: nobody left to tell there
            pass

    def _stop(self) -> None:
        """A peer is gone: this rank's own error gets `grace_s` to end the process, then we end it."""
        if self.done.wait(self.grace_s):  # finished normally meanwhile (rank 0 may exit first at the end)
            return
        if self.handling.is_set():  # its own error is on the way out (exit code, one-line summary): a
            time.sleep(self.handling_s)  # longer wait, only against a teardown stuck in a collective
        if self.peer_input:
            print(f"convnets: error: {self.peer_input}", file=sys.stderr, flush=True)
        else:
            print(f"convnets: failed: {self.deaths[0]}; stopping this rank. Resume with --ckpt_path last",
                  file=sys.stderr, flush=True)
        for proc in self._children:
            if proc.poll() is None:
                proc.kill()  # SIGTERM does not stop a rank blocked inside a collective
        os._exit(2 if self.peer_input else 1)  # the main thread may be blocked in a collective: no clean way out

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        from convnets.platform.failures import is_peer_gone

        if trainer.world_size <= 1:
            return
        if not is_peer_gone(exception):  # its own failure: the peers learn it from the store
            if self._store is not None:
                self._publish(exception, peers=trainer.world_size - 1)
        else:  # an echo of a peer's: learn which (gloo's "connection reset" and the peer's exit come together)
            deadline, store = time.monotonic() + NOTE_WAIT_S, self._store is not None
            while True:
                try:  # now: a failed child's record may be there before its exit is seen
                    if store:
                        self._read_failures()
                except Exception:  # rank 0 and its store gone: the watcher notes its death within POLL_S
                    store = False  # (each failed request prints a c10d warning: one is enough)
                if self.deaths or time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
        self.handling.set()
        if self.deaths:
            exception.__notes__ = [*getattr(exception, "__notes__", []), *self.deaths]

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.done.set()

    def peer_error(self, exception: BaseException) -> PeerInputError | None:
        """The error this rank should exit with instead of `exception`, when a peer's bad input caused it."""
        from convnets.platform.failures import is_input_error

        if self.peer_input is None or is_input_error(exception):
            return None
        return PeerInputError(self.peer_input)


def ddp_strategy(strategy: object, *, timeout_s: float) -> object:
    """`"ddp"` as a DDPStrategy whose collectives give up after `timeout_s` (torch's default: 30 min)."""
    if strategy != "ddp":
        return strategy  # an explicit strategy object or another name keeps its own settings
    from pytorch_lightning.strategies import DDPStrategy

    return DDPStrategy(timeout=timedelta(seconds=timeout_s))

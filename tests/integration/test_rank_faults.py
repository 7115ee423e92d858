"""DDP faults from the other side: rank 0 killed, then a corrupt sample that only rank 1 reads.

Real processes: `convnets fit` with 2 gloo CPU ranks (Lightning starts rank 1 as rank 0's child).
One test, two runs (a 2-rank fit costs ~10-25 s here, mostly starting the processes): the first is
killed (rank 0, SIGKILL); the second resumes it from last.ckpt on shards where a sample of a later
epoch, in rank 1's part of the plan, is not an image, with each rank a process of its own (as
Slurm tasks are: the ranks learn of each other through the process group's store, not as
parent and child).
The test process becomes a child subreaper (prctl PR_SET_CHILD_SUBREAPER) while a run lives, so the
rank 1 process, orphaned when rank 0 goes, is re-parented to it: the test reads its exit code and
knows it is gone, instead of trusting that it stopped.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from convnets.data_pipelines.epoch_plan import plan_rank
from convnets.data_pipelines.shard_format import load_sample_index
from tests.integration.cli_helpers import REPO, last_line
from tests.integration.test_rank_death import BATCH, RANKS, SHORT, TRAIN_BATCHES, children, env, fit_cmd

pytestmark = [pytest.mark.integration, pytest.mark.dali, pytest.mark.slow]
# fit_cmd's --ddp_timeout_s 30 bounds the watchdog's waits (5 s grace, then at most 30 s for a rank
# already failing); it is also the rendezvous timeout: rank 1 starts seconds after rank 0 here.
EXIT_BOUND_S = 60  # generous for a loaded 2-core machine
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


@contextlib.contextmanager
def subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip(f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def reap(pid: int, timeout_s: float) -> int | None:
    """The exit code of `pid` (re-parented to us), or None if it still runs after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.1)
    return None


def kill_if_alive(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def rank_children(pid: int) -> list[int]:
    """The DDP ranks rank 0 started (its other children, a W&B service say, are not)."""
    ranks = []
    for child in children(pid):
        with contextlib.suppress(OSError):
            if b"convnets.cli" in Path(f"/proc/{child}/cmdline").read_bytes():
                ranks.append(child)
    return ranks


def wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)


def corrupt_sample_for(rank: int, num_samples: int, *, epoch: int, step: int, clean_epochs: range) -> int:
    """A sample in batch `step` of `rank`'s plan for `epoch`, that no rank reads in `clean_epochs`
    (none of their first 10 batches per rank: the TRAIN_BATCHES trained plus DALI's prefetch)."""
    def plans(e):
        # seed 0: the data module's default (--data.seed), the plan every rank computes for epoch e
        return [plan_rank(num_samples, rank=r, world_size=RANKS, batch_size=BATCH, seed=0, epoch=e, shuffle=True)
                for r in range(RANKS)]

    earlier = {int(i) for e in clean_epochs for p in plans(e) for i in p.indices[: 10 * BATCH]}
    idx, valid = plans(epoch)[rank].batch(step)
    candidates = [int(i) for i, v in zip(idx, valid) if v and int(i) not in earlier]
    assert candidates, "no sample fits; pick another step"
    return candidates[0]


def corrupt(data: Path, i: int) -> tuple[str, str]:
    """Overwrite train sample i's image bytes (not an image any more; the tar and its index stay valid)."""
    index = load_sample_index(data / "train")
    shard = index.shard_paths[int(index.shard_id[i])]
    raw = bytearray(shard.read_bytes())
    start, size = int(index.img_offset[i]), int(index.img_size[i])
    raw[start: start + size] = b"\xff" * size
    shard.write_bytes(bytes(raw))
    return shard.name, index.key(i)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_until_rank0_killed(data: Path, runs: Path) -> tuple[int, int, int | None, float, str]:
    """Fit until last.ckpt exists, SIGKILL rank 0; returns (rank 0 pid, rank 1 pid, rank 1's exit, seconds, stderr)."""
    last = runs / "r" / "checkpoints" / "last.ckpt"
    main = subprocess.Popen(fit_cmd(data, runs, "--trainer.max_epochs", "200", *SHORT),
                            cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rank1 = None
    try:
        wait_for(last, main)
        ranks = rank_children(main.pid)
        failed = main.poll() is not None and main.stderr.read()[-3000:]
        assert last.exists() and len(ranks) == 1, f"no checkpoint, or not one child rank ({ranks}): {failed}"
        rank1 = ranks[0]
        main.kill()  # SIGKILL rank 0 while rank 1 trains
        main.wait()
        killed_at = time.monotonic()
        code = reap(rank1, EXIT_BOUND_S)  # rank 1, re-parented to this process
        took = time.monotonic() - killed_at
        err = main.stderr.read() if code is not None else ""  # rank 1 wrote to the same pipe: EOF once it is gone
    finally:
        if main.poll() is None:
            main.kill()
        if rank1 is not None:
            kill_if_alive(rank1)
    return main.pid, rank1, code, took, err


def test_rank0_killed_then_resumed_run_meets_a_corrupt_sample_on_rank1(digits_shards, tmp_path):
    data, runs = tmp_path / "shards", tmp_path / "runs"
    shutil.copytree(digits_shards, data)
    last = runs / "r" / "checkpoints" / "last.ckpt"

    # 1. Rank 0 killed: rank 1 exits by itself, in bounded time, with a line naming rank 0 and its pid.
    with subreaper():
        rank0, rank1, code, took, err = run_until_rank0_killed(data, runs)
    assert code is not None, f"rank 1 (pid {rank1}) still running {EXIT_BOUND_S} s after rank 0 was killed"
    assert code == 1, err[-3000:]
    assert not Path(f"/proc/{rank1}").exists()  # reaped: nothing left running
    line = last_line(err)  # rank 1's summary (its gloo error, noted by the watchdog) or the watchdog's own line
    assert line.startswith(f"convnets: failed: DDP rank 0 (pid {rank0}) died"), err[-3000:]
    assert "--ckpt_path last" in line
    print(f"rank 1 exited {took:.1f} s after rank 0 was killed")
    saved = torch.load(last, weights_only=True, map_location="cpu")
    assert saved["global_step"] == (saved["epoch"] + 1) * TRAIN_BATCHES  # last.ckpt: a whole epoch

    # 2. Resume, as two "nodes" (each rank its own process, as Slurm's srun starts them: neither is the
    #    other's parent): one more whole epoch (continuing the step count), then in the next one rank 1
    #    reads a sample that is not an image: every rank exits 2 with one line naming shard and key.
    bad_epoch = saved["epoch"] + 2
    shard, key = corrupt(data, corrupt_sample_for(1, len(load_sample_index(data / "train").shard_id), epoch=bad_epoch,
                                                  step=1, clean_epochs=range(saved["epoch"] + 1, bad_epoch)))
    port = free_port()
    cmd = fit_cmd(data, runs, "--trainer.max_epochs", str(bad_epoch + 1), "--ckpt_path", "last", *SHORT,
                  "--trainer.num_nodes", "2", "--trainer.devices", "1")
    nodes = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(r),
                                   "LOCAL_RANK": "0"})
             for r in range(RANKS)]
    try:
        errs = [node.communicate(timeout=300)[1] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert "Restoring states from the checkpoint" in errs[0], errs[0][-3000:]
    for r, (node, err) in enumerate(zip(nodes, errs)):
        assert node.returncode == 2, f"rank {r}: {err[-3000:]}"
        line = last_line(err)
        assert line.startswith("convnets: error: "), err[-3000:]
        assert shard in line and key in line and "cannot decode" in line, line
        assert "Traceback" not in err, err[-3000:]
    assert f"[found by DDP rank 1 (pid {nodes[1].pid} on " in last_line(errs[0])  # rank 0 names who read it

    ckpts = last.parent
    assert [p.name for p in ckpts.iterdir() if ".tmp" in p.name] == []  # no temp file left behind
    resumed = torch.load(last, weights_only=True, map_location="cpu")  # whole: it loads
    assert resumed["epoch"] == saved["epoch"] + 1  # the epoch before the bad one
    assert resumed["global_step"] == saved["global_step"] + TRAIN_BATCHES  # continued, not restarted

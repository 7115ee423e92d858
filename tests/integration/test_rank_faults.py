"""DDP faults from the other side of test_rank_death: rank 0 killed, then a corrupt sample only rank 1 reads.

Real processes: `convnets fit` with 2 gloo CPU ranks (Lightning starts rank 1 as rank 0's child). One
test, two runs (a 2-rank fit costs ~10-25 s here, mostly starting the processes): the first loses
rank 0 to SIGKILL; the second resumes it from last.ckpt on shards where a sample of a later epoch, in
rank 1's part of the plan, is not an image.
The test process becomes a child subreaper (prctl PR_SET_CHILD_SUBREAPER) while the first run lives,
so the rank 1 process, orphaned when rank 0 goes, is re-parented to it: the test reads its exit code
and knows it is gone, instead of trusting that it stopped.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from convnets.data_pipelines.loading.epoch_plan import plan_rank
from convnets.data_pipelines.shards.format import load_sample_index
from tests.integration.cli_helpers import REPO, last_line
from tests.integration.test_rank_death import BATCH, EXIT_BOUND_S, RANKS, SHORT, TRAIN_BATCHES, children, env, fit_cmd

pytestmark = [pytest.mark.integration, pytest.mark.dali, pytest.mark.slow]
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
    """A sample in batch `step` of `rank`'s plan for `epoch` that no rank reads in `clean_epochs`
    (none of their first 10 batches per rank: the TRAIN_BATCHES trained plus DALI's prefetch)."""

    def plans(e):
        # seed 0: the data module's default (--data.seed), the plan every rank computes for epoch e
        return [
            plan_rank(num_samples, rank=r, world_size=RANKS, batch_size=BATCH, seed=0, epoch=e, shuffle=True)
            for r in range(RANKS)
        ]

    earlier = {int(i) for e in clean_epochs for p in plans(e) for i in p.indices[: 10 * BATCH]}
    # rank 0's prefetch into this epoch must not meet it first either
    earlier |= {int(i) for r, p in enumerate(plans(epoch)) if r != rank for i in p.indices[: 10 * BATCH]}
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
    raw[start : start + size] = b"\xff" * size
    shard.write_bytes(bytes(raw))
    return shard.name, index.key(i)


def run_until_rank0_killed(data: Path, runs: Path) -> tuple[int, int, int | None, float, str]:
    """Fit until last.ckpt exists, SIGKILL rank 0; returns (rank 0 pid, rank 1 pid, rank 1's exit, seconds, stderr)."""
    last = runs / "r" / "checkpoints" / "last.ckpt"
    main = subprocess.Popen(
        fit_cmd(data, runs, "--trainer.max_epochs", "200", *SHORT),
        cwd=REPO,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
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

    # 2. Resume: one more whole epoch (continuing the step count), then in the next one rank 1 reads a
    #    sample that is not an image: rank 1 exits 2 with one line naming shard and key, and rank 0,
    #    which read nothing wrong, exits 1 naming rank 1 and its bad input, instead of waiting for it.
    bad_epoch = saved["epoch"] + 2
    num_samples = len(load_sample_index(data / "train").shard_id)
    shard, key = corrupt(
        data,
        corrupt_sample_for(1, num_samples, epoch=bad_epoch, step=1, clean_epochs=range(saved["epoch"] + 1, bad_epoch)),
    )
    started = time.monotonic()
    result = subprocess.run(
        fit_cmd(data, runs, "--trainer.max_epochs", str(bad_epoch + 1), "--ckpt_path", "last", *SHORT),
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(f"the resumed run failed after {time.monotonic() - started:.1f} s")
    err = result.stderr
    assert "resumed from" in err + result.stdout, err[-3000:]
    bad = [ln for ln in err.splitlines() if ln.startswith("convnets: error: ")]
    assert len(bad) == 1 and shard in bad[0] and key in bad[0] and "cannot decode" in bad[0], err[-3000:]
    assert result.returncode == 1, err[-3000:]  # rank 0's own exit: a peer failed, it did not meet bad input
    line = last_line(err)
    assert line.startswith("convnets: failed: DDP rank 1 (pid ") and "exited with code 2 (bad input" in line, err[
        -3000:
    ]
    assert "--ckpt_path last" in line

    ckpts = last.parent
    assert [p.name for p in ckpts.iterdir() if ".tmp" in p.name] == []  # no temp file left behind
    resumed = torch.load(last, weights_only=True, map_location="cpu")  # whole: it loads
    assert resumed["epoch"] == saved["epoch"] + 1  # the epoch before the bad one
    assert resumed["global_step"] == saved["global_step"] + TRAIN_BATCHES  # continued, not restarted

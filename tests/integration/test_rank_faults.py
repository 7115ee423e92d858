"""DDP faults from the other side: rank 0 killed, and a corrupt sample that only one rank reads.

Real processes: `convnets fit` with 2 gloo CPU ranks (Lightning starts rank 1 as rank 0's child).
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
import subprocess
import time
from pathlib import Path

import pytest
import torch

from convnets.data_pipelines.epoch_plan import plan_rank
from convnets.data_pipelines.shard_format import load_sample_index
from tests.integration.cli_helpers import REPO, last_line
from tests.integration.test_rank_death import BATCH, RANKS, children, env, fit_cmd

pytestmark = [pytest.mark.integration, pytest.mark.dali, pytest.mark.slow]
# --ddp_timeout_s bounds the watchdog's waits (5 s grace + at most this); also the process group's
# rendezvous timeout: rank 1 starts (imports torch, DALI) seconds after rank 0 on a loaded machine.
TIMEOUT_S = 30
EXIT_BOUND_S = 60  # generous for a loaded 2-core machine
TRAIN_BATCHES = 2  # per epoch (--trainer.limit_train_batches): epochs of a second or two
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def short_epochs(*extra: str) -> list[str]:
    return ["--trainer.limit_train_batches", str(TRAIN_BATCHES), "--trainer.limit_val_batches", "1",
            "--ddp_timeout_s", str(TIMEOUT_S), *extra]


@contextlib.contextmanager
def subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip(f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


REAPED_ELSEWHERE = "reaped by rank 0"  # rank 0 waits on its child ranks: one that exits first is its to reap


def reap(pid: int, timeout_s: float) -> int | str | None:
    """The exit code of `pid` (re-parented to us), REAPED_ELSEWHERE, or None if it still runs after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            if not Path(f"/proc/{pid}").exists():
                return REAPED_ELSEWHERE
        else:
            if done:
                return os.waitstatus_to_exitcode(status)
        time.sleep(0.1)
    return None


def kill_if_alive(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)


def test_killed_rank0_stops_rank1_naming_it_and_resume_continues(digits_shards, tmp_path):
    runs = tmp_path / "runs"
    last = runs / "r" / "checkpoints" / "last.ckpt"
    with subreaper():
        main = subprocess.Popen(fit_cmd(digits_shards, runs, "--trainer.max_epochs", "200", *short_epochs()),
                                cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        rank1 = None
        try:
            wait_for(last, main)
            ranks = children(main.pid)
            assert last.exists() and len(ranks) == 1, (main.poll(), ranks, main.poll() is not None and main.stderr.read()[-3000:])
            rank1 = ranks[0]
            main.kill()  # SIGKILL rank 0 while rank 1 trains
            main.wait()
            killed_at = time.monotonic()
            code = reap(rank1, EXIT_BOUND_S)  # rank 1, re-parented to this process
            took = time.monotonic() - killed_at
            err = main.stderr.read()  # rank 1 wrote to the same pipe; EOF once it is gone
        finally:
            if main.poll() is None:
                main.kill()
            if rank1 is not None:
                kill_if_alive(rank1)
    assert code is not None, f"rank 1 (pid {rank1}) still running {EXIT_BOUND_S} s after rank 0 was killed"
    assert code == 1, err[-3000:]
    assert not Path(f"/proc/{rank1}").exists()  # reaped: nothing left running
    line = last_line(err)  # rank 1's summary (its gloo error, noted by the watchdog) or the watchdog's own line
    assert line.startswith(f"convnets: failed: DDP rank 0 (pid {main.pid}) died"), err[-3000:]
    assert "--ckpt_path last" in line
    print(f"rank 1 exited {took:.1f} s after rank 0 was killed")

    saved = torch.load(last, weights_only=True, map_location="cpu")
    assert saved["global_step"] == (saved["epoch"] + 1) * TRAIN_BATCHES  # last.ckpt: a whole epoch
    result = subprocess.run(fit_cmd(digits_shards, runs, "--trainer.max_epochs", str(saved["epoch"] + 2),
                                    "--ckpt_path", "last", *short_epochs()),
                            cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = torch.load(last, weights_only=True, map_location="cpu")
    assert resumed["global_step"] == saved["global_step"] + TRAIN_BATCHES  # continued, not restarted


def corrupt_sample_for(rank: int, num_samples: int, *, epoch: int, step: int) -> int:
    """A sample in batch `step` of `rank`'s plan for `epoch`, read by no rank in the epochs before
    (none of their first batches, prefetch included: the first 10 batches of each rank's plan)."""
    def plans(e):
        return [plan_rank(num_samples, rank=r, world_size=RANKS, batch_size=BATCH, seed=0, epoch=e, shuffle=True)
                for r in range(RANKS)]

    earlier = {int(i) for e in range(epoch) for p in plans(e) for i in p.indices[: 10 * BATCH]}
    idx, valid = plans(epoch)[rank].batch(step)
    candidates = [int(i) for i, v in zip(idx, valid) if v and int(i) not in earlier]
    assert candidates, "no sample fits; pick another step"
    return candidates[0]


@pytest.mark.parametrize("bad_rank", [1, 0])
def test_corrupt_sample_on_one_rank_stops_every_rank_with_exit_2(digits_shards, tmp_path, bad_rank):
    data = tmp_path / "shards"
    shutil.copytree(digits_shards, data)
    index = load_sample_index(data / "train")
    # Epoch 0 trains and saves last.ckpt; the second batch of epoch 1 on `bad_rank` holds the bad sample.
    i = corrupt_sample_for(bad_rank, len(index.shard_id), epoch=1, step=1)
    shard = index.shard_paths[int(index.shard_id[i])]
    raw = bytearray(shard.read_bytes())
    start, size = int(index.img_offset[i]), int(index.img_size[i])
    raw[start: start + size] = b"\xff" * size  # not an image; the tar and its index stay valid
    shard.write_bytes(bytes(raw))

    runs = tmp_path / "runs"
    with subreaper():
        main = subprocess.Popen(fit_cmd(data, runs, "--trainer.max_epochs", "3", *short_epochs()),
                                cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        rank1 = None
        try:
            while rank1 is None and main.poll() is None:
                rank1 = next(iter(children(main.pid)), None)
                time.sleep(0.05)
            _, err = main.communicate(timeout=300)
            code1 = reap(rank1, EXIT_BOUND_S) if rank1 else None
        finally:
            if main.poll() is None:
                main.kill()
            if rank1 is not None:
                kill_if_alive(rank1)
    assert rank1 is not None, err[-3000:]
    assert main.returncode == 2, err[-3000:]
    assert code1 is not None, f"rank 1 (pid {rank1}) still running: {err[-3000:]}"
    assert code1 in (2, REAPED_ELSEWHERE), f"rank 1 exit code {code1}: {err[-3000:]}"
    assert not Path(f"/proc/{rank1}").exists()
    line = last_line(err)
    assert line.startswith("convnets: error: "), err[-3000:]
    assert shard.name in line and index.key(i) in line and "cannot decode" in line, line
    if bad_rank == 1:  # rank 0, the user's process, names the rank that read it
        assert f"DDP rank 1 (pid {rank1}" in line, line

    ckpts = runs / "r" / "checkpoints"
    assert [p.name for p in ckpts.iterdir() if ".tmp" in p.name] == []  # no temp file left behind
    saved = torch.load(ckpts / "last.ckpt", weights_only=True, map_location="cpu")
    assert (saved["epoch"], saved["global_step"]) == (0, TRAIN_BATCHES)  # epoch 0's save, whole

"""Checkpoints: a killed or disk-full save never costs the previous one; loads refuse what they cannot trust."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from convnets.errors import CheckpointError
from convnets.platform.training.checkpoint_io import (
    AtomicCheckpointIO,
    CheckpointWriteError,
    atomic_torch_save,
    load_checkpoint,
    with_atomic_io,
)

# A child that saves ~16 MB checkpoints in a loop through the real plugin, numbering each one.
SAVER = """
import sys, torch
from convnets.platform.training.checkpoint_io import AtomicCheckpointIO
io, path = AtomicCheckpointIO(), sys.argv[1]
weights = torch.arange(4 * 1024 * 1024, dtype=torch.float32)
for n in range(10**6):
    io.save_checkpoint({"state_dict": {"w": weights + n}, "step": n, "hyper_parameters": {"arch": "lenet5"}}, path)
"""


def lightning_like(step: int = 0, arch: str = "lenet5") -> dict:
    return {
        "state_dict": {"w": torch.full((4,), float(step))},
        "global_step": step,
        "hyper_parameters": {"arch": arch, "num_classes": 10},
    }


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "last.ckpt"
    tmp = path.with_name(path.name + ".tmp")
    child = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], env={**os.environ})
    try:
        deadline = time.monotonic() + 120
        while not path.exists() and time.monotonic() < deadline:  # the first complete save
            time.sleep(0.05)
        assert path.exists(), "the saver never finished a checkpoint"
        time.sleep(random.uniform(0.0, 0.5))
        while not (tmp.exists() and tmp.stat().st_size > 0) and time.monotonic() < deadline:
            time.sleep(0.001)  # kill while a save is under way: its temporary file is growing
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    assert tmp.exists(), "the kill did not land during a save; nothing was tested"
    ckpt = load_checkpoint(path)
    n = ckpt["step"]
    # every weight belongs to save n (arange + n): the file is one whole save, not a mix of two
    assert torch.equal(ckpt["state_dict"]["w"], torch.arange(4 * 1024 * 1024, dtype=torch.float32) + n)
    # a torn file: what a plain torch.save to the final name would have left (unless the kill landed
    # between the temporary file's last byte and the rename: then it is whole, and harmless too)
    if tmp.stat().st_size < path.stat().st_size:
        with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
            load_checkpoint(tmp)


@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MiB tmpfs (a real full disk); skipped where mounting is not allowed (not root)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); test_disk_full_injected covers the same path")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full_keeps_the_previous_checkpoint_and_says_so(tiny_fs):
    path = tiny_fs / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(lightning_like(1), path)
    big = {**lightning_like(2), "state_dict": {"w": torch.zeros(1024 * 1024)}}  # 4 MiB: does not fit
    with pytest.raises(CheckpointWriteError, match="no space left") as info:
        AtomicCheckpointIO().save_checkpoint(big, path)
    assert info.value.errno == errno.ENOSPC and str(path) in str(info.value)
    assert load_checkpoint(path)["global_step"] == 1
    assert sorted(p.name for p in tiny_fs.iterdir()) == ["last.ckpt"]  # no partial file left behind


def test_disk_full_injected(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save(lightning_like(1), path)

    def full_disk(obj, f):
        f.write(b"PK\x03\x04partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError, match="no space left"):
        atomic_torch_save(lightning_like(2), path)
    monkeypatch.undo()
    assert load_checkpoint(path)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_loading_refuses_bad_files_with_one_line(tmp_path):
    good = tmp_path / "good.ckpt"
    atomic_torch_save(lightning_like(3), good)
    assert load_checkpoint(good, arch="lenet5")["global_step"] == 3
    cases = {
        "missing.ckpt": (None, "no such checkpoint"),
        "text.ckpt": (b"hello, not a checkpoint\n", "not a PyTorch checkpoint"),
        "truncated.ckpt": (good.read_bytes()[: len(good.read_bytes()) // 2], "not a PyTorch checkpoint"),
    }
    for name, (content, needle) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=needle) as info:
            load_checkpoint(tmp_path / name)
        assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="model 'lenet5', not 'alexnet'"):
        load_checkpoint(good, arch="alexnet")
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint"):
        load_checkpoint(plain)


class Payload:  # unpickling this would run code chosen by whoever wrote the file
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_loading_never_unpickles_code(tmp_path):
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, evil)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError, match="weights_only=True"):  # the plugin Lightning loads through
        AtomicCheckpointIO().load_checkpoint(evil)


def test_the_platform_adds_atomic_io_unless_the_user_chose_one():
    from lightning_fabric.plugins import TorchCheckpointIO

    assert [type(p) for p in with_atomic_io(None)] == [AtomicCheckpointIO]
    assert [type(p) for p in with_atomic_io(["bf16-mixed"])][1:] == [AtomicCheckpointIO]
    own = TorchCheckpointIO()
    assert with_atomic_io([own]) == [own]

"""The Slurm preemption hook without Slurm: a plain `convnets fit` signalled mid-epoch, then again during
validation, saves where it stopped each time, and its resumes end bit-equal to an uninterrupted run with one
history (metrics.json and W&B, read back with W&B's own reader)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tests.integration.cli_helpers import REPO, convnets
from tests.slurm.helpers import train_count
from tests.wandb_history import history

pytestmark = [pytest.mark.integration, pytest.mark.dali, pytest.mark.slow]

HOOK = ["--trainer.callbacks+=convnets.slurm.requeue_signal.RequeueOnSignal", "--trainer.callbacks.check_every", "1"]
PROBE = "--trainer.callbacks+=tests.slurm.probes.SignalSelf"
LOG_EVERY = 50  # the recipe's log_every_n_steps (Lightning's default)


def _fit(tmp_path, data, name: str, *extra):
    return convnets(
        "fit",
        "--config",
        REPO / "configs" / "lenet5_digits.yaml",
        "--data.data_dir",
        data,
        "--runs_dir",
        tmp_path,
        "--run_name",
        name,
        "--trainer.max_epochs",
        "2",
        "--trainer.log_every_n_steps",
        LOG_EVERY,
        "--trainer.enable_progress_bar",
        "false",
        *extra,
        timeout=600,
    )


@pytest.fixture(scope="module")
def whole(digits_shards, tmp_path_factory):
    """The uninterrupted run every test here ends equal to: (its run folder, its last.ckpt), trained once."""
    runs = tmp_path_factory.mktemp("uninterrupted")
    result = _fit(runs, digits_shards, "whole")
    assert result.returncode == 0, result.stderr[-3000:]
    return runs / "whole", torch.load(
        runs / "whole" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )


def _assert_bit_equal(ckpt, expected: dict) -> None:
    final = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert final["global_step"] == expected["global_step"]
    assert [
        k for k in expected["state_dict"] if not torch.equal(final["state_dict"][k], expected["state_dict"][k])
    ] == []


def _saved_step(result) -> int:
    return int(re.search(r"signal received after step -?\d+: saved .* at step (\d+)", result.stderr).group(1))


def test_signalled_fit_saves_and_resumes_into_one_run(digits_shards, tmp_path, whole):
    whole_dir, expected = whole
    first = _fit(tmp_path, digits_shards, "cut", *HOOK, PROBE, "--trainer.callbacks.step", "70")
    assert first.returncode == 3, first.stderr[-3000:]  # stopped, not finished, not crashed
    assert (
        "SIGUSR2 received: saved last.ckpt at step 71; to resume, run the same command with --ckpt_path last"
        in first.stderr
    )
    ckpt = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == _saved_step(first) == 71

    second = _fit(
        tmp_path, digits_shards, "cut", *HOOK, PROBE, "--trainer.callbacks.val_batch", "1", "--ckpt_path", "last"
    )
    assert second.returncode == 3, second.stderr[-3000:]
    assert "resumed from" in second.stderr and "at step 71" in second.stderr
    assert "(during validation)" in second.stderr
    third = _fit(tmp_path, digits_shards, "cut", *HOOK, "--ckpt_path", "last")
    assert third.returncode == 0, third.stderr[-3000:]
    assert "rerunning the validation of epoch 0" in third.stderr

    _assert_bit_equal(ckpt, expected)

    # One history: each epoch once, with the same validation numbers as the uninterrupted run.
    ours, theirs = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "cut", whole_dir))
    assert [h["epoch"] for h in ours["history"]] == [h["epoch"] for h in theirs["history"]] == [0, 1]
    assert [h["epoch"] for h in ours["val_history"]] == [0, 1]
    assert [h["val_top1"] for h in ours["val_history"]] == [h["val_top1"] for h in theirs["val_history"]]
    assert ours["fit_seconds"] > 0

    # W&B, as W&B reads it back: three processes, steps only forward, every row of the uninterrupted run once.
    runs = history(tmp_path / "cut")
    rows = [row for rows in runs for row in rows]
    steps = [row["_step"] for row in rows]
    assert len(runs) >= 2 and steps == sorted(steps) and len(set(steps)) == len(steps)
    reference = [row for rows in history(whole_dir) for row in rows]

    # Train rows at the same steps with the same losses; each epoch's validation once, with the same numbers
    # (a validation rerun after a requeue logs one step later than the uninterrupted run did).
    def train(rs):
        return [(r["_step"], r["train_loss"]) for r in rs if "train_loss" in r]

    def val(rs):
        return [(r["epoch"], r["val_top1"], r["val_loss"]) for r in rs if "val_top1" in r]

    assert train(rows) == train(reference) and val(rows) == val(reference)


def test_a_signal_during_start_up_saves_before_the_first_step_and_resumes_exactly(digits_shards, tmp_path, whole):
    """The warning can come while the job is still starting (data module, checkpoint loading): the ranks act on
    it when training starts, save at step 0 and stop; the resumed run ends as an uninterrupted one."""
    # No sanity validation: its batches are a safe point too; here the start of training must be the one.
    nosanity = ["--trainer.num_sanity_val_steps", "0"]
    first = _fit(tmp_path, digits_shards, "early", *HOOK, PROBE, "--trainer.callbacks.at_setup", "true", *nosanity)
    assert first.returncode == 3, first.stderr[-3000:]
    assert _saved_step(first) == 0
    second = _fit(tmp_path, digits_shards, "early", *HOOK, "--ckpt_path", "last", *nosanity)
    assert second.returncode == 0, second.stderr[-3000:]
    _assert_bit_equal(tmp_path / "early" / "checkpoints" / "last.ckpt", whole[1])


def test_a_signal_during_a_checkpoint_save_is_acted_on_at_the_next_check(digits_shards, tmp_path, whole):
    """The warning arrives while the end-of-epoch checkpoint is being written: that save finishes undisturbed,
    the next check (the next training step, check_every 1) saves last.ckpt there and the run stops as a
    preempted one does; the resumed run ends bit-equal to an uninterrupted one."""
    per_epoch = -(-train_count(digits_shards) // 16)  # the recipe's batch, one process
    first = _fit(tmp_path, digits_shards, "insave", *HOOK, PROBE, "--trainer.callbacks.at_save", "true")
    assert first.returncode == 3, first.stderr[-3000:]
    signalled = int(re.search(r"probe: signalled during the checkpoint save at step (\d+)", first.stdout).group(1))
    assert signalled == per_epoch  # the end of epoch 0's save (its checkpoint callback's)
    assert re.search(
        rf"signal received after step {signalled}: saved .* at step {signalled + 1} \(during training\)", first.stderr
    )
    assert "SIGUSR2 received: saved last.ckpt at step" in first.stderr
    ckpt = tmp_path / "insave" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == signalled + 1
    second = _fit(tmp_path, digits_shards, "insave", *HOOK, "--ckpt_path", "last")
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"at step {signalled + 1}" in second.stderr  # resumed from the save, not from epoch 0's checkpoint
    _assert_bit_equal(ckpt, whole[1])

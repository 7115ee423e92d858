"""SIGTERM under DDP: no collective inside the signal handler, one agreement every few steps (sigterm_sync)."""

from __future__ import annotations

import signal

import pytest
import pytorch_lightning as pl
import torch.distributed as dist
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from convnets.platform.training.sigterm_sync import SigtermSync


@pytest.fixture
def collectives(monkeypatch):
    """Record broadcasts and all-reduces instead of making them (no process group: a trainer, not a fit)."""
    made = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "broadcast", lambda tensor, *a, **k: made.append("broadcast"))

    def all_reduce(tensor, *args, **kwargs):  # as if another rank had noted nothing: MAX keeps ours
        made.append(("all_reduce", int(tensor.item())))

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    return made


def _trainer(sync: SigtermSync | None) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )  # world size 2; no process is started
    if sync is not None:
        sync.setup(trainer, None, "fit")
    trainer._signal_connector.register_signal_handlers()  # what fit() does after the setup hooks
    return trainer


def _sigterm(trainer: pl.Trainer) -> None:
    try:
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    finally:
        trainer._signal_connector.teardown()


def test_the_handler_makes_no_collective_and_the_ranks_stop_at_the_next_check(collectives):
    sync = SigtermSync(check_every=3)
    trainer = _trainer(sync)
    trainer.state.fn = TrainerFn.FITTING  # in fit(), between steps
    step = trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor  # called at the start of every step
    step(), step(), step()
    assert collectives == [("all_reduce", 0)]  # one check in 3 steps, nothing noted yet
    _sigterm(trainer)
    assert collectives == [("all_reduce", 0)] and not trainer.received_sigterm  # noted, not yet agreed
    step(), step()
    with pytest.raises(SIGTERMException):
        step()
    assert collectives[-1] == ("all_reduce", 1) and trainer.received_sigterm


def test_lightnings_own_handling_broadcasts_which_is_why_it_is_replaced(collectives):
    # If a Lightning release drops the collective in its handler, this fails: SigtermSync can then go.
    trainer = _trainer(None)
    _sigterm(trainer)
    assert collectives == ["broadcast"] and trainer.received_sigterm


def test_outside_fit_the_flag_is_set_at_once_without_a_collective(collectives):
    trainer = _trainer(SigtermSync(check_every=3))
    trainer.state.fn = TrainerFn.TESTING  # `convnets test` under DDP: no step check comes
    _sigterm(trainer)
    assert trainer.received_sigterm and collectives == []

"""SIGTERM under DDP: the ranks agree every few steps, with no collective in the signal handler.

Lightning 2.6 (PR #20825) handles SIGTERM with a `dist.broadcast` INSIDE the signal handler and one
more broadcast of rank 0's flag at the start of EVERY training step, read back with `.item()`:
- the handler's broadcast: when every rank is signalled (Slurm preemption, a group kill, and
  Lightning's own forward to its child ranks, so rank 1 gets it twice) each rank adds one or two
  unmatched broadcasts wherever its main thread was; the collective sequences stop pairing up and
  the ranks hang until the DDP timeout (seen here: a SIGTERMed sweep's two ranks alive minutes later);
- the per-step broadcast: one more collective and a host sync (`.item()` of a GPU tensor) per step,
  the kind of stall the step is kept free of (tests/gpu sync test; issue 8).
SigtermSync replaces both: the handler only notes the signal; every CHECK_EVERY_STEPS steps, at the
same step on every rank (every rank runs the same number of steps: epoch_plan), one all-reduce
(MAX) of the notes decides, and then every rank stops there together with Lightning's own
SIGTERMException. Lightning's rank-local checks read `received_sigterm`, which is set only then (in fit's
validation too: it waits for the next step); outside fit (validate, test) at once: no step check comes.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException
from typing_extensions import override

log = logging.getLogger(__name__)

CHECK_EVERY_STEPS = 10  # ~0.3 s at an H100's AlexNet step; seconds on a CPU: well inside Slurm's KillWait


class SigtermSync(pl.Callback):
    """Installed at setup in DDP runs (world size > 1) of a Lightning that has the handlers it replaces."""

    def __init__(self, *, check_every: int = CHECK_EVERY_STEPS) -> None:
        self.check_every = check_every
        self.noted = False  # this rank received SIGTERM, not yet agreed on
        self.steps = 0

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        connector = getattr(trainer, "_signal_connector", None)
        loop = trainer.fit_loop.epoch_loop
        if (
            trainer.world_size <= 1
            or not hasattr(connector, "_sigterm_notifier_fn")
            or not hasattr(loop, "_broadcast_sigterm_tensor")
        ):
            return  # one process, or another Lightning: its own handling stays
        if any(getattr(c, "handles_sigterm", False) for c in trainer.callbacks):
            return  # a Slurm job: its preemption hook saves and requeues on SIGTERM (slurm/requeue_signal.py)

        def note(signum: int, frame: object) -> None:
            log.info(
                "[rank %d] Received SIGTERM: %d (the ranks stop together within %d steps)",
                trainer.global_rank,
                signum,
                self.check_every,
            )
            launcher = trainer.strategy.launcher
            if not self.noted and launcher is not None:
                launcher.kill(signum)  # as Lightning does: the ranks it started get it too
            self.noted = True
            if trainer.state.fn != TrainerFn.FITTING:  # validate/test/predict: no step check comes; stop at
                connector.received_sigterm = True  # the next batch, as Lightning does (minus the broadcast)

        def agree() -> None:
            self.steps += 1
            if self.steps % self.check_every:
                return
            flag = torch.tensor([int(self.noted)], device=trainer.strategy.root_device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item():  # one host sync per check_every steps
                connector.received_sigterm = True
                raise SIGTERMException()

        # register_signal_handlers() runs after the setup hooks and installs connector._sigterm_notifier_fn.
        connector._sigterm_notifier_fn = note
        loop._broadcast_sigterm_tensor = agree

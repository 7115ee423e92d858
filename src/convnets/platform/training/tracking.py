"""What every run records about itself: resolved config, package versions, git revision."""

from __future__ import annotations

import netrc
import os
import sys
from pathlib import Path

from convnets.utils.environment import git_revision, package_versions


def wandb_offline() -> bool:
    """Offline unless the user asked for online or has credentials (env var or ~/.netrc)."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "disabled", "dryrun"):
        return True
    if os.environ.get("WANDB_API_KEY"):
        return False
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is None
    except (OSError, netrc.NetrcParseError):
        return True


def run_info(config: dict) -> dict:
    return {
        "config": config,
        "versions": package_versions(),
        "git_revision": git_revision(),
        "argv": sys.argv,
        "cwd": os.getcwd(),
    }


WANDB_ID_FILE = "wandb_id"  # in the run folder: every fit, requeue, resume, test and evaluation appends to this run


def run_wandb_id(run_dir: Path) -> str:
    """The W&B run id of a run folder, created once (the first process to get there wins).

    DDP ranks and requeued Slurm jobs may race here: the id is written to a temp file and
    hard-linked into place, which fails when another process linked first; then its id is read.
    """
    path = Path(run_dir) / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    import secrets
    import string

    alphabet = string.ascii_lowercase + string.digits  # W&B's run id characters
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{WANDB_ID_FILE}.{os.getpid()}.tmp")
    tmp.write_text("".join(secrets.choice(alphabet) for _ in range(8)) + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


WANDB_STEP_FILE = "wandb_step"  # in the run folder: the highest step any process of this run logged to W&B
# How often W&B's service writes the rows it holds to the run's .wandb file (its default: 15 s). Slurm's
# SIGTERM reaches that service process too and ends it at once, without writing what it holds: what a
# run logged in the last WANDB_FLUSH_S before a preemption is lost. One small write a second costs nothing.
WANDB_FLUSH_S = 1.0


def wandb_settings():
    import wandb

    return wandb.Settings(x_transaction_log_flush_interval=WANDB_FLUSH_S)


def logged_wandb_step(run_dir: Path) -> int:
    """The highest W&B step logged by earlier processes of this run (-1: none)."""
    path = Path(run_dir) / WANDB_STEP_FILE
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return -1


def record_wandb_step(run_dir: Path, step: int) -> None:
    path = Path(run_dir) / WANDB_STEP_FILE
    tmp = path.with_name(f"{WANDB_STEP_FILE}.{os.getpid()}.tmp")
    tmp.write_text(f"{step}\n")
    os.replace(tmp, path)


def finish_wandb() -> None:
    """Finish this process's W&B run, so its service writes every row it holds before the process goes.

    Called before a requeue or a cancel hands over. If Slurm's SIGTERM already ended the service,
    there is nothing left to write: say so and carry on (the checkpoint is what matters now).
    """
    import logging

    import wandb

    if wandb.run is None:
        return
    try:
        wandb.run.finish()
    except Exception as exc:  # noqa: BLE001 - the service is gone (SIGTERM); the run's rows up to its last flush are kept
        logging.getLogger(__name__).warning(
            "W&B run not finished cleanly (%s); rows of its last %.0f s may be missing", exc, WANDB_FLUSH_S
        )


def own_wandb_service() -> None:
    """Forget a W&B service address inherited from a parent process (a sweep, a Slurm job, pytest).

    Attached to the parent's service, this process would find that service still holding the
    stream of the same run id (the run folder's one id) and fail with "run ID ... is in use";
    without the address it starts its own service. Call before anything initialises wandb.
    """
    os.environ.pop("WANDB_SERVICE", None)


def wandb_logger(**kwargs):
    """Lightning's WandbLogger, less the `anonymous` setting it always passes: W&B >= 0.19 warns that
    the setting has no effect on every run, a line no user can act on."""
    from pytorch_lightning.loggers import WandbLogger

    logger = WandbLogger(**kwargs)
    logger._wandb_init.pop("anonymous", None)  # read by wandb.init() when the run starts, not before
    return logger

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
    return {"config": config, "versions": package_versions(), "git_revision": git_revision(),
            "argv": sys.argv, "cwd": os.getcwd()}


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

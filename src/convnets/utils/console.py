"""Quiet console output: the platform's own lines, not third-party noise a user cannot act on.

Filtered by default, each by its exact message (any other warning still shows): Lightning's
"Tip", hardware and distributed banners and model summary (its INFO logs), W&B's banners (the
platform's one `W&B: ...` line replaces them), and warnings about how the platform uses Lightning
on purpose (metrics logged per device, the batch transfer override, short epochs vs the logging
interval, a deprecation inside Lightning's own code). `convnets --verbose ...` or CONVNETS_DEBUG=1
brings all of it back, and tracebacks too.
"""

from __future__ import annotations

import logging
import os
import warnings

DEBUG_ENV = "CONVNETS_DEBUG"

# (message regex, why the user cannot act on it)
KNOWN_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # inside Lightning's own _pytree helper
    r"The number of training batches \(\d+\) is smaller than the logging interval",  # the platform logs per epoch
    r"It is recommended to use `self\.log\('[a-z_0-9]+', \.\.\., sync_dist=True\)`",  # per-device rates, on purpose
    r"You have overridden `transfer_batch_to_device` in `LightningModule`",  # the module's DALI-aware transfer
    r"The `srun` command is available on your system but is not used",  # a local run on a Slurm login node
)
QUIET_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric")


def _drop_library_info(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not record.name.startswith(QUIET_LOGGERS)


def verbose() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def quiet_console() -> None:
    """After logging.basicConfig: install the filters in this process; a no-op in verbose mode. DDP ranks
    and child commands run `convnets` again and install their own; W&B's silence travels in the environment."""
    if verbose():
        return
    for message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    # Lightning sets its loggers' level when it is imported (after this runs): filter their records
    # at the root's handlers instead, where they arrive by propagation.
    for handler in logging.getLogger().handlers:
        handler.addFilter(_drop_library_info)
    os.environ.setdefault("WANDB_SILENT", "true")  # W&B's banners; the platform prints one line instead


def wandb_line(run) -> str:
    """The one line that says where a W&B run is (replacing W&B's own banners)."""
    if getattr(run, "offline", False) or getattr(run.settings, "mode", "") == "offline":
        folder = os.path.relpath(run.dir.removesuffix("/files")) if run.dir else "?"
        return f"W&B: offline run {run.id} in {folder} (upload it later with `wandb sync {folder}`)"
    return f"W&B: {run.url or run.id}"

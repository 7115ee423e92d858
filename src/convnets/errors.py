"""The one exception family that means "your input is bad" (exit code 2 at the command line).

Anything derived from ConvnetsInputError was found bad before or while reading the user's input:
a config value, a data folder, a shard, a sample, a checkpoint file. The command prints its one-line
message and exits 2; every other exception is a failure during the run (exit 1, with the
traceback). Plain ValueError is deliberately not enough: torch and torchmetrics raise ValueError
for shape mismatches deep inside a model, and those are bugs to debug, not input to fix.
"""

from __future__ import annotations


class ConvnetsInputError(ValueError):
    """Bad input or configuration; the message is one line naming the thing and the fix."""


class ConfigError(ConvnetsInputError):
    """A command-line option or config value that cannot work (found before anything is written)."""


class CheckpointError(ConvnetsInputError):
    """A checkpoint file that is missing, truncated, not a checkpoint, or from another model."""

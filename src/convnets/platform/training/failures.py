"""How a failed command explains itself: which exit code, and the one summary line.

Exit 2 means "fix your input": an exception derived from ConvnetsInputError (bad config value,
data folder, shard, sample, checkpoint) or from ValueError in a convnets module, or a command-line
parse error; commands other than fit/validate/test/predict also treat a plain ValueError as input. Everything else is a
failure during the run: exit 1, the traceback, then one line that says what to do where we know
(out of memory: lower the batch; a DDP peer gone: which rank, and how to resume).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator

from convnets.errors import ConvnetsInputError

INPUT_ERROR_EXIT = 2
RUN_FAILURE_EXIT = 1
OOM_HINT = (
    "out of memory: lower --data.batch_size (it is per rank), or use --trainer.precision bf16-mixed; "
    "resume with --ckpt_path last"
)
# What gloo and NCCL say when a peer process died or a collective waited past the DDP timeout.
PEER_GONE = (
    "Connection closed by peer",
    "Connection reset by peer",
    "NCCL communicator was aborted",
    "Watchdog caught collective operation timeout",
)
PEER_GONE_TYPES = ("DistBackendError", "DistNetworkError")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and its causes/contexts (DALI and Lightning re-raise with `from`)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_out_of_memory(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")  # never import torch just to explain an error
    oom_type = getattr(torch, "OutOfMemoryError", None) if torch else None
    for e in _chain(exc):
        if (oom_type and isinstance(e, oom_type)) or isinstance(e, MemoryError):
            return True
        text = str(e).lower()
        if "out of memory" in text or "cudaerrormemoryallocation" in text or "cuda_error_out_of_memory" in text:
            return True
    return False


def is_input_error(exc: BaseException) -> bool:
    """Bad input/configuration (exit 2)? An out-of-memory is never the data's fault, whoever reports it."""
    if isinstance(exc, argparse.ArgumentError):  # jsonargparse's parse errors (exit_on_error=False)
        return True
    # convnets' own ValueError subclasses (ShardError, DataError, CheckpointError, ...) all mean bad
    # input, wherever they are defined; builtins.ValueError (torch's, numpy's) does not.
    ours = isinstance(exc, ValueError) and type(exc).__module__.split(".")[0] == "convnets"
    return (isinstance(exc, ConvnetsInputError) or ours) and not is_out_of_memory(exc)


def exit_code(exc: BaseException, *, value_error_is_input: bool = False) -> int:
    """2 for bad input; `value_error_is_input` for commands whose every ValueError is about their input."""
    plain_input = (
        value_error_is_input and isinstance(exc, (ValueError, FileNotFoundError)) and not is_out_of_memory(exc)
    )
    return INPUT_ERROR_EXIT if plain_input or is_input_error(exc) else RUN_FAILURE_EXIT


def one_line(exc: BaseException) -> str:
    """The message on one line (jsonargparse splits "key:\\n  reason" over lines)."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, argparse.ArgumentError):
        return " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text.splitlines()[0]


def dead_rank(exc: BaseException) -> int | None:
    """The rank a collective names as gone, where the backend says (NCCL/gloo messages vary)."""
    for e in _chain(exc):
        match = re.search(r"\b(?:rank|Rank)[ :=]+(\d+)\b.*?(?:died|exited|failed|timed out|closed)", str(e))
        if match:
            return int(match.group(1))
    return None


def failure_summary(exc: BaseException) -> str:
    """The last line a failed run prints: what broke and what to do next."""
    line = f"{type(exc).__name__}: {one_line(exc)}"
    if is_out_of_memory(exc):
        return f"{OOM_HINT}: {line}"
    if any(type(e).__name__ in PEER_GONE_TYPES or any(m in str(e) for m in PEER_GONE) for e in _chain(exc)):
        noted = [n for e in _chain(exc) for n in getattr(e, "__notes__", []) if n.startswith("DDP rank ")]
        if noted and "bad input" in noted[0]:  # resuming as is would meet the same sample again
            return (
                f"{noted[0]}; fix or rewrite it (`convnets shards verify DIR --deep` lists every bad sample), "
                f"then resume with --ckpt_path last: {line}"
            )
        if noted:  # the rank watchdog saw which local rank died, and how
            return f"{noted[0]}; resume with --ckpt_path last: {line}"
        rank = dead_rank(exc)
        who = f"DDP rank {rank}" if rank is not None else "another DDP rank"
        return (
            f"{who} stopped or stopped answering (its own error, or the watchdog line naming it, is above); "
            f"resume with --ckpt_path last: {line}"
        )
    return line

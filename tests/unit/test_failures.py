"""Exit codes and summary lines: 2 only for bad input, 1 (with a hint where one helps) for run failures."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

from convnets.data_pipelines.loading.dali_loader import DataError
from convnets.data_pipelines.shards.format import ShardError
from convnets.errors import CheckpointError, ConfigError, ConvnetsInputError
from convnets.platform.training.failures import dead_rank, exit_code, failure_summary, one_line
from convnets.platform.training.rank_watchdog import describe_exit


def raised(fn) -> BaseException:
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - the test inspects whatever was raised
        return exc
    raise AssertionError("nothing raised")


def test_input_error_classes_share_one_base():
    for cls in (ShardError, DataError, ConfigError, CheckpointError):
        assert issubclass(cls, ConvnetsInputError) and issubclass(cls, ValueError)
        assert exit_code(cls("x")) == 2


def test_any_value_error_subclass_defined_in_convnets_is_input():
    Local = type("UnsafeMemberError", (ValueError,), {"__module__": "convnets.data_pipelines.shards.tar_members"})
    assert exit_code(Local("member '../x'")) == 2
    Foreign = type("SomeLibError", (ValueError,), {"__module__": "torchmetrics.utilities"})
    assert exit_code(Foreign("x")) == 1


def test_a_value_error_inside_a_model_is_a_run_failure():
    # torch raises ValueError for this shape mismatch: a bug to debug, not input to fix
    exc = raised(lambda: F.cross_entropy(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long)))
    assert isinstance(exc, ValueError)
    assert exit_code(exc) == 1
    assert exit_code(exc, value_error_is_input=True) == 2  # `convnets shards`: its ValueErrors are about its input


def test_out_of_memory_is_never_bad_input_and_says_lower_the_batch():
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert exit_code(oom) == 1
    assert "lower --data.batch_size" in failure_summary(oom)
    # the DALI loader reports any pipeline failure as DataError: an OOM inside it is still an OOM
    dali = DataError("DALI failed while reading the shards: CUDA error: out of memory")
    assert exit_code(dali) == 1 and "lower --data.batch_size" in failure_summary(dali)
    wrapped = raised(lambda: _raise_from(RuntimeError("step failed"), oom))
    assert exit_code(wrapped) == 1 and "lower --data.batch_size" in failure_summary(wrapped)


def _raise_from(outer: BaseException, cause: BaseException) -> None:
    raise outer from cause


def test_parse_errors_are_input_and_fit_on_one_line():
    exc = argparse.ArgumentError(None, "Parser key \"data.batch_size\":\n  Expected a <class 'int'>. Got value: abc")
    assert exit_code(exc) == 2
    assert one_line(exc) == "Parser key \"data.batch_size\": Expected a <class 'int'>. Got value: abc"


def test_a_gone_peer_names_the_rank_where_the_backend_does():
    gloo = RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4711")
    assert exit_code(gloo) == 1
    assert failure_summary(gloo).startswith("another DDP rank stopped")
    nccl = RuntimeError("NCCL communicator was aborted on rank 3 after it timed out")
    assert dead_rank(nccl) == 3 and failure_summary(nccl).startswith("DDP rank 3 stopped")
    assert dead_rank(RuntimeError("Connection closed by peer")) is None
    gloo.__notes__ = ["DDP rank 1 (pid 4242) killed by SIGKILL"]  # what the rank watchdog adds
    assert failure_summary(gloo).startswith("DDP rank 1 (pid 4242) killed by SIGKILL; resume with --ckpt_path last")
    gloo.__notes__ = [f"DDP rank 1 (pid 4242) {describe_exit(2)}"]  # the peer met bad input: fix it before resuming
    summary = failure_summary(gloo)
    assert "exited with code 2 (bad input" in summary and summary.index("verify") < summary.index("--ckpt_path last")
    assert failure_summary(ValueError("plain")) == "ValueError: plain"


@pytest.mark.parametrize("text", ["", "first\nsecond"])
def test_one_line_is_one_line(text):
    assert "\n" not in one_line(RuntimeError(text)) and one_line(RuntimeError(text))

"""What a user asks of Slurm (`--slurm.*` flags over a `configs/cluster/*.yaml` fragment), and the
Trainer geometry it implies: one task per GPU, `devices` = tasks per node, `num_nodes` = nodes."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml

CLUSTER_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "cluster"  # package data
# A task that dies (SIGKILL by the OOM-killer, a segfault, an error) ends the whole step at once:
# without it the other ranks wait in their next collective until the process group's timeout (900 s).
SRUN_ARGS = ("--kill-on-bad-exit=1",)


@dataclass(frozen=True)
class SlurmRequest:
    """One job's resources; `tasks_per_node` defaults to `gpus_per_node` (one rank per GPU)."""

    nodes: int = 1
    gpus_per_node: int = 1
    tasks_per_node: int | None = None  # needed when gpus_per_node is 0 (CPU ranks, gloo)
    cpus_per_task: int | None = None
    mem: str | None = None  # sbatch --mem (e.g. 64G; 0 = the whole node)
    time: int = 60  # minutes (sbatch --time)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclusive: bool = False
    additional_parameters: dict = field(default_factory=dict)  # any other sbatch flag: {"mail-type": "END"}
    max_requeues: int = 3  # preemptions/timeouts survived before the run fails
    signal_delay_s: int = 90  # Slurm signals this long before the time limit: time to checkpoint
    preempt_check_steps: int = 10  # ranks agree on a pending signal every N steps (one tiny all-reduce)

    @property
    def ntasks_per_node(self) -> int:
        return self.tasks_per_node if self.tasks_per_node is not None else self.gpus_per_node

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node

    def trainer_flags(self) -> list[str]:
        """The LightningCLI flags this request implies (appended after the user's, so they win)."""
        strategy = "ddp" if self.world_size > 1 else "auto"
        return [
            "--trainer.devices",
            str(self.ntasks_per_node),
            "--trainer.num_nodes",
            str(self.nodes),
            "--trainer.accelerator",
            "gpu" if self.gpus_per_node else "cpu",
            "--trainer.strategy",
            strategy,
        ]

    def sbatch_parameters(self) -> dict:
        """submitit SlurmExecutor parameters (sbatch flags)."""
        params = {
            "nodes": self.nodes,
            "ntasks_per_node": self.ntasks_per_node,
            "time": self.time,
            "signal_delay_s": self.signal_delay_s,
        }
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        for key in ("cpus_per_task", "mem", "partition", "account", "qos", "constraint"):
            if getattr(self, key) is not None:
                params[key] = getattr(self, key)
        if self.exclusive:
            params["exclusive"] = True
        # --requeue: the job may go back in the queue (its own `scontrol requeue` before the time limit, or a
        # preemption) also where slurm.conf's JobRequeue=0 makes jobs non-requeueable by default.
        params["additional_parameters"] = {"requeue": True, **self.additional_parameters}
        params["srun_args"] = list(SRUN_ARGS)
        return params


def parse_time(value: object) -> int:
    """Minutes from `90`, `"90"`, `"HH:MM:SS"`, `"MM:SS"` or `"D-HH:MM:SS"` (Slurm's forms)."""
    text = str(value).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not match:
        raise ValueError(f"--slurm.time {text!r}: use minutes, HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = (int(g) if g else None for g in match.groups())
    if b is None:  # minutes, or D-HH
        minutes = a * 60 if days is not None else a
    elif c is None:  # MM:SS, or D-HH:MM
        minutes = a * 60 + b if days is not None else a + (b > 0)
    else:
        minutes = a * 60 + b + (c > 0)
    return (days or 0) * 24 * 60 + minutes


def add_slurm_arguments(parser: argparse.ArgumentParser) -> None:
    """`--slurm.KEY` for every SlurmRequest field, plus `--slurm.cluster` (defaults None: fragment wins)."""
    group = parser.add_argument_group("Slurm request (the command line overrides --slurm.cluster)")
    group.add_argument(
        "--slurm.cluster",
        dest="slurm_cluster",
        default=None,
        help=f"a YAML fragment: a path or a name in {CLUSTER_CONFIGS} ({', '.join(cluster_names())})",
    )
    for f in fields(SlurmRequest):
        flag, dest = f"--slurm.{f.name}", f"slurm_{f.name}"
        if f.name == "exclusive":
            group.add_argument(flag, dest=dest, action="store_const", const=True, default=None)
        else:
            group.add_argument(flag, dest=dest, default=None, metavar=f.name.upper())


def cluster_names() -> list[str]:
    return sorted(p.stem for p in CLUSTER_CONFIGS.glob("*.yaml"))


def load_fragment(name: str) -> dict:
    path = Path(name)
    if not path.is_file():
        path = CLUSTER_CONFIGS / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.is_file():
        raise ValueError(
            f"--slurm.cluster {name}: no such file, nor a packaged fragment ({', '.join(cluster_names())})"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"--slurm.cluster {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--slurm.cluster {path}: expected a mapping of --slurm.* keys")
    known = {f.name for f in fields(SlurmRequest)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"--slurm.cluster {path}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(known))}")
    return data


def _convert(name: str, value: object) -> object:
    """A flag's or fragment's value as the field's type; ValueError naming the flag."""
    if value is None:
        return None
    try:
        if name == "time":
            return parse_time(value)
        if name == "additional_parameters":
            parsed = json.loads(value) if isinstance(value, str) else value
            if not isinstance(parsed, dict):
                raise ValueError("expected a JSON object")
            return parsed
        if name == "exclusive":
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        if name in ("mem", "partition", "account", "qos", "constraint"):
            return str(value)
        number = int(value)
    except (TypeError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"--slurm.{name} {value!r}: {str(exc).splitlines()[0]}") from None
    if number < 0 or (
        number == 0 and name in ("nodes", "tasks_per_node", "cpus_per_task", "time", "preempt_check_steps")
    ):
        raise ValueError(f"--slurm.{name} {value}: must be {'at least 1' if number == 0 else 'positive'}")
    return number


def request_from_args(args: argparse.Namespace) -> SlurmRequest:
    """Dataclass defaults, then the cluster fragment, then the command line; checked for consistency."""
    values = load_fragment(args.slurm_cluster) if args.slurm_cluster else {}
    values.update(
        {
            f.name: getattr(args, f"slurm_{f.name}")
            for f in fields(SlurmRequest)
            if getattr(args, f"slurm_{f.name}") is not None
        }
    )
    request = replace(SlurmRequest(), **{k: _convert(k, v) for k, v in values.items()})
    if request.ntasks_per_node < 1:
        raise ValueError("--slurm.gpus_per_node 0 runs on CPUs: give --slurm.tasks_per_node (processes per node)")
    if request.gpus_per_node and request.ntasks_per_node != request.gpus_per_node:
        raise ValueError(
            f"--slurm.tasks_per_node {request.ntasks_per_node} with --slurm.gpus_per_node "
            f"{request.gpus_per_node}: one task per GPU, leave tasks_per_node out"
        )
    return request


def check_trainer(config: dict, request: SlurmRequest) -> None:
    """A fit override or config that contradicts the request is an error (before anything is submitted)."""
    trainer = config.get("trainer") or {}
    devices, nodes, accelerator = trainer.get("devices"), trainer.get("num_nodes"), trainer.get("accelerator")
    if devices not in (None, "auto", request.ntasks_per_node, str(request.ntasks_per_node)):
        raise ValueError(
            f"trainer.devices {devices} contradicts the Slurm request ({request.ntasks_per_node} "
            "tasks per node); leave trainer.devices out, submit derives it"
        )
    if nodes not in (None, 1, request.nodes):
        raise ValueError(
            f"trainer.num_nodes {nodes} contradicts --slurm.nodes {request.nodes}; "
            "leave trainer.num_nodes out, submit derives it"
        )
    wants_gpu = str(accelerator) in ("gpu", "cuda")
    if accelerator not in (None, "auto") and wants_gpu != bool(request.gpus_per_node):
        raise ValueError(f"trainer.accelerator {accelerator} contradicts --slurm.gpus_per_node {request.gpus_per_node}")

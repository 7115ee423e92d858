"""`convnets slurm template`: a plain sbatch script (srun + `convnets fit`) for users without submitit.

    convnets slurm template --slurm.gpus_per_node 8 --slurm.nodes 2 -- --config C --run_name alexnet-2n > job.sbatch

The job preempts and resumes the way `convnets submit` does: Slurm sends USR2 to every task
`--slurm.signal_delay_s` seconds before the time limit (`#SBATCH --signal=USR2@90`), or on
`scancel --signal=USR2 JOB`; every rank notes it, the ranks agree at the next check and all save
runs/<name>/checkpoints/last.ckpt between two steps (no collective inside a signal handler), then
rank 0 runs `scontrol requeue` (`#SBATCH --requeue`), up to --slurm.max_requeues times. The
requeued job runs the same script: `--ckpt_path last` loads that checkpoint, which is why the run
name is required. Lightning's own Slurm requeue (USR1, an hpc_ckpt_N.ckpt that `--ckpt_path last`
would not load) is off. A task that dies ends the whole job at once (`srun --kill-on-bad-exit=1`).
Every user string is shell-quoted.
"""

from __future__ import annotations

import argparse
import shlex

from convnets.slurm.job import job_fit_args
from convnets.slurm.request import SRUN_ARGS, add_slurm_arguments, request_from_args


def add_template_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.add_argument("--job-name", default="convnets", help="sbatch --job-name")
    parser.add_argument("--logs", default="runs/slurm-%j", help="sbatch --output prefix (%%j = job id)")
    add_slurm_arguments(parser)
    parser.add_argument(
        "fit_args", nargs=argparse.REMAINDER, help="`convnets fit` flags, e.g. --config X --run_name NAME"
    )


def run_name(fit_args: list[str]) -> str | None:
    for i, arg in enumerate(fit_args):
        if arg.startswith("--run_name="):
            return arg.split("=", 1)[1] or None
        if arg == "--run_name" and i + 1 < len(fit_args):
            return fit_args[i + 1]
    return None


def sbatch_lines(request, *, job_name: str, logs: str) -> list[str]:
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={shlex.quote(job_name)}",
        f"#SBATCH --nodes={request.nodes}",
        f"#SBATCH --ntasks-per-node={request.ntasks_per_node}",
        f"#SBATCH --time={request.time}",
        f"#SBATCH --output={shlex.quote(logs + '.out')}",
        f"#SBATCH --error={shlex.quote(logs + '.err')}",
        f"#SBATCH --signal=USR2@{request.signal_delay_s}",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
    ]
    if request.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={request.gpus_per_node}")
    for key in ("cpus_per_task", "mem", "partition", "account", "qos", "constraint"):
        if getattr(request, key) is not None:
            lines.append(f"#SBATCH --{key.replace('_', '-')}={shlex.quote(str(getattr(request, key)))}")
    if request.exclusive:
        lines.append("#SBATCH --exclusive")
    return lines + [f"#SBATCH --{k}={shlex.quote(str(v))}" for k, v in request.additional_parameters.items()]


def template(fit_args: list[str], request, *, job_name: str, logs: str) -> str:
    if run_name(fit_args) is None:
        raise ValueError(
            "--run_name NAME is required (after `--`): a requeued job finds its "
            "checkpoint (runs/NAME/checkpoints/last.ckpt) and its W&B run by that name"
        )
    fit = ["convnets", "fit", *fit_args, *request.trainer_flags()]
    fit = [*job_fit_args(fit, request.preempt_check_steps, max_requeues=request.max_requeues), "--ckpt_path", "last"]
    lines = sbatch_lines(request, job_name=job_name, logs=logs)
    lines += [
        "",
        "# One task per GPU; Lightning takes each rank from SLURM_PROCID / SLURM_NTASKS. A requeued job",
        "# runs this script again and resumes from runs/<run_name>/checkpoints/last.ckpt.",
        shlex.join(["srun", *SRUN_ARGS, *fit]),
        "",
    ]
    return "\n".join(lines)


def run_template(args: argparse.Namespace) -> int:
    fit_args = [a for a in args.fit_args if a != "--"]
    print(template(fit_args, request_from_args(args), job_name=args.job_name, logs=args.logs))
    return 0

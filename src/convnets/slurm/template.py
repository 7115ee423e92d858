"""`convnets slurm template`: a plain sbatch script (srun + `convnets fit`) for users without submitit.

Lightning reads the ranks from srun's SLURM_* variables; requeueing is Lightning's own here
(SIGUSR1 90 s ahead: it saves an hpc checkpoint and runs `scontrol requeue`), since no submitit
runs in the job. Every user string is shell-quoted.
"""
from __future__ import annotations

import argparse
import shlex

from convnets.slurm.request import add_slurm_arguments, request_from_args


def add_template_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.add_argument("--job-name", default="convnets", help="sbatch --job-name")
    parser.add_argument("--logs", default="runs/slurm-%j", help="sbatch --output prefix (%%j = job id)")
    add_slurm_arguments(parser)
    parser.add_argument("fit_args", nargs=argparse.REMAINDER, help="`convnets fit` flags, e.g. --config X")


def template(fit_args: list[str], request, *, job_name: str, logs: str) -> str:
    lines = ["#!/bin/bash", f"#SBATCH --job-name={shlex.quote(job_name)}", f"#SBATCH --nodes={request.nodes}",
             f"#SBATCH --ntasks-per-node={request.ntasks_per_node}", f"#SBATCH --time={request.time}",
             f"#SBATCH --output={shlex.quote(logs + '.out')}", f"#SBATCH --error={shlex.quote(logs + '.err')}",
             f"#SBATCH --signal=USR1@{request.signal_delay_s}", "#SBATCH --requeue"]
    if request.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={request.gpus_per_node}")
    for key in ("cpus_per_task", "mem", "partition", "account", "qos", "constraint"):
        if getattr(request, key) is not None:
            lines.append(f"#SBATCH --{key.replace('_', '-')}={shlex.quote(str(getattr(request, key)))}")
    if request.exclusive:
        lines.append("#SBATCH --exclusive")
    lines += [f"#SBATCH --{k}={shlex.quote(str(v))}" for k, v in request.additional_parameters.items()]
    fit = ["convnets", "fit", *fit_args, *request.trainer_flags(), "--ckpt_path", "last"]
    lines += ["", "# One task per GPU; Lightning takes each rank from SLURM_PROCID / SLURM_NTASKS.",
              "# Give --run_name so a requeued job finds runs/<name>/checkpoints/last.ckpt.",
              "srun " + shlex.join(fit), ""]
    return "\n".join(lines)


def run_template(args: argparse.Namespace) -> int:
    fit_args = [a for a in args.fit_args if a != "--"]
    print(template(fit_args, request_from_args(args), job_name=args.job_name, logs=args.logs))
    return 0

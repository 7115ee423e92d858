"""The Slurm commands' arguments and dispatch: `convnets submit`, `convnets status`, `convnets slurm template`.

    convnets submit --config configs/alexnet2012_imagenet.yaml --slurm.nodes 2 --slurm.gpus_per_node 8 \\
        --slurm.partition gpu --slurm.time 2-00:00:00 --run_name alexnet-2n   # 16 ranks, 1 per GPU
    convnets submit --config C --slurm.cluster mycluster --dry-run        # print the sbatch script only
    convnets submit --config C --sweep sweep.yaml --slurm.cluster mycluster --wait   # a job array + table

A dry run and `convnets slurm template` work without Slurm installed: they print, submit nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from convnets.slurm.request import add_slurm_arguments, request_from_args


def submit_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convnets submit",
        description=__doc__,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any other flag is a `convnets fit` flag (--config, --model.*, ...).",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the sbatch script and the fit command; submit nothing"
    )
    parser.add_argument("--sweep", type=Path, default=None, help="YAML list of override sets: one array job each")
    parser.add_argument("--wait", action="store_true", help="wait for the job(s) to end; print the summary table")
    add_slurm_arguments(parser)
    return parser


def run_submit(argv: list[str]) -> int:
    """`convnets submit ARGV`: its unknown flags are `convnets fit` flags."""
    args, fit_args = submit_parser().parse_known_args(argv)
    request = request_from_args(args)
    if args.sweep is not None:
        from convnets.slurm.arrays import run_sweep_file

        return run_sweep_file(args, fit_args, request)
    from convnets.slurm.submit import run_one

    return run_one(args, fit_args, request)


def add_slurm_commands(sub) -> None:
    """`submit` (parsed by submit_parser: listed here for --help), `status`, `slurm template`."""
    from convnets.slurm.status import add_status_arguments
    from convnets.slurm.template import add_template_arguments

    sub.add_parser(
        "submit",
        help="submit a fit (or a sweep as a job array) to Slurm (see `convnets submit --help`)",
        add_help=False,
    )
    add_status_arguments(sub.add_parser("status", help="a run's Slurm job state, requeues, metrics and logs"))
    slurm = sub.add_parser("slurm", help="Slurm helpers").add_subparsers(
        dest="slurm_command", metavar="SLURM", required=True
    )
    add_template_arguments(
        slurm.add_parser(
            "template",
            help="print a plain sbatch script (srun + convnets fit)",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )


def run_slurm_command(args: argparse.Namespace) -> int:
    """`convnets status` or `convnets slurm template` (parsed by the `convnets` parser)."""
    if args.command == "status":
        from convnets.slurm.status import run_status

        return run_status(args)
    from convnets.slurm.template import run_template

    return run_template(args)

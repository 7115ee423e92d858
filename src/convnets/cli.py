"""The `convnets` command: the front door, dispatching to the parts.

    convnets demo                          # LeNet-5 on real digits, end to end (what `make demo` runs)
    convnets models [--json]               # registered models: parameters, GFLOPs, input size
    convnets shards digits|mnist|imagefolder|imagenet|verify ...   # write or check webdataset shards
    convnets fit|validate|test|predict --config configs/X.yaml [--key value ...]   # LightningCLI
    convnets sweep ablation --config configs/X.yaml        # the lecture slides' ablation study
    convnets bench model --arch alexnet --batch 64 --json OUT   # Lightning loop vs bare PyTorch
    convnets submit --config configs/X.yaml --slurm.nodes 2 --slurm.gpus_per_node 8 [--dry-run]  # Slurm
    convnets status runs/NAME               # Slurm job state, requeues, latest metrics, logs
    convnets slurm template --slurm.gpus_per_node 8 -- --config configs/X.yaml   # a plain sbatch script
    convnets evaluate --ckpt runs/NAME/checkpoints/last.ckpt --data SHARDS [--crops 10] [--mc-dropout N]
    convnets analyze invariance|layers --ckpt CKPT --data SHARDS          # Zeiler & Fergus's analyses

`convnets --verbose COMMAND ...` (or CONVNETS_DEBUG=1) shows what third-party libraries print and
full tracebacks; by default the console holds the platform's own lines.

Exit codes: 0 success, 2 bad input or configuration (one line on stderr), 1 failure during a run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
# Training runs exit 2 only for convnets' own input errors (ConvnetsInputError and the other
# ValueError subclasses defined in convnets): a plain ValueError there comes from deep inside a model
# or torch, a failure to debug (exit 1). The other commands raise plain ValueError only for their own
# arguments and the files they read; their failures during a run are RuntimeErrors.
STRICT_INPUT_ERRORS = LIGHTNING_COMMANDS


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `convnets` parser; `command` (argv[0]) decides which heavy commands get their arguments.

    Building it must not import torch or Lightning (~8 s on 2 cores) unless the command needs them,
    or `convnets status`, `shards`, `slurm template` and `--help` would pay that every time
    (tests/unit/test_cli_imports.py).
    """
    from convnets.data_pipelines.shards.cli import add_shards_subcommands
    from convnets.platform.bench.cli import add_bench_subcommands
    from convnets.platform.experiments.demo import add_demo_arguments
    from convnets.platform.experiments.sweep import add_sweep_subcommands

    parser = argparse.ArgumentParser(
        prog="convnets", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show what third-party libraries print, and full tracebacks (as CONVNETS_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"LightningCLI `{name}` (see `convnets {name} --help`)", add_help=False)
    models = sub.add_parser("models", help="list registered models with parameters and GFLOPs")
    models.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    models.add_argument("--num-classes", type=int, default=1000, help="classes for the counts (default 1000)")
    add_demo_arguments(
        sub.add_parser(
            "demo", help="train LeNet-5 on real digits end to end", formatter_class=argparse.RawDescriptionHelpFormatter
        )
    )
    add_shards_subcommands(sub)
    sweeps = sub.add_parser("sweep", help="train a family of variants and tabulate them").add_subparsers(
        dest="sweep_command", metavar="SWEEP", required=True
    )
    add_sweep_subcommands(sweeps)
    from convnets.slurm.request import add_slurm_arguments

    add_slurm_arguments(sweeps.choices["ablation"])  # --slurm.*: the variants as a Slurm job array
    from convnets.slurm.cli import add_slurm_commands

    add_slurm_commands(sub)
    add_bench_subcommands(
        sub.add_parser("bench", help="benchmarks: JSON + a table").add_subparsers(
            dest="bench_command", metavar="BENCH", required=True
        )
    )
    _add_evaluation_subcommands(sub, command)
    return parser


def _add_evaluation_subcommands(sub, command: str | None) -> None:
    evaluate = sub.add_parser("evaluate", help="multi-crop top-1/top-5 of a checkpoint, MC dropout, plots")
    analyze = sub.add_parser("analyze", help="invariance and per-layer linear probes of a checkpoint")
    if command not in ("evaluate", "analyze"):  # their modules import torch and Lightning
        return
    from convnets.platform.analysis.analyze import add_analyze_subcommands
    from convnets.platform.evaluation.evaluate import add_evaluate_arguments

    add_evaluate_arguments(evaluate)
    add_analyze_subcommands(analyze.add_subparsers(dest="analyze_command", metavar="ANALYSIS", required=True))


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] == "submit":  # its unknown flags are `convnets fit` flags
        from convnets.slurm.cli import run_submit

        return run_submit(argv[1:])
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from convnets.platform.training.lightning_cli import run_lightning

        run_lightning(argv)
        return 0
    args = _parser(argv[0] if argv else None).parse_args(argv)
    if args.command == "models":
        from convnets.models.table import models_table

        print(models_table(as_json=args.json, num_classes=args.num_classes))
        return 0
    if args.command == "demo":
        from convnets.platform.experiments.demo import run_demo

        return run_demo(args)
    if args.command == "shards":
        from convnets.data_pipelines.shards.cli import run_shards_command

        return run_shards_command(args)
    if args.command in ("evaluate", "analyze"):
        from convnets.platform.analysis.analyze import run_analyze_command
        from convnets.platform.evaluation.evaluate import run_evaluate_command

        return run_evaluate_command(args) if args.command == "evaluate" else run_analyze_command(args)
    if args.command == "bench":
        from convnets.platform.bench.cli import run_bench_command

        return run_bench_command(args)
    if args.command in ("status", "slurm"):
        from convnets.slurm.cli import run_slurm_command

        return run_slurm_command(args)
    if any(value is not None for key, value in vars(args).items() if key.startswith("slurm_")):
        from convnets.slurm.arrays import run_ablation_on_slurm

        return run_ablation_on_slurm(args)
    from convnets.platform.experiments.sweep import run_sweep_command

    return run_sweep_command(args)


def main(argv: list[str] | None = None) -> int:
    from convnets.platform.training.failures import exit_code, failure_summary, one_line
    from convnets.platform.training.tracking import own_wandb_service
    from convnets.utils.console import DEBUG_ENV, quiet_console, verbose

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--verbose"]:  # everything third-party libraries print, and tracebacks (as CONVNETS_DEBUG=1)
        argv = argv[1:]
        os.environ[DEBUG_ENV] = "1"  # inherited by DDP ranks and child commands
    quiet_console()
    own_wandb_service()  # each command its own W&B service (see tracking.own_wandb_service)
    try:
        return _dispatch(argv)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if verbose():
            raise
        code = exit_code(exc, value_error_is_input=not argv or argv[0] not in STRICT_INPUT_ERRORS)
        if code == 2:  # bad input or configuration: one line naming it, no traceback
            print(f"convnets: error: {one_line(exc)}", file=sys.stderr)
        else:  # a failure during the run: the traceback, then one summary line
            traceback.print_exc()
            print(f"convnets: failed: {failure_summary(exc)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())

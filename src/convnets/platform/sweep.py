"""`convnets sweep ablation`: placeholder until the ablation issue lands."""
from __future__ import annotations

import argparse


def add_sweep_subcommands(subparsers: argparse._SubParsersAction) -> None:
    subparsers.add_parser("ablation", help="train every ablation variant and tabulate them")


def run_sweep_command(args: argparse.Namespace) -> int:
    raise ValueError("sweep ablation is not built yet")

"""The `convnets` command loads torch and Lightning only for the commands that need them.

Importing them costs ~8 s on 2 cores (Lightning pulls torchmetrics, torchvision, torch._dynamo and
scipy.signal), so `convnets status`, `slurm template`, `shards` and `--help` must not: a fresh
interpreter builds the parser for each light command and reports what got imported.
"""

from __future__ import annotations

import json
import subprocess
import sys

LIGHT = [None, "status", "slurm", "shards", "bench", "sweep", "demo", "models", "submit"]
PROBE = """
import json, sys
import convnets.cli as cli
heavy = {}
for command in json.loads(sys.argv[1]):
    cli._parser(command)
    heavy[str(command)] = sorted(m for m in ("torch", "pytorch_lightning", "nvidia.dali", "wandb") if m in sys.modules)
print(json.dumps(heavy))
"""


def _imported_after_parsers(commands: list) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(commands)], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout)


def test_light_commands_build_their_parser_without_torch_or_lightning():
    assert _imported_after_parsers(LIGHT) == {str(c): [] for c in LIGHT}


def test_evaluate_gets_its_arguments_when_it_is_the_command():
    from convnets.cli import _parser

    args = _parser("evaluate").parse_args(["evaluate", "--ckpt", "a.ckpt", "--data", "shards", "--crops", "10"])
    assert args.ckpt.name == "a.ckpt" and args.crops == 10
    args = _parser("analyze").parse_args(["analyze", "layers", "--ckpt", "a.ckpt", "--data", "shards"])
    assert args.analyze_command == "layers"

"""`convnets sweep ablation`: the lecture slides' ablation study, one `convnets fit` + `convnets test` per variant.

    convnets sweep ablation --config configs/alexnet_small_imagenette.yaml           # all 8 variants
    convnets sweep ablation --config configs/alexnet_small_imagenette.yaml --dry-run # plan, params, commands
    convnets sweep ablation --config C --variants full,no_fc7,lrn_off --epochs 1 --out runs/abl \\
        -- --data.batch_size 32 --trainer.limit_train_batches 20   # after `--`: LightningCLI flags

Each variant is a set of `--model.*` flags on top of the config (Zeiler & Fergus's layer removals,
and the AlexNet paper's LRN, overlapping-pooling and dropout claims). Before anything trains,
every variant's model is built once (exact parameter count, one forward pass at the input size),
so a bad option fails in seconds with one line naming the variant. Then each variant runs as child
processes (DDP re-executes its command line, which must be the training alone):

    convnets fit  --config C [extra] <variant flags> --runs_dir OUT --run_name VARIANT [...]
    convnets test --config C [extra] <variant flags> --runs_dir OUT --run_name VARIANT \\
        --trainer.devices 1 --ckpt_path OUT/VARIANT/checkpoints/last.ckpt

`variant_commands` is the single place that maps a variant to those command lines (a Slurm job
array can submit the same lines). A variant whose OUT/VARIANT/metrics.json holds test_top1 is
skipped, so an interrupted sweep resumes where it stopped. The results go to OUT/ablation.md,
OUT/ablation.json, OUT/ablation.png and one W&B summary run under OUT/wandb.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from convnets.platform.experiments import ablation_table
from convnets.platform.experiments.ablation_variants import VARIANTS, PlannedVariant, Variant, select_variants
from convnets.platform.training.failures import one_line
from convnets.utils.children import ChildFailed, run_convnets
from convnets.utils.files import write_json

log = logging.getLogger(__name__)

MODEL_OPTIONS = ("ablate", "norm", "pool", "dropout", "init")  # ClassifierModule's model-option flags
OWNED_FLAGS = ("--config", "--runs_dir", "--run_name", "--ckpt_path")  # the sweep sets these itself
COMMANDS_FILE = "sweep_commands.json"  # in each variant's folder: the command lines that made it


@dataclass(frozen=True)
class SweepSettings:
    """Everything that shapes the child command lines, besides the variant."""

    config: Path  # absolute
    out: Path  # absolute
    epochs: int | None = None
    devices: int | None = None
    accelerator: str | None = None
    extra: tuple[str, ...] = field(default=())  # LightningCLI flags given after `--`


def add_sweep_subcommands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ablation",
        help="train every ablation variant and tabulate them",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, required=True, help="LightningCLI YAML of the full model")
    p.add_argument("--variants", default=None, help=f"comma-separated (default: all): {','.join(VARIANTS)}")
    p.add_argument("--out", type=Path, default=None, help="sweep folder (default: runs/ablation-<config stem>)")
    p.add_argument("--epochs", type=int, default=None, help="--trainer.max_epochs for every variant (default: config)")
    p.add_argument("--devices", type=int, default=None, help="DDP processes for fit (default: config); test uses 1")
    p.add_argument("--accelerator", choices=("cpu", "gpu"), default=None, help="default: the config's")
    p.add_argument("--dry-run", action="store_true", help="print the plan (variants, flags, parameters) and exit")
    p.add_argument("extra", nargs="*", metavar="-- FLAGS", help="LightningCLI flags for every fit and test")


def variant_commands(settings: SweepSettings, variant: Variant) -> list[list[str]]:
    """The `convnets ...` argument lists (fit, then test) that train and test one variant.

    The extra flags come before the variant's, so a variant's own change always wins; the run
    folder, epochs and devices come last. Prefix `python -m convnets.cli` (or `convnets`) to run one.
    """
    s, run_dir = settings, settings.out / variant.name
    common = ["--config", str(s.config), *s.extra, *variant.flags, "--runs_dir", str(s.out), "--run_name", variant.name]
    accelerator = ["--trainer.accelerator", s.accelerator] if s.accelerator else []
    fit = ["fit", *common, *accelerator, "--ckpt_path", "last"]  # an interrupted fit resumes (else: fresh)
    if s.epochs is not None:
        fit += ["--trainer.max_epochs", str(s.epochs)]
    if s.devices is not None:
        fit += ["--trainer.devices", str(s.devices), "--trainer.strategy", "ddp" if s.devices > 1 else "auto"]
    test = [
        "test",
        *common,
        *accelerator,
        "--trainer.devices",
        "1",
        "--trainer.strategy",
        "auto",
        "--ckpt_path",
        str(run_dir / "checkpoints" / "last.ckpt"),
    ]
    return [fit, test]


# -- the plan: everything checked before anything trains ---------------------------------------------
def resolve_config(settings: SweepSettings) -> dict:
    """The config every child resolves (the file, then the extra flags), parsed by LightningCLI's own
    parser: `class_path`/`init_args`, JSON values and repeated --config files read as the children will."""
    from convnets.platform.training.lightning_cli import resolve_fit_config

    if not settings.config.is_file():
        raise ValueError(f"--config {settings.config}: no such file")
    return resolve_fit_config(["--config", str(settings.config), *settings.extra], checks=False)


def _train_manifest(config: dict) -> Path | None:
    """data_dir/train/manifest.json as the children will resolve it (relative to the working directory)."""
    data_dir = (config.get("data") or {}).get("data_dir")
    return Path(str(data_dir)) / "train" / "manifest.json" if data_dir else None


def _model_facts(config: dict) -> tuple[str, int, int | None, dict[str, object]]:
    """(arch, num_classes, image_size, base options) as the children's ClassifierModule will see them."""
    from convnets.data_pipelines.shards.format import read_manifest

    model = dict(config.get("model") or {})
    arch = model.get("arch") or "lenet5"  # ClassifierModule's default
    num_classes = model.get("num_classes")
    if num_classes is None:
        manifest = _train_manifest(config)
        num_classes = read_manifest(manifest.parent).num_classes if manifest and manifest.is_file() else 1000
    options = {k: model[k] for k in MODEL_OPTIONS if model.get(k) is not None}
    return str(arch), int(num_classes), model.get("image_size"), options


def count_params(variant: Variant, arch: str, num_classes: int, image_size: int | None, base: dict[str, object]) -> int:
    """Build the variant's model and run one image through it; ValueError naming the variant on failure."""
    import torch

    from convnets.models import create_model, get_model_info

    info = get_model_info(arch)
    options = {**base, **variant.options}
    missing = sorted(set(options) - set(info.options))
    if missing:
        raise ValueError(
            f"variant {variant.name}: model {arch} has no option {', '.join(missing)} "
            f"(its options: {', '.join(info.options) or 'none'}); use an AlexNet-family model"
        )
    channels, height, _ = info.input_size
    size = int(image_size or height)
    try:
        model = create_model(arch, num_classes=num_classes, **options).eval()
        with torch.no_grad():  # shapes fail here, in a second, rather than in a child process
            model(torch.zeros(1, channels, size, size))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(
            f"variant {variant.name}: {arch} with {options or 'its defaults'} at {size} px fails: {one_line(exc)}"
        ) from None
    return sum(p.numel() for p in model.parameters())


def _state(run_dir: Path) -> str:
    metrics = _read_metrics(run_dir)
    last = (run_dir / "checkpoints" / "last.ckpt").is_file()
    if "test_top1" in metrics:
        return "done"
    if "fit_seconds" in metrics and last:
        return "test"
    return "resume" if last else "fit"


def _read_metrics(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); delete it to rerun that variant") from None


def plan_sweep(settings: SweepSettings, variants: list[Variant], config: dict) -> list[PlannedVariant]:
    arch, num_classes, image_size, base = _model_facts(config)
    planned = []
    for variant in variants:
        params = count_params(variant, arch, num_classes, image_size, base)
        commands = variant_commands(settings, variant)
        state = _state(settings.out / variant.name)
        recorded = settings.out / variant.name / COMMANDS_FILE
        if state != "fit" and recorded.is_file() and json.loads(recorded.read_text()) != commands:
            raise ValueError(
                f"variant {variant.name}: {recorded.parent} was made by other command lines "
                f"(see {COMMANDS_FILE}); pass another --out or delete that folder"
            )
        planned.append(PlannedVariant(variant, params, commands, state))
    return planned


def check_data(config: dict) -> None:
    """Every child needs the training shards: a missing folder stops the sweep before the first fit."""
    manifest = _train_manifest(config)
    if manifest is not None and not manifest.is_file():
        raise ValueError(f"data.data_dir: {manifest} is missing; write the shards first (`convnets shards ...`)")


# -- running ----------------------------------------------------------------------------------------
def run_variant(settings: SweepSettings, item: PlannedVariant) -> None:
    name, run_dir = item.variant.name, settings.out / item.variant.name
    fit, test = item.commands
    if item.state == "done":
        log.info("%s: finished earlier (%s holds test_top1), skipping", name, run_dir / "metrics.json")
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / COMMANDS_FILE, item.commands)
    if item.state in ("fit", "resume"):
        if item.state == "resume":  # `--ckpt_path last`: same epoch, step, optimizer and W&B run
            log.info("%s: resuming the interrupted fit from %s", name, run_dir / "checkpoints" / "last.ckpt")
        else:  # no last.ckpt: stale metrics would merge into the new ones, stale "best" files linger
            (run_dir / "metrics.json").unlink(missing_ok=True)
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        log.info("%s: fit: %s", name, shlex.join(["convnets", *fit]))
        run_convnets(fit, failure=f"variant {name} (see {run_dir})")
    else:
        log.info("%s: fit finished earlier, testing its last checkpoint", name)
    log.info("%s: test: %s", name, shlex.join(["convnets", *test]))
    run_convnets(test, failure=f"variant {name} (see {run_dir})")


def _settings(args: argparse.Namespace) -> SweepSettings:
    extra = tuple(args.extra)
    if extra and not extra[0].startswith("--"):
        raise ValueError(f"unexpected argument {extra[0]!r}; LightningCLI flags go after `--`")
    owned = [a for a in extra if a.split("=")[0] in OWNED_FLAGS]
    if owned:
        raise ValueError(f"{owned[0].split('=')[0]} is set by the sweep itself (use --config/--out)")
    for flag, value in (("--epochs", args.epochs), ("--devices", args.devices)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} {value}: must be at least 1")
    out = args.out or Path("runs") / f"ablation-{args.config.stem}"
    return SweepSettings(
        config=args.config.resolve(),
        out=out.resolve(),
        epochs=args.epochs,
        devices=args.devices,
        accelerator=args.accelerator,
        extra=extra,
    )


def prepare_sweep(args: argparse.Namespace) -> tuple[SweepSettings, dict, list[PlannedVariant]]:
    """Settings, resolved config and the checked plan: everything before the first child starts."""
    if args.sweep_command != "ablation":
        raise ValueError(f"unknown sweep {args.sweep_command!r}; valid sweeps: ablation")
    settings = _settings(args)
    variants = select_variants(args.variants)
    config = resolve_config(settings)
    return settings, config, plan_sweep(settings, variants, config)


def finish_sweep(settings: SweepSettings, config: dict, planned: list[PlannedVariant]) -> str:
    """The table (markdown, JSON, PNG, W&B) once every variant has its test metrics."""
    rows = ablation_table.collect_rows(planned, settings.out)
    markdown = ablation_table.write_outputs(rows, settings.out, title=f"{settings.config.name}: ablation")
    ablation_table.log_wandb(rows, settings.out, project=str(config.get("wandb_project") or "convnets"))
    return markdown


def run_sweep_command(args: argparse.Namespace) -> int:
    settings, config, planned = prepare_sweep(args)
    if args.dry_run:  # the plan is useful before the data exists (counts then assume 1000 classes)
        print(ablation_table.plan_text(planned))
        return 0
    check_data(config)
    for k, item in enumerate(planned, start=1):
        log.info("[%d/%d] %s (%s parameters)", k, len(planned), item.variant.name, f"{item.params:,}")
        try:
            run_variant(settings, item)
        except ChildFailed as exc:
            print(f"convnets: error: {exc}", file=sys.stderr)
            return 1
    print(finish_sweep(settings, config, planned))
    return 0

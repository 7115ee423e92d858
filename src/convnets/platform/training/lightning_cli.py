"""`convnets fit|validate|test|predict`: LightningCLI over ClassifierModule and ShardDataModule.

Every `__init__` argument is a flag and a YAML key (`--model.arch`, `--data.batch_size`,
`--trainer.devices`). Each run gets a folder `runs/<run_name>/` with its checkpoints (last and
best), the resolved config, run_info.json (versions, git revision), the W&B run (offline unless
credentials exist), metrics.json and plots.

    convnets fit --config configs/lenet5_digits.yaml                      # 1 process
    convnets fit --config configs/lenet5_mnist.yaml --trainer.devices 2 \\
        --trainer.strategy ddp --trainer.accelerator cpu                   # 2 CPU processes
    convnets fit --config configs/alexnet_imagenet.yaml --trainer.devices 8 # 8 GPUs
    convnets test --config configs/lenet5_digits.yaml --ckpt_path runs/NAME/checkpoints/last.ckpt
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import warnings
from pathlib import Path

from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.cli import LightningCLI
from typing_extensions import override

from convnets.data_pipelines.loading.datamodule import ShardDataModule
from convnets.errors import ConfigError, ConvnetsInputError
from convnets.platform.training.callbacks import RunWandbLogger, platform_callbacks
from convnets.platform.training.checkpoint_io import with_atomic_io
from convnets.platform.training.module import ClassifierModule
from convnets.platform.training.rank_watchdog import RankWatchdog, ddp_strategy
from convnets.platform.training.sigterm_sync import SigtermSync
from convnets.platform.training.tracking import run_wandb_id, wandb_offline, wandb_settings

RUN_NAME_ENV = "CONVNETS_RUN_NAME"  # DDP ranks re-run the command line: they must agree on the folder
PACKAGED_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def packaged_configs() -> list[str]:
    """Names accepted by `--config NAME` besides file paths (the recipes shipped in the package)."""
    return sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))


def resolve_config_args(argv: list[str]) -> list[str]:
    """`--config alexnet2012_imagenet` -> the packaged file, when no such path exists here."""
    out = list(argv)
    for i, arg in enumerate(out):
        name = (
            out[i + 1]
            if arg == "--config" and i + 1 < len(out)
            else arg.partition("=")[2]
            if arg.startswith("--config=")
            else None
        )
        if name is None or Path(name).exists():
            continue
        packaged = PACKAGED_CONFIGS / (name if name.endswith(".yaml") else f"{name}.yaml")
        if not packaged.exists():
            raise ConfigError(f"--config {name}: no such file, nor a packaged recipe ({', '.join(packaged_configs())})")
        if arg == "--config":
            out[i + 1] = str(packaged)
        else:
            out[i] = f"--config={packaged}"
    return out


def default_run_name(arch: str) -> str:
    name = os.environ.get(RUN_NAME_ENV) or f"{arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    os.environ[RUN_NAME_ENV] = name  # inherited by the rank processes Lightning launches
    return name


class ConvnetsCLI(LightningCLI):
    """LightningCLI with the run folder, W&B and the checkpoint policy filled in."""

    @override
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run_name", type=str | None, default=None, help="run folder name (default: ARCH-TIME)")
        parser.add_argument("--runs_dir", type=str, default="runs", help="parent of the run folders")
        parser.add_argument("--wandb_project", type=str, default="convnets", help="W&B project")
        parser.add_argument(
            "--ddp_timeout_s",
            type=float,
            default=900.0,
            help="DDP: seconds a collective waits for a silent rank before failing (strategy ddp)",
        )

    @override
    def init_parser(self, **kwargs):
        kwargs.setdefault("exit_on_error", False)  # parse errors raise: cli.main prints one line, exit 2
        return super().init_parser(**kwargs)

    @override
    def before_instantiate_classes(self) -> None:
        # Before the Trainer exists: no run folder, W&B run or process group for a config that cannot work.
        from convnets.platform.training.config_checks import check_config, world_size_of

        cfg = self._cfg(self.config)
        check_config(cfg, self.subcommand, world_size=world_size_of(cfg["trainer"]))

    @override
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ConvnetsInputError:
            raise
        except (ValueError, TypeError, MisconfigurationException) as exc:  # a constructor refused a config value
            root = exc
            while root.__cause__ is not None:  # jsonargparse wraps the constructor's own message
                root = root.__cause__
            raise ConfigError(str(root).strip().splitlines()[0] or type(root).__name__) from exc

    @override
    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the checkpoint's hyper-parameters here, before any hook of ours: check it first.
        from convnets.platform.training.config_checks import check_ckpt_path

        check_ckpt_path(self.config[self.config.subcommand].get("ckpt_path") if self.config.get("subcommand") else None)
        try:
            super()._parse_ckpt_path()
        except Exception as exc:
            raise ConfigError(f"--ckpt_path: unreadable checkpoint ({str(exc).strip().splitlines()[0]})") from exc

    @override
    def parse_arguments(self, parser, args) -> None:
        # `--config NAME` names a packaged recipe (DDP ranks re-run the same line and resolve alike).
        if args is None or isinstance(args, (list, tuple)):
            args = resolve_config_args(list(sys.argv[1:] if args is None else args))
        super().parse_arguments(parser, args)

    def _cfg(self, which):
        return which[self.subcommand] if self.subcommand else which  # run=False: no subcommand level

    def run_dir(self) -> Path:
        cfg = self._cfg(self.config)
        return Path(cfg["runs_dir"]) / (cfg["run_name"] or default_run_name(cfg["model"]["arch"]))

    @override
    def instantiate_trainer(self, **kwargs):
        run_dir = self.run_dir()
        cfg = self._cfg(self.config_init)
        trainer_cfg = cfg["trainer"]
        user = list(trainer_cfg.get("callbacks") or [])
        bar = trainer_cfg.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in user)
        callbacks = user + platform_callbacks(run_dir, self._cfg(self.config).as_dict(), progress_bar=bar)
        kwargs["callbacks"] = callbacks + [RankWatchdog(), SigtermSync()]
        kwargs["strategy"] = ddp_strategy(
            trainer_cfg.get("strategy", "auto"), timeout_s=self._cfg(self.config)["ddp_timeout_s"]
        )
        kwargs["plugins"] = with_atomic_io(trainer_cfg.get("plugins"))  # atomic saves, weights-only loads
        kwargs["default_root_dir"] = str(run_dir)
        # The topmost folder this call may create (runs/ itself on a first run), removed on failure.
        created = next((p for p in reversed([run_dir, *run_dir.parents]) if not p.exists()), None)
        try:
            if trainer_cfg.get("logger") in (None, True):
                # One W&B run per run folder: resumed fits, requeued jobs and tests append to it.
                kwargs["logger"] = RunWandbLogger(
                    run_dir=run_dir,
                    project=cfg["wandb_project"],
                    name=run_dir.name,
                    save_dir=str(run_dir),
                    offline=wandb_offline(),
                    log_model=False,
                    id=run_wandb_id(run_dir),
                    resume="allow",
                    settings=wandb_settings(),
                )
            return super().instantiate_trainer(**kwargs)
        except Exception:
            # The Trainer refused its arguments (e.g. devices=0): a bad config leaves nothing behind,
            # not even the W&B id file written just above.
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            raise


CLI_DEFAULTS = {
    "seed_everything_default": 0,
    "trainer_defaults": {"max_epochs": 10, "log_every_n_steps": 50},
    "auto_configure_optimizers": False,
}


def run_lightning(argv: list[str]) -> None:
    with warnings.catch_warnings():
        # argv differs from sys.argv on purpose (`--config NAME` resolved to the packaged file, Slurm's
        # added flags): LightningCLI's "both args and command line arguments" warning is noise here.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        ConvnetsCLI(
            ClassifierModule,
            ShardDataModule,
            # None: LightningCLI reads sys.argv itself.
            args=None if argv == sys.argv[1:] else argv,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"description": __doc__},
            **CLI_DEFAULTS,
        )


class _ParseAndCheck(ConvnetsCLI):
    """Parses and checks the config; builds nothing, writes nothing, seeds nothing."""

    @override
    def _set_seed(self) -> None:
        pass  # seeding here would log "Seed set" and touch the caller's random state

    @override
    def instantiate_classes(self) -> None:
        pass


class _ParseOnly(_ParseAndCheck):
    """Parses only (a plan made before the data exists)."""

    @override
    def before_instantiate_classes(self) -> None:
        pass


def resolve_fit_config(args: list[str], *, checks: bool = True) -> dict:
    """The resolved config `convnets fit ARGS` would train with (ValueError with the parser's message).

    What `convnets submit` checks before anything is queued: types, unknown keys, config files.
    """
    import argparse
    import contextlib
    import io

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            cli = (_ParseAndCheck if checks else _ParseOnly)(
                ClassifierModule, ShardDataModule, args=resolve_config_args(args), run=False, **CLI_DEFAULTS
            )
    except argparse.ArgumentError as exc:  # a parser that raises instead of exiting
        raise ValueError(f"fit config: {' '.join(str(exc).split())}") from None
    except SystemExit:
        text = err.getvalue()
        message = " ".join(text[text.rfind("error:") + len("error:") :].split()) if "error:" in text else "invalid"
        raise ValueError(f"fit config: {message}") from None
    return cli.config.as_dict()

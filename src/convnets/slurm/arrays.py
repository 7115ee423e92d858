"""Sweeps as Slurm job arrays: `convnets submit --sweep FILE` and `convnets sweep ablation --slurm.*`.

A sweep file is a YAML list of override sets, one job each (its own run folder, RUNS_DIR/NAME):

    - {name: lr-0.01, model.optim.lr: 0.01}
    - {name: lr-0.05, model.optim.lr: 0.05, data.batch_size: 64}

Every set is parsed and checked like a single `submit` before the array is queued; with `--wait`
the command waits for all jobs and prints one summary table (also RUNS_DIR/sweep.md and .json).
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import yaml

from convnets.slurm.request import SlurmRequest
from convnets.slurm.submit import PlannedRun, batch_script, resolve_run, submit_jobs
from convnets.utils.files import write_json

SUMMARY_KEYS = ("val_top1", "val_top5", "test_top1", "test_top5")


def load_sweep(path: Path) -> list[dict]:
    if not path.is_file():
        raise ValueError(f"--sweep {path}: no such file")
    try:
        sets = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"--sweep {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(sets, list) or not sets or not all(isinstance(s, dict) for s in sets):
        raise ValueError(f"--sweep {path}: expected a non-empty YAML list of mappings (KEY: VALUE overrides)")
    names = [str(s.get("name", f"{path.stem}-{i}")) for i, s in enumerate(sets)]
    if len(set(names)) != len(names):
        raise ValueError(f"--sweep {path}: two override sets have the same name")
    return [{**s, "name": n} for s, n in zip(sets, names)]


def override_flags(overrides: dict) -> list[str]:
    """{"model.optim.lr": 0.01} -> ["--model.optim.lr=0.01"]; non-strings as JSON (LightningCLI parses both)."""
    return [
        f"--{key}={value if isinstance(value, str) else json.dumps(value)}"
        for key, value in overrides.items()
        if key != "name"
    ]


def _owned(fit_args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in fit_args)


def plan_sweep_file(
    path: Path, fit_args: list[str], request: SlurmRequest, *, need_data: bool = True
) -> list[PlannedRun]:
    if _owned(fit_args, "--run_name"):
        raise ValueError("--run_name: each job of a sweep is named by its override set (`name:`), not the command line")
    base = fit_args if _owned(fit_args, "--runs_dir") else [*fit_args, "--runs_dir", str(Path("runs") / path.stem)]
    return [
        resolve_run([*base, *override_flags(s), "--run_name", s["name"]], request, need_data=need_data)
        for s in load_sweep(path)
    ]


def summary(runs: list[PlannedRun], jobs: list, out: Path) -> str:
    """One row per run: its job, final state and metrics; written to OUT/sweep.md and OUT/sweep.json."""
    from convnets.slurm.status import job_state, latest_metrics

    rows = [
        {
            "run": r.name,
            "job_id": j.job_id,
            "state": job_state(j.job_id),
            "run_dir": str(r.run_dir),
            **{k: latest_metrics(r.run_dir).get(k) for k in SUMMARY_KEYS},
        }
        for r, j in zip(runs, jobs)
    ]
    lines = ["| run | job | state | " + " | ".join(SUMMARY_KEYS) + " |", "|---|---|---|" + "---:|" * len(SUMMARY_KEYS)]
    for row in rows:
        cells = ["n/a" if row[k] is None else f"{100 * row[k]:.2f}%" for k in SUMMARY_KEYS]
        lines.append(f"| {row['run']} | {row['job_id']} | {row['state']} | " + " | ".join(cells) + " |")
    markdown = "\n".join(lines)
    write_json(out / "sweep.json", rows)
    (out / "sweep.md").write_text(markdown + "\n")
    return markdown


def run_sweep_file(args: argparse.Namespace, fit_args: list[str], request: SlurmRequest) -> int:
    runs = plan_sweep_file(args.sweep, fit_args, request, need_data=not args.dry_run)
    out = runs[0].run_dir.parent
    folder = out / f"slurm-{args.sweep.stem}"
    if args.dry_run:
        print(batch_script(folder, request, job_name=args.sweep.stem, count=len(runs)))
        for r in runs:
            print(f"# {r.name}: {shlex.join(['convnets', 'fit', *r.fit_args])}")
        return 0
    jobs = submit_jobs(runs, request, folder=folder, job_name=args.sweep.stem)
    print(f"submitted array {jobs[0].job_id.split('_')[0]}: {len(jobs)} jobs, run folders under {out}; logs {folder}")
    if not args.wait:
        return 0
    from convnets.slurm.status import wait_for

    failed = wait_for(jobs)
    print(summary(runs, jobs, out))
    return 1 if failed else 0


def run_ablation_on_slurm(args: argparse.Namespace) -> int:
    """`convnets sweep ablation ... --slurm.*`: the variants' fit + test as one array, then the table."""
    from convnets.platform.experiments import sweep
    from convnets.slurm.request import request_from_args
    from convnets.slurm.status import wait_for

    request = request_from_args(args)
    settings, config, planned = sweep.prepare_sweep(args)
    if settings.devices is not None:
        raise ValueError("--devices with --slurm.*: the Slurm request sets the processes (--slurm.gpus_per_node ...)")
    todo = [item for item in planned if item.state != "done"]
    runs = []
    for item in todo:
        fit, test = (cmd[1:] for cmd in item.commands)
        fit = [a for i, a in enumerate(fit) if a != "--ckpt_path" and (i == 0 or fit[i - 1] != "--ckpt_path")]
        run = resolve_run(fit, request, need_data=not args.dry_run)  # a plan may precede the data
        runs.append(PlannedRun(name=run.name, run_dir=run.run_dir, fit_args=run.fit_args, test_args=test))
    if args.dry_run:
        print(batch_script(settings.out / "slurm", request, job_name=f"ablation-{settings.out.name}", count=len(runs)))
        for r in runs:
            fit, test = shlex.join(["convnets", "fit", *r.fit_args]), shlex.join(["convnets", "test", *r.test_args])
            print(f"# {r.name}: {fit}; then {test}")
        return 0
    sweep.check_data(config)
    for item in todo:
        write_json(settings.out / item.variant.name / sweep.COMMANDS_FILE, item.commands)
    if runs:
        jobs = submit_jobs(runs, request, folder=settings.out / "slurm", job_name=f"ablation-{settings.out.name}")
        print(f"submitted {len(jobs)} variant jobs ({', '.join(j.job_id for j in jobs)}); waiting for all of them")
        if wait_for(jobs):
            return 1
    print(sweep.finish_sweep(settings, config, planned))
    return 0

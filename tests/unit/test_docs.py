"""The docs cannot rot: every relative link in README.md and docs/*.md resolves (anchors included),
and every `convnets ...` line in their fenced code blocks parses through the command's real parser.

Parsing never runs anything: light commands go through `convnets.cli._parser(command)` (argparse),
`fit|validate|test|predict` (and the fit flags of `submit`, `slurm template` and `sweep ablation`)
through the LightningCLI parser `convnets fit` builds, with the packaged `--config NAME` resolved
as the command does. Placeholders a reader replaces (DIR, CKPT, SHARDS, ...) stay strings; a bare
`N` or `G` where a number goes becomes 2.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`[^`]*`")
ENV_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
NUMBER_PLACEHOLDERS = {"N": "2", "G": "2"}
LIGHTNING = ("fit", "validate", "test", "predict")


def split_page(text: str) -> tuple[list[str], list[list[str]]]:
    """(prose lines, fenced code blocks as lists of lines) of a Markdown page."""
    prose, blocks, block = [], [], None
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            if block is None:
                block = []
            else:
                blocks.append(block)
                block = None
        elif block is None:
            prose.append(line)
        else:
            block.append(line)
    return prose, blocks


def slug(heading: str) -> str:
    """A heading's anchor as Python-Markdown's toc (MkDocs) and GitHub both make it for plain headings."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return re.sub(r"[ ]+", "-", text.strip())


def anchors(page: Path) -> set[str]:
    prose, _ = split_page(page.read_text())
    return {slug(line.lstrip("#")) for line in prose if re.match(r"^#{1,6} ", line)}


def relative_links(page: Path) -> list[str]:
    prose, _ = split_page(page.read_text())
    found = []
    for line in prose:
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: are not checked here
                found.append(target)
    return found


def link_problem(page: Path, target: str) -> str | None:
    path, _, anchor = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    if not dest.exists():
        return f"{page.name}: link {target!r}: no such file {dest}"
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        return f"{page.name}: link {target!r}: no heading with anchor #{anchor} in {dest.name}"
    return None


def command_lines(page: Path) -> list[str]:
    """Every code-block line that runs `convnets` (or `python -m convnets.cli`), continuations joined."""
    _, blocks = split_page(page.read_text())
    commands = []
    for block in blocks:
        pending = ""
        for line in block:
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            line, pending = pending + line, ""
            if re.search(r"(^|\s)convnets(\s|$)|-m convnets\.cli\b", line.split("#")[0]):
                commands.append(" ".join(line.split()))
    return commands


def convnets_argv(line: str) -> list[str] | None:
    """The arguments after `convnets` (env-var prefixes dropped, a shell redirection cut off)."""
    words = shlex.split(line, comments=True)
    for i, word in enumerate(words):
        if word in (">", ">>", "|", "&&", ";", "2>", "&"):
            words = words[:i]
            break
    while words and ENV_PREFIX.match(words[0]):
        words.pop(0)
    if words and words[0] == "convnets":
        return words[1:]
    if "convnets.cli" in words and words[words.index("convnets.cli") - 1] == "-m":
        return words[words.index("convnets.cli") + 1 :]
    return None  # e.g. `docker run ... convnets fit`: the image's name, not the command


@lru_cache(maxsize=1)
def lightning_parser():
    """The parser `convnets fit|validate|test|predict` uses, built once without running anything."""
    from convnets.data_pipelines.loading.datamodule import ShardDataModule
    from convnets.platform.training.lightning_cli import CLI_DEFAULTS, ConvnetsCLI
    from convnets.platform.training.module import ClassifierModule

    class Built(Exception):
        pass

    class ParserOnly(ConvnetsCLI):
        def parse_arguments(self, parser, args) -> None:
            raise Built(parser)

    try:
        ParserOnly(ClassifierModule, ShardDataModule, args=["fit"], **CLI_DEFAULTS)
    except Built as built:
        return built.args[0]
    raise AssertionError("LightningCLI parsed without calling parse_arguments")


def parse_lightning(argv: list[str]) -> None:
    from convnets.platform.training.lightning_cli import resolve_config_args

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            lightning_parser().parse_args(resolve_config_args(argv))
    except SystemExit as exc:
        raise ValueError(err.getvalue().strip() or f"exit {exc.code}") from None


def parse_argparse(parser: argparse.ArgumentParser, argv: list[str], *, known: bool = False):
    """argparse's result, or ValueError with its message instead of its exit."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_known_args(argv) if known else parser.parse_args(argv)
    except SystemExit as exc:
        raise ValueError(err.getvalue().strip() or f"exit {exc.code}") from None


def parse_command(argv: list[str]) -> None:
    """Parse one `convnets` argument list as the command would; ValueError with the parser's message."""
    argv = [NUMBER_PLACEHOLDERS.get(word, word) for word in argv]
    if argv and argv[0] in LIGHTNING:
        return parse_lightning(argv)
    from convnets.slurm.request import request_from_args  # values and the cluster fragment, no sbatch

    if argv and argv[0] == "submit":
        from convnets.slurm.cli import submit_parser

        args, fit_args = parse_argparse(submit_parser(), argv[1:], known=True)
        request_from_args(args)
        return parse_lightning(["fit", *fit_args])
    from convnets.cli import _parser

    args = parse_argparse(_parser(argv[0] if argv else None), argv)
    if args.command == "slurm":
        request_from_args(args)
        parse_lightning(["fit", *[a for a in args.fit_args if a != "--"]])
    if args.command == "sweep":
        if not (REPO / args.config).exists():
            raise ValueError(f"--config {args.config}: no such file")
        request_from_args(args)
        parse_lightning(["fit", "--config", str(args.config), *args.extra])


def runs_convnets(line: str) -> bool:
    try:
        return convnets_argv(line) is not None
    except ValueError:  # unbalanced quotes: kept, so that test_command_parses names the line
        return True


DOC_COMMANDS = [(page, line) for page in PAGES for line in command_lines(page) if runs_convnets(line)]


def test_the_docs_exist_and_show_commands():
    names = {p.name for p in PAGES}
    assert {
        "README.md",
        "index.md",
        "data.md",
        "training.md",
        "cluster.md",
        "evaluation.md",
        "benchmarks.md",
        "ablation.md",
        "failure-modes.md",
        "development.md",
    } <= names
    readme = (REPO / "README.md").read_text()
    _, blocks = split_page(readme)
    shown = {line.split("#")[0].strip() for block in blocks for line in block}
    assert {"make demo", "make test"} <= shown, "the README must show `make demo` and `make test`"
    assert len(DOC_COMMANDS) > 40, "the command extraction found too few `convnets` lines"
    commands = {convnets_argv(line)[0] for _, line in DOC_COMMANDS}
    assert commands >= {"fit", "test", "shards", "evaluate", "analyze", "submit", "status", "slurm", "sweep", "bench"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    links = relative_links(page)
    problems = [p for p in (link_problem(page, t) for t in links) if p]
    assert not problems, "\n".join(problems)


def test_links_are_found_and_checked(tmp_path):
    """The checker itself: a broken file link and a broken anchor are reported, good ones are not."""
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code_name` heading, with commas\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md) [ok](other.md#a-code_name-heading-with-commas) `[no](inline.md)`\n"
        "```\n[no](in-a-code-block.md)\n```\n[bad](missing.md) [bad](other.md#nope)\n"
    )
    links = relative_links(page)
    assert links == ["other.md", "other.md#a-code_name-heading-with-commas", "missing.md", "other.md#nope"]
    assert [t for t in links if link_problem(page, t)] == ["missing.md", "other.md#nope"]


@pytest.mark.parametrize("page,line", DOC_COMMANDS, ids=[f"{p.name}:{line[:60]}" for p, line in DOC_COMMANDS])
def test_command_parses(page, line, monkeypatch):
    monkeypatch.chdir(REPO)  # `--config configs/X.yaml` is relative to the repository root
    try:
        parse_command(convnets_argv(line))
    except (ValueError, argparse.ArgumentError) as exc:
        pytest.fail(f"{page.relative_to(REPO)}: `{line}` does not parse: {exc}")


def test_a_broken_command_fails(monkeypatch):
    """The parser check can fail: an unknown flag, a bad subcommand, an unknown recipe, a bad fit key."""
    monkeypatch.chdir(REPO)
    for argv in (
        ["shards", "digits", "OUT", "--no-such-flag"],
        ["bench", "nope"],
        ["fit", "--config", "no_such_recipe"],
        ["fit", "--config", "lenet5_digits", "--model.no_such_key", "1"],
        ["submit", "--config", "lenet5_digits", "--slurm.nodes", "2", "--trainer.no_such", "1"],
        ["submit", "--config", "lenet5_digits", "--slurm.nodes", "two"],
        ["slurm", "template", "--", "--config", "lenet5_digits", "--data.no_such", "1"],
        ["sweep", "ablation", "--config", "configs/no_such.yaml"],
    ):
        with pytest.raises((ValueError, argparse.ArgumentError)):
            parse_command(argv)

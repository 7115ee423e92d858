"""The package says what it needs: imports match declared dependencies; DALI is required exactly where it installs."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys

import pytest
import tomllib

from tests.conftest import REPO, dali_installable

# Import name -> distribution name, where they differ.
DISTRIBUTION = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "nvidia": "nvidia-dali-cuda130",
    "lightning_fabric": "pytorch-lightning",
    "moto": "moto",
    "pytorch_lightning": "pytorch-lightning",
}
# Declared and needed, though src/ never imports them by name (with the reason).
USED_WITHOUT_IMPORT = {
    "jsonargparse": "LightningCLI builds its parser with it (the [signatures] extra)",
    "submitit": "slurm/",
}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def imported_distributions(folder) -> set[str]:
    found = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("convnets", "tests", "__future__"):
                    found.add(DISTRIBUTION.get(top, top).lower().replace("_", "-"))
    return found


def declared(extra: str = "dev") -> tuple[set[str], set[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {_name(r) for r in project["dependencies"]}, {_name(r) for r in project["optional-dependencies"][extra]}


def test_every_import_is_declared_and_every_dependency_used():
    runtime, dev = declared()
    _, remote = declared("remote")
    used = imported_distributions(REPO / "src" / "convnets")
    # The remote extra's libraries are imported only when a remote address is opened (storage/remote.py).
    assert used - runtime - remote == set(), "imported by src/ but not in [project].dependencies or the remote extra"
    assert remote <= dev, "the remote extra's libraries are tested: the dev extra must include them"
    assert runtime - used - set(USED_WITHOUT_IMPORT) == set(), "declared but never imported by src/: remove or use"
    assert imported_distributions(REPO / "tests") - runtime - dev == set(), (
        "imported by tests/ but not in the dev extra"
    )


def test_pins_live_in_the_constraints_file_and_match_the_ranges():
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    pinned = [str(r) for r in requirements if any(s.operator == "==" for s in r.specifier)]
    assert pinned == [], "pyproject states ranges; exact pins go to constraints.txt"
    ranges = {r.name.lower().replace("_", "-"): r.specifier for r in requirements}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pin = Requirement(line)
            version = next(iter(pin.specifier)).version
            name = pin.name.lower().replace("_", "-")
            assert name in ranges, f"constraints.txt pins {name}, which nothing declares"
            assert ranges[name].contains(version, prereleases=True), f"{line!r} is outside pyproject's {ranges[name]}"
    assert "-c constraints.txt" in (REPO / "Makefile").read_text()


def test_dali_is_a_dependency_only_where_it_installs():
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    dali = next(Requirement(r) for r in project["dependencies"] if _name(r) == "nvidia-dali-cuda130")
    for system, machine, wanted in [
        ("Linux", "x86_64", True),
        ("Darwin", "arm64", False),
        ("Windows", "AMD64", False),
        ("Linux", "aarch64", False),
    ]:
        assert dali.marker.evaluate({"platform_system": system, "platform_machine": machine}) is wanted


def test_dali_is_installed_where_it_can_be():
    if not dali_installable():
        pytest.skip("nvidia-dali has no wheel for this platform")
    assert importlib.util.find_spec("nvidia.dali") is not None, "Linux x86_64 without nvidia-dali: a broken install"


def test_the_command_works_without_dali():
    # What a macOS user gets: nvidia.dali cannot be imported; listing models and help still work.
    code = "import sys; sys.modules['nvidia.dali'] = None; from convnets.cli import main; sys.exit(main(['models']))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "lenet5" in result.stdout and "alexnet" in result.stdout

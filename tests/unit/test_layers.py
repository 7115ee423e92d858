"""The package's imports point one way: a lower layer never imports a higher one, and no circles.

Every `import convnets...` counts, also those inside functions (deferred to keep the command line
light): a deferred import is still a dependency a maintainer must follow. Read with `ast`, so the
check costs no import of torch.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "convnets"

# Lowest first. A module may import its own layer's and lower layers' modules; the rooms of one layer
# (analysis, bench, experiments) import none of each other.
LAYERS = [
    ["convnets.errors", "convnets.utils"],
    ["convnets.models"],
    ["convnets.data_pipelines.storage"],
    ["convnets.data_pipelines.shards"],
    ["convnets.data_pipelines.loading"],
    ["convnets.platform.training"],
    ["convnets.platform.evaluation"],
    ["convnets.platform.analysis", "convnets.platform.bench", "convnets.platform.experiments"],
    ["convnets.slurm"],
    ["convnets.cli"],
]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> tuple[int, str]:
    """(layer, room) of a module: the longest LAYERS prefix it falls under."""
    best = None
    for level, rooms in enumerate(LAYERS):
        for r in rooms:
            if (module == r or module.startswith(r + ".")) and (best is None or len(r) > len(best[1])):
                best = (level, r)
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add its folder to LAYERS in {__file__}")
    return best


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("convnets")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("convnets"):
            # `from convnets.platform.training import plots` names a module, not a symbol
            found |= {
                f"{node.module}.{a.name}"
                if (SRC / (node.module + "." + a.name).replace(".", "/")).with_suffix(".py").is_file()
                else node.module
                for a in node.names
            }
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {i for i in imports_of(path) if i in modules and i != name} for name, path in modules.items()}


def test_no_module_imports_a_higher_layer_or_a_sibling_room():
    wrong = []
    for module, deps in graph().items():
        if module in ("convnets", "convnets.platform", "convnets.data_pipelines"):
            continue
        level, mine = room(module)
        for dep in deps:
            dep_level, dep_room = room(dep)
            if dep_level > level or (dep_level == level and dep_room != mine):
                wrong.append(f"{module} imports {dep}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


def test_no_import_circles():
    g = graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(g[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(path[path.index(dep) :] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


@pytest.mark.parametrize(
    "init",
    sorted(p for p in PACKAGE.rglob("__init__.py") if p.parent.name != "models"),
    ids=lambda p: str(p.relative_to(SRC)),
)
def test_package_init_files_import_nothing(init):
    """Importing `convnets.platform.bench.cli` must not drag in its siblings (the light CLI stays light).
    The models package is the one exception: importing it registers every family."""
    tree = ast.parse(init.read_text())
    assert not [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom) and n.module != "__future__"]


def test_the_graph_holds_the_imports_it_checks():
    """The rules are not vacuous: the graph read from the files has the cross-layer edges the code has."""
    g = graph()
    assert "convnets.data_pipelines.shards.format" in g["convnets.data_pipelines.loading.datamodule"]
    assert room("convnets.platform.bench.cli") == (
        LAYERS.index([r for r in LAYERS if "convnets.platform.bench" in r][0]),
        "convnets.platform.bench",
    )

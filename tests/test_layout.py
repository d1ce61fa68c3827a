"""The layout's promise: the app's modules depend on each other one way, and its packages are
layers, each importing only from those below it. An import inside a function (kept there for the
cold start) is a dependency all the same, so every import counts but those under
``if TYPE_CHECKING:`` (annotations only); a circle or an import up a layer fails here, named."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def modules(package: str = "leads") -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The app's modules ``name`` imports, anywhere in it but under ``if TYPE_CHECKING:``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - child.level + 1] + ([child.module] if child.module else []))
                for alias in child.names:  # `from . import x` names a module; `from .m import f` names m
                    target = next((c for c in (f"{base}.{alias.name}", base) if c in known), None)
                    if target and target != name:
                        found.add(target)
            elif isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names if alias.name in known and alias.name != name)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def strong(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                strong(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while (member := stack.pop()) != node:
                group.append(member)
            if group:
                groups.append(sorted([node, *group]))

    for node in sorted(graph):
        if node not in index:
            strong(node)
    return groups


def test_the_apps_modules_import_each_other_one_way():
    known = modules()
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    assert sum(len(targets) for targets in graph.values()) > 100  # the graph was read at all
    assert circles(graph) == []


# The packages from the bottom up; the entry points (`leads.cli`, `leads.__main__`) sit on top.
LAYERS = ["core", "store", "destinations", "delivery", "intake", "ops", "local"]


def layer_of(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


def imports_up(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        for target in targets
        if layer_of(target) > layer_of(name)
    )


def test_each_package_imports_only_from_those_below_it():
    known = modules()
    assert {name.split(".")[1] for name in known if name.count(".") >= 1} >= set(LAYERS)
    unplaced = [name for name in known if name.count(".") == 1 and name.split(".")[1] not in LAYERS]
    assert sorted(unplaced) == ["leads.__main__", "leads.cli"]  # every module sits in a stage
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    assert imports_up(graph) == []


def test_an_import_up_a_layer_is_found_and_named():
    graph = {"leads.core.settings": {"leads.store.rows"}, "leads.store.rows": {"leads.core.settings"}}
    assert imports_up(graph) == ["leads.core.settings -> leads.store.rows"]


def test_the_local_host_is_left_out_of_the_deployment():
    ignored = (ROOT / ".funcignore").read_text(encoding="utf-8").split()
    assert "leads/local" in ignored


def test_a_circle_is_found_and_named():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []

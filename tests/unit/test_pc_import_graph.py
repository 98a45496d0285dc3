"""The index wing's import graph, read from the source: one concern per module, no cycles,
no private names across modules, and the tree knows nothing about routing decisions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGES = ("clusterrouting", "prefixcache")
# Modules that make routing decisions: the radix tree and its parts must not import them.
DECISION_MODULES = {
    "prefixcache._decision",
    "prefixcache._select",
    "prefixcache._index",
    "prefixcache._pool",
    "prefixcache._cost",
    "prefixcache._cost_explain",
    "prefixcache._mirror",
    "prefixcache._explain",
}
TREE_MODULES = {
    "prefixcache._tree",
    "prefixcache._runs",
    "prefixcache._datrie_store",
    "prefixcache._weights",
    "prefixcache._keys",
}


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in (SRC / pkg).rglob("*.py"):
            rel = path.relative_to(SRC).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _runtime_imports(path: Path) -> list[tuple[str, list[str], int]]:
    """``(module, names, line)`` for each import executed at import time or in a function
    (imports under ``if TYPE_CHECKING:`` are for annotations only and are skipped)."""
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in ast.walk(node):
                skipped.add(id(inner))
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                found.append((a.name, [], node.lineno))
    return found


def _ours(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_another_modules_private_names(module: str) -> None:
    for target, names, line in _runtime_imports(MODULES[module]):
        if not _ours(target) or target == module:
            continue
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, f"{module}:{line} imports private {private} from {target}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_reads_another_modules_private_attributes(module: str) -> None:
    tree = ast.parse(MODULES[module].read_text())
    aliases = {
        (a.asname or a.name): a.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for a in node.names
        if _ours(a.name)
    }
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            raise AssertionError(f"{module}:{node.lineno} reads {node.value.id}.{node.attr}")


@pytest.mark.parametrize("module", sorted(TREE_MODULES))
def test_the_tree_imports_no_decision_module(module: str) -> None:
    for target, names, line in _runtime_imports(MODULES[module]):
        via = {f"{target}.{n}" for n in names} | {target}
        assert not via & DECISION_MODULES, f"{module}:{line} imports {target}"


def test_no_import_cycle_between_our_modules() -> None:
    graph = {
        m: {t for t, _, _ in _runtime_imports(p) if t in MODULES and t != m}
        for m, p in MODULES.items()
    }
    # Importing a package runs its __init__, which imports its submodules: a submodule that
    # imports its own package's __init__ is the usual (and safe) re-export direction, so
    # only edges between implementation modules count.
    inits = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    graph = {m: {t for t in ts if t not in inits} for m, ts in graph.items() if m not in inits}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycle = [*stack[stack.index(t) :], t] if t in stack else [m, t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t, [*stack, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_the_checks_see_a_private_import_and_a_cycle(tmp_path: Path) -> None:
    # Counterfactual: the parser must report what the rules forbid.
    bad = tmp_path / "bad.py"
    bad.write_text("from prefixcache._tree import _walk\nimport typing\n")
    assert ("prefixcache._tree", ["_walk"], 1) in _runtime_imports(bad)
    hidden = tmp_path / "hidden.py"
    hidden.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from prefixcache._x import y\n"
    )
    assert all(t != "prefixcache._x" for t, _, _ in _runtime_imports(hidden))

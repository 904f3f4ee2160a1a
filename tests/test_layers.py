"""The package layers stay as the README draws them: `cli > report > evals | longqa | trainer > llqa`.

Read from the source with `ast` (nothing is imported), every import counts, deferred ones inside functions
too: a cycle hidden by a deferred import is still a cycle. Imports under `if TYPE_CHECKING:` only name types
and never run, so they count for the layers but not for cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cli", "report", "evals", "longqa", "trainer", "llqa")
# What each package may import from the project (besides itself).
ALLOWED = {
    "llqa": set(),
    "evals": {"llqa"},
    "longqa": {"llqa"},
    "trainer": {"llqa"},
    "report": {"evals", "longqa", "trainer", "llqa"},
    "cli": {"report", "evals", "longqa", "trainer", "llqa"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str) -> list[tuple[str, bool]]:
    """(imported project module, runs at run time) for every import in `tree`."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, runs: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, runs)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, runs) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative import: resolve against this module's package
                package = module.split(".")[: -node.level] if not module.endswith("__init__") else module.split(".")
                base = ".".join([*package, node.module])
            found.append((base, runs))
            # `from pkg import mod` imports the submodule pkg.mod when it exists
            found.extend((f"{base}.{alias.name}", runs) for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child, runs)

    visit(tree, True)
    return found


def _graph() -> dict[str, list[tuple[str, bool]]]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules[_module_name(path)] = path
    graph = {}
    for name, path in modules.items():
        edges = []
        for target, runs in _imports(ast.parse(path.read_text(encoding="utf-8")), name):
            if target in modules and target != name:
                edges.append((target, runs))
        graph[name] = edges
    return graph


GRAPH = _graph()


def test_every_package_is_read():
    assert {m.split(".")[0] for m in GRAPH} == set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_the_layers_below(package):
    bad = sorted(
        f"{module} imports {target}"
        for module, edges in GRAPH.items()
        if module.split(".")[0] == package
        for target, _ in edges
        if target.split(".")[0] not in ALLOWED[package] | {package}
    )
    assert not bad, f"{package} may import only {sorted(ALLOWED[package])}: " + "; ".join(bad)


def test_no_import_cycles():
    runtime = {m: sorted({t for t, runs in edges if runs}) for m, edges in GRAPH.items()}
    # a package's __init__ importing its own modules is how a package is assembled, not a cycle
    runtime = {m: [t for t in ts if not (m in PACKAGES and t.startswith(m + "."))] for m, ts in runtime.items()}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in runtime.get(m, []):
            if state.get(t) == 1:
                cycles.append(" -> ".join([*path[path.index(t) :], t]))
            elif t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(runtime):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_detects_a_cycle_and_a_layer_breach(tmp_path):
    """The checks above can fail: a made-up pair of modules importing each other is a cycle."""
    tree_a = ast.parse("def f():\n    from llqa import b\n")
    tree_b = ast.parse("from llqa.a import x\nif TYPE_CHECKING:\n    import report\n")
    assert ("llqa.b", True) in _imports(tree_a, "llqa.a")
    assert ("llqa.a", True) in _imports(tree_b, "llqa.b")
    assert ("report", False) in _imports(tree_b, "llqa.b")

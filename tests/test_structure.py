"""Issue 28, repro/ structure: no import loop (an import inside a function counts: it only
hides the loop) and no module of repro/ over about 450 lines. The import graph is read from
the sources' syntax trees, so the test sees imports that no test executes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"
PACKAGE = SRC / "malleability"


def _module(path: Path, src: Path) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE, src: Path = SRC) -> dict[str, set[str]]:
    """Module → the package modules it imports anywhere in its source (``from X import y``
    counts as importing X.y when that is a module, else X)."""
    files = {_module(p, src): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")
                base = base[:len(base) - node.level + 1] if node.level else []
                source = ".".join([*base, *([node.module] if node.module else [])])
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in files else source
                           for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_sees_a_loop_hidden_in_a_function(tmp_path: Path) -> None:
    """Ground truth: a package with a top-level import one way and a function-level import
    back is a loop; the same package without the function-level import is not."""
    pkg = tmp_path / "malleability"
    (pkg / "repro").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "repro" / "__init__.py").write_text("")
    (pkg / "repro" / "a.py").write_text("from .b import f\n")
    (pkg / "repro" / "b.py").write_text("def f():\n    from . import a\n")
    (pkg / "repro" / "c.py").write_text("from ..repro.a import f\n")
    graph = import_graph(pkg, tmp_path)
    assert graph["malleability.repro.c"] == {"malleability.repro.a"}
    assert cycles(graph) == [["malleability.repro.a", "malleability.repro.b"]]
    (pkg / "repro" / "b.py").write_text("def f():\n    pass\n")
    assert cycles(import_graph(pkg, tmp_path)) == []


def test_the_package_has_no_import_loop() -> None:
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("path", sorted((PACKAGE / "repro").glob("*.py")), ids=lambda p: p.name)
def test_repro_modules_stay_under_450_lines(path: Path) -> None:
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 450

"""The package's shape, read from its source: no import cycles, seams kept, internals confined.

Every import is counted, deferred ones (inside functions) included: a cycle that only closes at
run time is still a cycle a reader has to untangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "blockmatrix"

#: Private PySpark attributes, allowed only in the interop module that names them.
PYSPARK_INTERNALS = ("_jsc", "_jvm", "_jsparkSession", "_to_java_object_rdd", "_java_model",
                     "_java_matrix_wrapper", "_batchSize")
INTEROP = {"blockmatrix.interop.mllib"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules ``name`` imports anywhere in its body (``from x import y`` counts
    ``x.y`` when that is a module, else ``x``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in known else base)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imported_modules(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_deferred_and_relative_imports():
    graph = import_graph()
    assert "blockmatrix.strategies.registry" in graph["blockmatrix.strategies.inner"]
    assert "blockmatrix.blocks" in graph["blockmatrix.matrix"]  # from . import blocks as bk
    assert "blockmatrix.explain" in graph["blockmatrix.matrix"]  # deferred, in a method


def test_no_import_cycles_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_strategies_do_not_know_blockmatrix():
    graph = import_graph()
    for name, imported in graph.items():
        if name.startswith("blockmatrix.strategies"):
            assert "blockmatrix.matrix" not in imported, name
    assert "blockmatrix.matrix" not in graph["blockmatrix.explain"]


@pytest.mark.parametrize("name", sorted(m for m in modules() if m not in INTEROP))
def test_private_pyspark_attributes_only_in_interop(name):
    tree = ast.parse(modules()[name].read_text(encoding="utf-8"))
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert not used & set(PYSPARK_INTERNALS), (name, sorted(used & set(PYSPARK_INTERNALS)))
def test_runtime_package_does_not_import_benchmark_plumbing():
    graph_sources = {name: path.read_text(encoding="utf-8") for name, path in modules().items()}
    for name, source in graph_sources.items():
        tree = ast.parse(source)
        roots = {alias.name.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.Import) for alias in node.names}
        roots |= {node.module.split(".")[0] for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.module and not node.level}
        assert "psutil" not in roots, name

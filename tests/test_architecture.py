"""The rooms and the arrows between them (ARCHITECTURE.md), checked on the source.

* no import cycle among product modules, counting imports inside functions (a lazy import
  hides a cycle from Python, not from a reader);
* layers: ``synth`` imports none of ``pipelines``, ``api``, ``pretrain``, ``agentcpt``;
  ``pipelines`` and ``pretrain`` import no ``api``; no product module imports ``testing``;
  no product module names another module in a string for ``importlib``;
* every record's Arrow schema has exactly its pydantic model's fields.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRODUCT_PACKAGES = ("synth", "pipelines", "api", "pretrain", "agentcpt")
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "synth": ("pipelines", "api", "pretrain", "agentcpt", "testing"),
    "pipelines": ("api", "agentcpt", "testing"),
    "pretrain": ("api", "agentcpt", "testing"),
    "api": ("agentcpt", "testing"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.AST, known: set[str]) -> set[str]:
    """Product modules a module imports anywhere (functions included, TYPE_CHECKING excluded)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking_block(node):
            return
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import sub` imports pkg.sub when that is a module, else pkg.
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names]
        for name in names:
            # The longest known module prefix (``import a.b.c`` names module a.b.c).
            parts = name.split(".")
            for i in range(len(parts), 0, -1):
                candidate = ".".join(parts[:i])
                if candidate in known:
                    found.add(candidate)
                    break
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def product_modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package in PRODUCT_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            out[_module_name(path)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    modules = product_modules()
    known = set(modules) | {
        _module_name(p) for p in (REPO / "testing").rglob("*.py")
    }
    return {name: _imports(ast.parse(path.read_text(encoding="utf-8")), known) - {name} for name, path in modules.items()}


def _is_ancestor_package(a: str, b: str) -> bool:
    return b.startswith(a + ".")


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted.

    An edge from a module to its own parent package is ignored: Python imports the parent
    first anyway, and a package re-exporting its children is the registry pattern.
    """
    edges = {a: {b for b in bs if b in graph and not _is_ancestor_package(b, a)} for a, bs in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    return cycles


def layer_violations(graph: Mapping[str, Iterable[str]]) -> list[str]:
    bad = []
    for module, imported in sorted(graph.items()):
        top = module.split(".")[0]
        for target in sorted(imported):
            if target.split(".")[0] in FORBIDDEN.get(top, ()):
                bad.append(f"{module} imports {target}")
    return bad


# ---------------------------------------------------------------------------
# The checkers themselves catch what they claim to catch
# ---------------------------------------------------------------------------


def test_cycle_finder_reports_a_cycle_added_through_a_lazy_import() -> None:
    graph = {"synth.a": {"synth.b"}, "synth.b": {"synth.c"}, "synth.c": {"synth.a"}, "synth.d": {"synth.a"}}
    assert find_cycles(graph) == [["synth.a", "synth.b", "synth.c"]]
    tree = ast.parse("def f():\n    from synth.b import x\n")
    assert _imports(tree, {"synth.b"}) == {"synth.b"}


def test_type_checking_imports_are_not_edges() -> None:
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from synth.b import x\n")
    assert _imports(tree, {"synth.b"}) == set()


def test_layer_checker_reports_synth_importing_pipelines() -> None:
    assert layer_violations({"synth.x": {"pipelines.runner"}, "api.main": {"pipelines.runner"}}) == [
        "synth.x imports pipelines.runner"
    ]


# ---------------------------------------------------------------------------
# The code base
# ---------------------------------------------------------------------------


def test_no_import_cycles_among_product_modules() -> None:
    assert find_cycles(import_graph()) == []


def test_layer_rules_hold() -> None:
    assert layer_violations(import_graph()) == []


def test_no_product_module_imports_by_string() -> None:
    """``importlib.import_module("pkg.mod")`` or ``"pkg.mod:func"`` targets hide arrows."""
    offenders = []
    for name, path in product_modules().items():
        text = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                value = node.value
                if ":" in value and value.split(":")[0].split(".")[0] in PRODUCT_PACKAGES and " " not in value:
                    offenders.append(f"{name}: {value!r}")
    assert offenders == []


@pytest.mark.parametrize("stage", ["documents", "memory", "questions", "planning", "reasoning", "rollouts", "decisions", "corpus"])
def test_arrow_schema_fields_equal_record_model_fields(stage: str) -> None:
    from synth.stages import get_stage

    record_type = get_stage(stage).record_type
    assert record_type.arrow_schema().names == list(record_type.model_fields)


def test_failure_schema_matches_failure_model() -> None:
    from synth.records import FAILURE_SCHEMA, Failure

    extra = {"run_id", "stage", "unit", "created_at"}  # stamped by the writer, not by stages
    assert set(FAILURE_SCHEMA.names) == set(Failure.model_fields) | extra

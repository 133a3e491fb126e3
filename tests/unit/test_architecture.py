"""The layout holds: an acyclic module graph, no pipeline → connectors import (by name or string),
no file over 600 lines, no ``exec`` in the contracts, every module with a docstring."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "connectors", "schemas")
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
        # a compiled module (pipeline/redaction/_fastgate.c) is known by its type stub
        for path in sorted((ROOT / pkg).rglob("*.pyi")):
            out.setdefault(".".join(path.relative_to(ROOT).with_suffix("").parts), path)
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[str]:
    """Every project module ``name`` imports, at any depth (function-local and TYPE_CHECKING ones too).

    ``from pkg import sub`` counts as an import of ``pkg.sub`` when that is a module, else of ``pkg``.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from _known(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield from _known(sub if sub in MODULES else base)


def _known(target: str) -> Iterator[str]:
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    if target:
        yield target


def _graph() -> dict[str, set[str]]:
    return {m: {t for t in _imports(m, p) if t != m} for m, p in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_module_graph_has_no_cycle() -> None:
    """No import circle among pipeline/, connectors/ and schemas/ modules, not even behind a local import."""
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check itself can fail: a two-module and a three-module circle are both reported."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": set()}) == [
        ["a", "b"],
        ["c", "d", "e"],
    ]


def test_pipeline_never_imports_connectors() -> None:
    """The runtime finds connectors through registries: no import and no importlib string names them."""
    graph = _graph()
    edges = sorted(
        (m, t) for m, ts in graph.items() if m.startswith("pipeline") for t in ts if t.startswith("connectors")
    )
    assert edges == []
    strings = [
        f"{p.relative_to(ROOT)}: {m.group(0)}"
        for name, p in MODULES.items()
        if name.startswith("pipeline")
        for m in re.finditer(r"[\"']connectors\.[a-z_.]+", p.read_text(encoding="utf-8"))
    ]
    assert strings == []


def test_schemas_import_nothing_of_the_runtime() -> None:
    """The contracts stand alone: schemas/ imports neither pipeline/ nor connectors/."""
    graph = _graph()
    assert (
        sorted((m, t) for m, ts in graph.items() if m.startswith("schemas") for t in ts if not t.startswith("schemas"))
        == []
    )


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_small_and_documented(name: str) -> None:
    """Each module opens with a docstring and stays under the 600-line ceiling."""
    path = MODULES[name]
    text = path.read_text(encoding="utf-8")
    assert ast.get_docstring(ast.parse(text)), f"{path.relative_to(ROOT)} has no module docstring"
    lines = text.count("\n")
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines (max {MAX_LINES})"


def test_contracts_use_no_exec() -> None:
    """schemas/ builds its models without exec() or __class__ swaps."""
    for name, path in MODULES.items():
        if name.startswith("schemas"):
            text = path.read_text(encoding="utf-8")
            assert not re.search(r"\bexec\(|__class__\s*=", text), path.relative_to(ROOT)

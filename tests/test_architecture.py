"""The shape of the house (docs/architecture.md), checked statically: no import circles,
an I/O-free job core, typed seams, files of a readable size."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from test_imports import ROOT, imported_modules, sources

#: The job core and its records: no event loop, no sockets, no clock of their own.
CORE = ("server.core", "server.manager", "server.jobs", "server.outcomes", "server.retry",
        "server.results")
CORE_FORBIDDEN = {"trio", "socket", "select", "selectors", "asyncio", "threading", "h11"}
#: The seams between the core, persistence and the front-ends.
SEAMS = ("server/jobs.py", "server/host.py", "server/persistence.py", "server/app.py")
MAX_LINES = 620


def graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (at any depth in the file)."""
    mods = {module: (path, is_package) for path, module, is_package in sources(package)}
    edges: dict[str, set[str]] = {}
    for module, (path, is_package) in mods.items():
        names = imported_modules(path.read_text(), module, is_package)
        edges[module] = {n for n in names if n in mods and n != module}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize("package", ["protocol", "server"])
def test_no_import_circles(package: str) -> None:
    assert graph(package), package
    assert cycles(graph(package)) == []


def test_the_circle_finder_finds_circles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_core_does_no_io() -> None:
    edges = {m: imported_modules(p.read_text(), m, pkg) for p, m, pkg in sources("server")}
    for module in CORE:
        bad = {n for n in edges[module] if n.split(".")[0] in CORE_FORBIDDEN}
        assert bad == set(), module
        # ... and reaches no front-end or store module either.
        assert not {n for n in edges[module]
                    if n.startswith(("server.app", "server.gear", "server.http",
                                     "server.memcache", "server.store", "server.host"))}


@pytest.mark.parametrize("path", SEAMS)
def test_no_any_at_the_seams(path: str) -> None:
    tree = ast.parse((ROOT / path).read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert "Any" not in names and "Any" not in attrs


@pytest.mark.parametrize("package", ["protocol", "server"])
def test_no_file_is_too_long(package: str) -> None:
    long = {str(p.relative_to(ROOT)): n for p, _, _ in sources(package)
            if (n := len(Path(p).read_text().splitlines())) > MAX_LINES}
    assert long == {}

"""Imports flow one way (DESIGN.md): protocol <- server, protocol <- gearman_cli.

Checked statically with ast over every source file, plus one runtime check that
importing protocol loads no I/O module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protocol", "server", "gearman_cli")

#: What each package must never import (top-level module names).
FORBIDDEN: dict[str, set[str]] = {
    "protocol": {"server", "gearman_cli", "trio", "socket", "logging", "time",
                 "asyncio", "selectors", "select", "ssl", "threading"},
    "server": {"gearman_cli"},
    "gearman_cli": {"server"},
}


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Every module ``module`` imports, absolute dotted names (relative ones resolved)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                if len(package) - (node.level - 1) < 0:
                    base = []
                prefix = ".".join([*base, *([node.module] if node.module else [])])
            else:
                prefix = node.module or ""
            if prefix:
                found.add(prefix)
            # "from . import x" / "from pkg import x" may import a module x.
            found.update(f"{prefix}.{a.name}" if prefix else a.name for a in node.names)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name)
              and (getattr(node.func, "attr", None) == "import_module"
                   or getattr(node.func, "id", None) == "__import__")
              and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
    return found


def sources(package: str) -> list[tuple[Path, str, bool]]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        is_package = rel.name == "__init__"
        parts = rel.parts[:-1] if is_package else rel.parts
        out.append((path, ".".join(parts), is_package))
    return out


def violations(package: str) -> list[str]:
    bad = []
    for path, module, is_package in sources(package):
        for name in imported_modules(path.read_text(), module, is_package):
            if name.split(".")[0] in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return bad


@pytest.mark.parametrize("package", PACKAGES)
def test_import_direction(package: str) -> None:
    assert sources(package), f"no sources found for {package}"
    assert violations(package) == []


def test_protocol_sources_are_all_seen() -> None:
    modules = {module for _, module, _ in sources("protocol")}
    assert {"protocol", "protocol._parser", "protocol._packet", "protocol._types"} <= modules


@pytest.mark.parametrize(
    ("source", "module", "is_package", "expected"),
    [
        ("import socket", "protocol._x", False, "socket"),
        ("import os, time as t", "protocol._x", False, "time"),
        ("from logging import getLogger", "protocol._x", False, "logging"),
        ("from ..server import manager", "protocol._x", False, "server.manager"),
        ("from .. import gearman_cli", "protocol._x", False, "gearman_cli"),
        ("from ... import server", "server.sub.mod", False, "server"),
        ("from . import _parser", "protocol", True, "protocol._parser"),
        ("def f():\n    import trio\n", "protocol._x", False, "trio"),
        ("importlib.import_module('gearman_cli.client')", "server.x", False,
         "gearman_cli.client"),
        ("__import__('trio')", "protocol._x", False, "trio"),
    ],
)
def test_the_checker_sees_imports(source: str, module: str, is_package: bool,
                                  expected: str) -> None:
    assert expected in imported_modules(source, module, is_package)


@pytest.mark.slow  # a fresh interpreter, so sys.modules shows what protocol pulls in
def test_importing_protocol_loads_no_io_module() -> None:
    # Modules the interpreter loaded at start-up (e.g. time, via site) do not count.
    code = (
        "import sys; before = set(sys.modules); import protocol; "
        "print(' '.join(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in "
        f"{sorted(FORBIDDEN['protocol'])!r})))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=True)
    assert result.stdout.split() == []

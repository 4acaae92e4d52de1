"""Compile the hot modules with mypyc into .native/ (optional; see docs/native.md).

    .venv/bin/python scripts/build_native.py [--quiet] [--require] [--force]

The group (``protocol._native.GROUP``: the parser, the job core, the Gear front-end) is
compiled together from a copy of the sources, then moved into ``.native/`` with a manifest
of each source's SHA-256. ``protocol/_native.py`` loads that build only while every source
still matches, so an edit falls back to plain Python, never to stale machine code.
Nothing is rebuilt when the manifest already matches the sources.

Without what compiling needs (mypyc, a C compiler, the Python headers) it says so and exits
0, leaving the pure-Python server: that is the default, not an error. ``--require`` makes
it exit 1 instead. A failed compile always exits 1 with the compiler's last lines.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocol import _native  # noqa: E402

PACKAGES = ("protocol", "server", "gearman_cli")


def source_of(module: str) -> str:
    return module.replace(".", "/") + ".py"


def dependencies(work: Path) -> list[str]:
    """The source files (relative paths) of the modules of our packages that the group
    imports, the group excepted: mypyc may inline their ``Final`` constants, so a change
    there must make the build stale too."""
    found: set[str] = set()
    for module in _native.GROUP:
        package = module.split(".")[:-1]
        for node in ast.walk(ast.parse((work / source_of(module)).read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                prefix = ".".join([*base, *([node.module] if node.module else [])])
                names = [prefix, *(f"{prefix}.{a.name}" for a in node.names)]
            for name in names:
                if name.split(".")[0] not in PACKAGES or name in _native.GROUP:
                    continue
                for path in (source_of(name), name.replace(".", "/") + "/__init__.py"):
                    if (work / path).is_file():
                        found.add(path)
    return sorted(found)


def missing_tools() -> str:
    """Why this machine cannot compile the group ("" when it can)."""
    if importlib.util.find_spec("mypyc") is None:
        return "mypyc is not installed (pip install -e '.[native]')"
    if importlib.util.find_spec("setuptools") is None:
        return "setuptools is not installed (pip install -e '.[native]')"
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    if shutil.which(cc.split()[0]) is None:
        return f"no C compiler ({cc.split()[0]} not found)"
    include = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(include, "Python.h")):
        return f"no Python headers ({include}/Python.h; Debian: python3-dev)"
    return ""


def up_to_date(out: Path) -> bool:
    """A fresh build of exactly today's group is there."""
    files, _reason = _native.load_manifest(str(out))
    if not files:
        return False
    modules = json.loads((out / _native.MANIFEST).read_text())["modules"]
    return set(modules) == _native.GROUP


def build(out: Path, quiet: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="gearman-native-") as tmp:
        work = Path(tmp)
        for package in PACKAGES:
            # No pyproject.toml in the copy: mypyc's setuptools run would read ours.
            shutil.copytree(ROOT / package, work / package,
                            ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        # The hashes of what is compiled (the copies), not of what the tree holds later.
        hashes = {m: hashlib.sha256((work / source_of(m)).read_bytes()).hexdigest()
                  for m in sorted(_native.GROUP)}
        cmd = [sys.executable, "-m", "mypyc", *(source_of(m) for m in sorted(hashes))]
        env = {**os.environ, "GEARMAN_NATIVE": "0", "MYPYC_OPT_LEVEL": "3"}
        result = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
            sys.exit(f"build_native: mypyc failed (exit {result.returncode}):\n{tail}")
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".native-", dir=out.parent))
        modules = {}
        for module, digest in hashes.items():
            built = work / (module.replace(".", "/") + suffix)
            extension = module.replace(".", "/") + suffix
            (staging / extension).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(built, staging / extension)
            modules[module] = {"source": source_of(module), "sha256": digest,
                               "extension": extension}
        # The group's shared library: one top-level module named <hash>__mypyc.
        shared = {}
        for lib in work.glob(f"*__mypyc{suffix}"):
            shutil.move(lib, staging / lib.name)
            shared[lib.name[: -len(suffix)]] = lib.name
        deps = {path: hashlib.sha256((work / path).read_bytes()).hexdigest()
                for path in dependencies(work)}
        manifest = {"python": sys.implementation.cache_tag, "suffix": suffix,
                    "modules": modules, "shared": shared, "dependencies": deps}
        (staging / _native.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    if not quiet:
        print(f"build_native: compiled {len(modules)} modules into {out}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quiet", action="store_true", help="say nothing when all is well")
    ap.add_argument("--require", action="store_true",
                    help="exit 1 when this machine cannot compile (default: exit 0)")
    ap.add_argument("--force", action="store_true", help="rebuild even when up to date")
    ap.add_argument("--out", default=_native.NATIVE_DIR, help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = Path(args.out)
    if not args.force and up_to_date(out):
        if not args.quiet:
            print(f"build_native: {out} is up to date", file=sys.stderr)
        return
    why = missing_tools()
    if why:
        print(f"build_native: not compiling, the server runs as plain Python: {why}",
              file=sys.stderr)
        sys.exit(1 if args.require else 0)
    build(out, args.quiet)


if __name__ == "__main__":
    main()

"""The optional compiled build (protocol/_native.py, scripts/build_native.py): a stale,
partial or foreign build is never loaded; a fresh one is, whole; GEARMAN_NATIVE=1 says
why it cannot be used."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from cli_helpers import REF_GEARMAN, run, server_args, worker
from conftest import ServerFactory

from protocol import _native

ROOT = Path(__file__).resolve().parent.parent
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")


def fake_build(directory: Path, *, digest: str | None = None, tag: str | None = None,
               missing: str | None = None) -> None:
    """A manifest for the group (empty files as extensions: never loaded by these tests)."""
    modules = {}
    for name in sorted(_native.GROUP):
        source = name.replace(".", "/") + ".py"
        extension = name.replace(".", "/") + SUFFIX
        (directory / extension).parent.mkdir(parents=True, exist_ok=True)
        if name != missing:
            (directory / extension).write_bytes(b"")
        real = hashlib.sha256((ROOT / source).read_bytes()).hexdigest()
        modules[name] = {"source": source, "extension": extension,
                         "sha256": digest if digest and name == "server.core" else real}
    manifest = {"python": tag or sys.implementation.cache_tag, "suffix": SUFFIX,
                "modules": modules, "shared": {}}
    (directory / _native.MANIFEST).write_text(json.dumps(manifest))


def test_a_fresh_manifest_gives_every_module_of_the_group(tmp_path: Path) -> None:
    fake_build(tmp_path)
    files, reason = _native.load_manifest(str(tmp_path))
    assert reason == ""
    assert set(files) == _native.GROUP
    assert files["server.core"] == str(tmp_path / ("server/core" + SUFFIX))


def test_one_edited_source_disables_the_whole_group(tmp_path: Path) -> None:
    fake_build(tmp_path, digest="0" * 64)
    files, reason = _native.load_manifest(str(tmp_path))
    assert files == {}
    assert "server/core.py changed since the compiled build" in reason


def test_another_interpreter_s_build_is_not_used(tmp_path: Path) -> None:
    fake_build(tmp_path, tag="cpython-399")
    files, reason = _native.load_manifest(str(tmp_path))
    assert files == {}
    assert "cpython-399" in reason


def test_a_missing_extension_disables_the_group(tmp_path: Path) -> None:
    fake_build(tmp_path, missing="server.gear")
    files, reason = _native.load_manifest(str(tmp_path))
    assert files == {}
    assert "lacks" in reason and "gear" in reason


def test_a_build_of_another_group_of_modules_is_not_used(tmp_path: Path) -> None:
    """A build made before a module joined the group (its sources unchanged) would mix a
    compiled class with a plain subclass of it."""
    fake_build(tmp_path)
    manifest = json.loads((tmp_path / _native.MANIFEST).read_text())
    del manifest["modules"]["server.gear"]
    (tmp_path / _native.MANIFEST).write_text(json.dumps(manifest))
    files, reason = _native.load_manifest(str(tmp_path))
    assert files == {} and "not of today's group" in reason


def test_an_edited_module_the_group_imports_makes_the_build_stale(tmp_path: Path) -> None:
    """mypyc may compile in a Final constant of a module the group imports."""
    fake_build(tmp_path)
    manifest = json.loads((tmp_path / _native.MANIFEST).read_text())
    real = hashlib.sha256((ROOT / "protocol/_packet.py").read_bytes()).hexdigest()
    manifest["dependencies"] = {"protocol/_packet.py": real}
    (tmp_path / _native.MANIFEST).write_text(json.dumps(manifest))
    assert _native.load_manifest(str(tmp_path))[1] == ""
    manifest["dependencies"] = {"protocol/_packet.py": "0" * 64}
    (tmp_path / _native.MANIFEST).write_text(json.dumps(manifest))
    files, reason = _native.load_manifest(str(tmp_path))
    assert files == {} and "protocol/_packet.py changed" in reason


def test_no_build_and_a_broken_manifest_say_so(tmp_path: Path) -> None:
    assert _native.load_manifest(str(tmp_path))[1].startswith("no compiled build")
    (tmp_path / _native.MANIFEST).write_text("{not json")
    files, reason = _native.load_manifest(str(tmp_path))
    assert files == {} and "unreadable" in reason


def test_the_finder_serves_only_the_group_and_requires_on_demand(tmp_path: Path) -> None:
    fake_build(tmp_path, digest="0" * 64)  # stale
    lenient = _native.NativeFinder(str(tmp_path), require=False)
    assert lenient.find_spec("server.core") is None  # falls back to the source
    strict = _native.NativeFinder(str(tmp_path), require=True)
    with pytest.raises(_native.NativeUnavailable, match=r"server/core\.py changed"):
        strict.find_spec("server.core")
    assert strict.find_spec("json") is None  # not of the group: never its business
    fresh = _native.NativeFinder(str(tmp_path.parent / "none"), require=False)
    assert fresh.find_spec("server.core") is None


# ---------------------------------------------------------------------------- real builds


def _can_compile() -> str:
    """Why this machine cannot build (empty when it can)."""
    include = sysconfig.get_paths()["include"]
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        return "no C compiler"
    if not os.path.exists(os.path.join(include, "Python.h")):
        return "no Python headers"
    return ""


def _real_build() -> None:
    """Build .native (a no-op when it is fresh), or skip where this machine cannot."""
    why = _can_compile()
    if why:
        pytest.skip(why)
    built = subprocess.run([sys.executable, "scripts/build_native.py", "--require"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr


def _probe(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = ("import server.core, server.gear, server.manager, server.jobs, protocol._parser;"
            "from protocol._native import compiled;"
            "print(' '.join(str(compiled(m)) for m in (server.core, server.gear, "
            "server.manager, server.jobs, protocol._parser)))")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=60)


@pytest.mark.slow
def test_the_real_build_loads_whole_or_not_at_all(tmp_path: Path) -> None:
    _real_build()
    native = _probe({"GEARMAN_NATIVE": "1"})
    assert native.returncode == 0, native.stderr
    assert native.stdout.split() == ["True"] * 5
    plain = _probe({"GEARMAN_NATIVE": "0"})
    assert plain.stdout.split() == ["False"] * 5
    # A copy of the build whose manifest no longer matches one source: not loaded at all
    # by default, and a clear refusal with GEARMAN_NATIVE=1.
    stale = tmp_path / "native"
    shutil.copytree(_native.NATIVE_DIR, stale)
    manifest = json.loads((stale / _native.MANIFEST).read_text())
    manifest["modules"]["server.gear"]["sha256"] = "0" * 64
    (stale / _native.MANIFEST).write_text(json.dumps(manifest))
    fallback = _probe({"GEARMAN_NATIVE_DIR": str(stale), "GEARMAN_NATIVE": "auto"})
    assert fallback.returncode == 0, fallback.stderr
    assert fallback.stdout.split() == ["False"] * 5
    refused = _probe({"GEARMAN_NATIVE_DIR": str(stale), "GEARMAN_NATIVE": "1"})
    assert refused.returncode != 0
    assert "GEARMAN_NATIVE=1, but server/gear.py changed since the compiled build" in \
        refused.stderr


@pytest.mark.slow
def test_every_module_of_ours_imports_beside_the_real_build() -> None:
    """An interpreted class may not subclass a compiled one (mypyc refuses it at import):
    compiling a module whose class another module extends broke ``--cluster`` once,
    and only a compiled server starting that mode showed it."""
    _real_build()
    code = ("import importlib, pkgutil, protocol, server, gearman_cli\n"
            "for package in (protocol, server, gearman_cli):\n"
            "    for info in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
            "        if not info.name.endswith('__main__'):\n"
            "            importlib.import_module(info.name)\n"
            "import inspect, sys\n"
            "from protocol._native import GROUP, compiled\n"
            "bad = []\n"
            "for name, module in list(sys.modules.items()):\n"
            "    if name.split('.')[0] not in ('protocol', 'server', 'gearman_cli') \\\n"
            "            or compiled(module):\n"
            "        continue\n"
            "    for _, cls in inspect.getmembers(module, inspect.isclass):\n"
            "        if cls.__module__ != name:\n"
            "            continue\n"
            "        for base in cls.__mro__[1:]:\n"
            "            if base.__module__ in GROUP:\n"
            "                bad.append(f'{name}.{cls.__name__}({base.__module__}.'\n"
            "                           f'{base.__name__})')\n"
            "import server.core\n"
            "print(compiled(server.core), *bad)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "GEARMAN_NATIVE": "1"}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True"]


@pytest.mark.slow
@pytest.mark.reference
def test_a_compiled_server_serves_the_reference_tools(
        start_server: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The C gearman worker and client through our server on the compiled modules, which
    its log says it runs."""
    if _can_compile() or not os.path.exists(os.path.join(_native.NATIVE_DIR,
                                                          _native.MANIFEST)):
        pytest.skip("no compiled build here")
    monkeypatch.setenv("GEARMAN_NATIVE", "1")
    server = start_server("ours", "-vvv")
    with worker(server, "rev", "rev", tool=REF_GEARMAN):
        done = run(REF_GEARMAN, *server_args(server), "-f", "rev", "gearman")
    assert done.stdout == b"namraeg", done.stderr
    assert "Hot modules: compiled (mypyc build in" in server.log.read_text()

"""Load the optional compiled (mypyc) build of the hot modules, never a stale one.

``scripts/build_native.py`` compiles a fixed group of modules (the parser, the job core,
the Gear front-end) into ``.native/`` beside the packages, with a manifest that records
the SHA-256 of each module's source. This finder, put first on ``sys.meta_path`` when
``protocol`` is imported, serves those extension modules only while *every* source of the
group still matches its hash: the compiled modules call each other natively, so the group
is used whole or not at all. Any edit, a missing file or another interpreter means the
plain Python sources are imported, as without a build.

``GEARMAN_NATIVE``: unset or ``auto`` (use a fresh build when there is one), ``0`` (never),
``1`` (require it: importing a module of the group fails with the reason instead).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES, ExtensionFileLoader, ModuleSpec
from importlib.util import spec_from_file_location
from types import ModuleType

#: The checkout's root (the directory holding the packages) and its build directory.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NATIVE_DIR = os.path.join(ROOT, ".native")
MANIFEST = "manifest.json"


class NativeUnavailable(ImportError):
    """``GEARMAN_NATIVE=1`` and the compiled group cannot be used (the message says why)."""


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def load_manifest(directory: str = NATIVE_DIR) -> tuple[dict[str, str], str]:
    """Module name -> extension file for a fresh build; ("", {}) and the reason if none."""
    try:
        with open(os.path.join(directory, MANIFEST)) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        return {}, f"no compiled build in {directory} (scripts/build_native.py makes one)"
    except (OSError, ValueError) as exc:
        return {}, f"unreadable {MANIFEST} in {directory}: {exc}"
    if manifest.get("python") != sys.implementation.cache_tag or \
            manifest.get("suffix") not in EXTENSION_SUFFIXES:
        return {}, (f"the compiled build in {directory} is for {manifest.get('python')}, "
                    f"not {sys.implementation.cache_tag}")
    modules = manifest.get("modules", {})
    if set(modules) != GROUP:  # compiled before a module joined or left the group
        return {}, (f"the compiled build in {directory} is not of today's group of modules "
                    "(run scripts/build_native.py again)")
    files: dict[str, str] = {}
    for name, entry in modules.items():
        source = os.path.join(ROOT, entry["source"])
        try:
            fresh = _sha256(source) == entry["sha256"]
        except OSError:
            fresh = False
        if not fresh:
            return {}, (f"{entry['source']} changed since the compiled build "
                        "(run scripts/build_native.py again)")
        files[name] = os.path.join(directory, entry["extension"])
    # Modules the group imports (their Final constants may be compiled in).
    for path, digest in manifest.get("dependencies", {}).items():
        try:
            fresh = _sha256(os.path.join(ROOT, path)) == digest
        except OSError:
            fresh = False
        if not fresh:
            return {}, (f"{path} changed since the compiled build "
                        "(run scripts/build_native.py again)")
    for name, extension in manifest.get("shared", {}).items():
        files[name] = os.path.join(directory, extension)
    missing = [path for path in files.values() if not os.path.exists(path)]
    if missing:
        return {}, f"the compiled build in {directory} lacks {missing[0]}"
    return files, ""


class NativeFinder:
    """A meta-path finder that serves the compiled group's extension modules."""

    def __init__(self, directory: str, require: bool) -> None:
        self.directory = directory
        self.require = require
        self._files: dict[str, str] | None = None
        self.reason = ""

    def files(self) -> dict[str, str]:
        if self._files is None:
            self._files, self.reason = load_manifest(self.directory)
        return self._files

    def find_spec(self, name: str, path: object = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        files = self.files()
        extension = files.get(name)
        if extension is None:
            if self.require and name in GROUP:
                why = self.reason or f"{name} is not in the compiled build"
                raise NativeUnavailable(f"GEARMAN_NATIVE=1, but {why}")
            return None
        return spec_from_file_location(name, extension,
                                       loader=ExtensionFileLoader(name, extension))


#: The modules scripts/build_native.py compiles together (GEARMAN_NATIVE=1 insists on them).
GROUP = frozenset({"protocol._parser", "server.jobs", "server.core", "server.outcomes",
                   "server.manager", "server.wakeups", "server.gear", "server.gear_peer",
                   "server.gear_tls",
                   "server.loopwait", "server.store.writer"})


def install() -> NativeFinder | None:
    """Put the finder first on sys.meta_path, once (a no-op with GEARMAN_NATIVE=0)."""
    mode = os.environ.get("GEARMAN_NATIVE", "auto")
    if mode == "0":
        return None
    for finder in sys.meta_path:
        if isinstance(finder, NativeFinder):
            return finder
    finder = NativeFinder(os.environ.get("GEARMAN_NATIVE_DIR", NATIVE_DIR), mode == "1")
    if not finder.require and not os.path.exists(os.path.join(finder.directory, MANIFEST)):
        return None  # nothing built: no finder at all, no cost
    sys.meta_path.insert(0, finder)
    return finder


def compiled(module: ModuleType) -> bool:
    """Whether a module was loaded from the compiled build."""
    return isinstance(getattr(module, "__loader__", None), ExtensionFileLoader)


def describe() -> str:
    """One line for the server's start-up log: which build the hot modules came from."""
    loaded = [sys.modules[name] for name in sorted(GROUP) if name in sys.modules]
    if loaded and all(compiled(m) for m in loaded):
        return f"compiled (mypyc build in {NATIVE_DIR if _FINDER is None else _FINDER.directory})"
    if os.environ.get("GEARMAN_NATIVE") == "0":
        return "plain Python (GEARMAN_NATIVE=0)"
    reason = _FINDER.reason if _FINDER is not None else ""
    return f"plain Python ({reason or 'no compiled build; see scripts/build_native.py'})"


_FINDER = install()

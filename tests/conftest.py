"""Shared fixtures and the two test layers.

Servers: free ports, gearmand processes (ours and the reference) on 127.0.0.1, and our
server run in-process (``server.app.Server`` in a thread of the test process, on port 0).

Layers: ``pytest -m "not slow"`` is the fast layer (protocol, manager, in-process servers);
everything that starts a process, or takes seconds, carries the ``slow`` marker. Tests are
marked here by the fixtures they use (``SLOW_FIXTURES``) and the modules they live in
(``SLOW_MODULES``); modules also mark themselves. A guard backs this up: a test without the
marker that starts a process (``subprocess``, ``fork``, ``posix_spawn``, ``system``), in its
own code or in a fixture it sets up, fails.
"""

from __future__ import annotations

import _posixsubprocess
import contextlib
import functools
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REFERENCE_GEARMAND = "/usr/sbin/gearmand"
REFERENCE_GEARMAN = shutil.which("gearman", path="/usr/bin") or "/usr/bin/gearman"
REFERENCE_GEARADMIN = shutil.which("gearadmin", path="/usr/bin") or "/usr/bin/gearadmin"
IN_CI = os.environ.get("CI") == "true"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)


def need_reference() -> None:
    """Skip (or, on CI, fail) when the reference C tools are missing."""
    if not (os.path.exists(REFERENCE_GEARMAND) and os.path.exists(REFERENCE_GEARMAN)):
        msg = "reference gearman-job-server / gearman-tools not installed"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


# --------------------------------------------------------------------------- servers


@dataclass
class RunningServer:
    """A gearmand process listening on 127.0.0.1:port."""

    kind: str  # "ours" or "reference"
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    args: list[str] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


ServerFactory = Callable[..., RunningServer]


def _start(kind: str, tmp_path: Path, extra: list[str]) -> RunningServer:
    port = free_port()
    log = tmp_path / f"gearmand-{kind}-{port}.log"
    if kind == "reference":
        need_reference()
        cmd = [REFERENCE_GEARMAND, "-p", str(port), "-L", "127.0.0.1", f"--log-file={log}",
               "--pid-file", str(tmp_path / f"ref-{port}.pid"), *extra]
    else:
        cmd = [sys.executable, "-m", "server", "-p", str(port), "-L", "127.0.0.1",
               f"--log-file={log}", "--pid-file", str(tmp_path / f"ours-{port}.pid"), *extra]
    with open(tmp_path / f"stderr-{kind}-{port}.txt", "wb") as stderr:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr)
    try:
        wait_for_port(port)
    except TimeoutError:
        proc.kill()
        proc.wait()
        err = (tmp_path / f"stderr-{kind}-{port}.txt").read_text(errors="replace")
        raise RuntimeError(f"{kind} gearmand did not start: {err}") from None
    return RunningServer(kind, port, proc, log, extra)


class _ThreadProcess:
    """The parts of ``Popen`` the tests use, for a server running in a thread of this
    process: ``pid`` (ours), ``poll()`` and ``wait()`` (0 once ``serve()`` returned, 1 if it
    raised)."""

    def __init__(self, server: InProcessServer) -> None:
        self._server = server
        self.pid = os.getpid()

    def poll(self) -> int | None:
        return None if self._server.thread.is_alive() else self._server.exit_code

    def wait(self, timeout: float | None = None) -> int:
        self._server.thread.join(timeout)
        if self._server.thread.is_alive():
            raise subprocess.TimeoutExpired("in-process gearmand", timeout or 0)
        return self._server.exit_code


class InProcessServer:
    """Our ``server.app.Server`` serving on 127.0.0.1, port 0, in a thread of the test
    process (its own trio run). Built from gearmand arguments, as the command line builds
    it; shaped like :class:`RunningServer` (``kind`` is ``"ours"``, ``proc`` answers ``pid``,
    ``poll()`` and ``wait()``). An exception in the server fails the test at ``stop()``."""

    kind = "ours"

    def __init__(self, *extra: str) -> None:
        from server.cli import parse_args  # imported late: collection of protocol tests
        self.args = list(extra)
        self.config = parse_args(["-L", "127.0.0.1", "-p", "0", *extra], environ={}).config
        self.port = 0
        self.log = Path(os.devnull)
        self.error: BaseException | None = None
        self.server: Any = None
        self._token: Any = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="in-process gearmand",
                                       daemon=True)
        self.proc = _ThreadProcess(self)
        self.thread.start()
        if not self._ready.wait(10) or self.error is not None:
            self.stop()
            raise RuntimeError(f"in-process gearmand did not start: {self.error!r}")

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def exit_code(self) -> int:
        return 0 if self.error is None else 1

    def _run(self) -> None:
        import trio

        from server.app import Server

        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self.server = Server(self.config)
            async with trio.open_nursery() as nursery:
                addresses = await nursery.start(self.server.serve)
                self.port = int(addresses[0][1])
                self._ready.set()

        try:
            trio.run(main)
        except BaseException as exc:  # reported by stop(), in the test's thread
            self.error = exc
        finally:
            self._ready.set()

    def stop(self) -> None:
        import trio

        if self.thread.is_alive() and self._token is not None:
            with contextlib.suppress(trio.RunFinishedError):  # it stopped by itself
                trio.from_thread.run_sync(self.server.shutdown, trio_token=self._token)
        self.thread.join(15)
        if self.thread.is_alive():
            raise RuntimeError("in-process gearmand did not stop within 15 s")
        if self.error is not None:
            raise RuntimeError("in-process gearmand failed") from self.error


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """``start_server(kind, *extra_args)`` starts a gearmand process; all are stopped at
    teardown. Slow layer."""
    started: list[RunningServer] = []

    def start(kind: str = "ours", *extra: str) -> RunningServer:
        srv = _start(kind, tmp_path, list(extra))
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def start_inprocess() -> Iterator[Callable[..., InProcessServer]]:
    """``start_inprocess(*extra_args)`` starts our server in-process on a free port; all
    are stopped at teardown, and one that failed fails the test. Fast layer."""
    started: list[InProcessServer] = []

    def start(*extra: str) -> InProcessServer:
        srv = InProcessServer(*extra)
        started.append(srv)
        return srv

    yield start
    errors = []
    for srv in started:
        try:
            srv.stop()
        except RuntimeError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture(scope="module", params=["ours", "reference"])
def module_server(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One gearmand process per module and kind (ours, then the reference), shared by the
    tests that use it: for tests that only touch their own function names and leave no
    job or worker behind. Slow layer."""
    srv = _start(request.param, tmp_path_factory.mktemp("module-server"), [])
    yield srv
    srv.stop()


@pytest.fixture
def reference_server(start_server: Callable[..., RunningServer]) -> RunningServer:
    """The reference C gearmand on a free port."""
    return start_server("reference")


@pytest.fixture(params=["ours", "reference"])
def any_server(request: pytest.FixtureRequest,
               start_server: Callable[..., RunningServer]) -> RunningServer:
    """Each test runs once against our gearmand and once against the reference (both
    processes)."""
    return start_server(request.param)


#: A server that looks like :class:`RunningServer`: a process, or ours in-process.
GearmanServer = RunningServer | InProcessServer

REFERENCE_PARAM = pytest.param("reference", marks=(pytest.mark.slow, pytest.mark.reference))


@pytest.fixture(params=["ours", REFERENCE_PARAM])
def start_any(request: pytest.FixtureRequest,
              start_inprocess: Callable[..., InProcessServer]) -> Callable[..., GearmanServer]:
    """``start_any(*extra_args)``, once for each server: ours in-process (fast layer), then
    the reference gearmand as a process (slow layer)."""
    if request.param == "ours":
        return start_inprocess
    start_server: Callable[..., RunningServer] = request.getfixturevalue("start_server")
    return functools.partial(start_server, "reference")


@pytest.fixture
def fresh_server(start_any: Callable[..., GearmanServer]) -> GearmanServer:
    """A fresh server for each test: ours in-process (fast layer), then the reference
    gearmand as a process (slow layer)."""
    return start_any()


# --------------------------------------------------------------------------- layers

#: Fixtures that start processes (or wrap ones that do): a test using any of them is slow.
SLOW_FIXTURES = frozenset({
    "start_server", "reference_server", "any_server", "module_server",
    "processes",  # test_server_cli: gearmand processes
})

#: Modules whose every test starts a process (the CLI tools, third-party libraries in
#: other languages, the shell examples, man, a wheel build, database servers).
SLOW_MODULES = frozenset({
    "test_cli_gearadmin", "test_cli_gearman", "test_cli_man", "test_examples_tutorial",
    "test_interop_cross", "test_interop_extras", "test_interop_libs", "test_man_install",
    "test_server_interop", "test_store_contract",
})


#: Single tests, in modules owned elsewhere, that take seconds in-process.
SLOW_TESTS = frozenset({
    "test_server_manager_stateful.py::TestManagerMachine::runTest",  # hypothesis, ~4 s
    "test_server_app.py::test_slow_reader_is_paused_not_buffered",  # waits ~2 s
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(getattr(item, "module", None), "__name__", "").rpartition(".")[2]
        names = set(getattr(item, "fixturenames", ()))
        short = item.nodeid.rpartition("/")[2]
        if module in SLOW_MODULES or names & SLOW_FIXTURES or short in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
        callspec = getattr(item, "callspec", None)
        if "reference_server" in names or (callspec is not None and "reference" in (
                callspec.params.get("any_server"), callspec.params.get("module_server"))):
            item.add_marker(pytest.mark.reference)


class StartedAProcess(AssertionError):
    """A test of the fast layer (no ``slow`` marker) started a process."""


_SPAWNERS = (
    (subprocess.Popen, "_execute_child"),
    (os, "fork"), (os, "forkpty"), (os, "posix_spawn"), (os, "posix_spawnp"),
    (os, "system"), (os, "execv"), (os, "execve"),
    (_posixsubprocess, "fork_exec"),  # multiprocessing's spawn and forkserver
)


class _ProcessGuard:
    """While installed, every way to start a process raises (and is remembered)."""

    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid
        self.seen: list[str] = []
        self.saved: list[tuple[object, str, object]] = []

    def __enter__(self) -> _ProcessGuard:
        for owner, name in _SPAWNERS:
            original = getattr(owner, name, None)
            if original is None:
                continue
            self.saved.append((owner, name, original))
            setattr(owner, name, self._refuse(name))
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self.saved):
            setattr(owner, name, original)

    def _refuse(self, name: str) -> Callable[..., Any]:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            what = f"{name}{args[1:2] if name == '_execute_child' else args[:1]}"
            self.seen.append(what)
            raise StartedAProcess(
                f"{self.nodeid} started a process ({what}) but is not marked slow: mark it "
                "@pytest.mark.slow, or use a fixture listed in tests/conftest.py SLOW_FIXTURES")
        return refuse


def _fast(item: pytest.Item) -> bool:
    return item.get_closest_marker("slow") is None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    if not _fast(item):
        return (yield)
    guard = _ProcessGuard(item.nodeid)
    item.stash[_GUARD] = guard
    with guard:
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    guard = item.stash.get(_GUARD, None)
    if guard is None:
        return (yield)
    with guard:
        result = yield
    if guard.seen:  # even if the test caught the exception
        raise StartedAProcess(f"{item.nodeid} is not marked slow but started: {guard.seen}")
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    guard = item.stash.get(_GUARD, None)
    if guard is None:
        return (yield)
    with guard:
        return (yield)


_GUARD = pytest.StashKey[_ProcessGuard]()

#: A fast-layer test slower than this is listed at the end of the run (not failed: timing
#: on a shared machine is no proof); make it faster or mark it slow.
FAST_TEST_BUDGET = 2.0


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config
                            ) -> None:
    slow = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            if (getattr(report, "when", None) in ("setup", "call", "teardown")
                    and "slow" not in getattr(report, "keywords", {})
                    and report.duration > FAST_TEST_BUDGET):
                slow.append((report.duration, report.nodeid, report.when))
    if slow:
        terminalreporter.section("fast-layer tests over budget")
        for duration, nodeid, when in sorted(slow, reverse=True):
            terminalreporter.write_line(f"{duration:6.2f}s {when:8} {nodeid}  (mark it slow?)")

"""Drive third-party Gearman libraries (Perl, PHP, pygearman) and ours through small helper
scripts in this directory, all speaking one JSON shape, so a test can pair any client with
any worker against any server.

A client script reads one JSON request on stdin::

    {"port": 4730, "mode": "do" | "tasks" | "status", "exceptions": false, "timeout": 20,
     "tasks": [{"fn": "reverse", "arg": "<hex>", "unique": "u" | null,
                "priority": "high" | "normal" | "low", "background": false}],
     "handles": ["H:host:1"]}                                  # mode "status" only

``do`` runs the tasks one by one with the library's blocking call (do_task, doNormal,
submit_job, ...); ``tasks`` submits them all together (a task set, addTask + runTasks,
submit_multiple_jobs) and reports as events come; ``status`` asks GET_STATUS for handles.
It writes one JSON event per line: ``created`` (handle), ``data`` / ``warning`` /
``complete`` / ``exception`` (hex), ``status`` (n, d), ``fail``, ``jobstatus`` (known,
running, n, d) — each with the task's index ``i`` — and finally ``end``.

A worker script (``*_worker.*  PORT LOGFILE``) registers ``reverse``, ``echo``, ``progress``
(status 1/3, data d1, warning w1, status 2/3, data d2, result "done"), ``fail``,
``exception`` ("boom") and ``gate`` (status 1/2, then waits until the file named by the
argument exists, result "opened"); it appends one JSON line per job to LOGFILE.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI, RunningServer

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TIMEOUT = 20.0
FUNCTIONS = ("echo", "exception", "fail", "gate", "progress", "reverse")

Event = dict[str, Any]


@functools.cache
def _php_has_gearman() -> bool:
    php = shutil.which("php")
    if php is None:
        return False
    probe = subprocess.run([php, "-r", "exit(extension_loaded('gearman') ? 0 : 1);"],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=20,
                           check=False)
    return probe.returncode == 0


def _perl_has_gearman() -> bool:
    return shutil.which("perl") is not None and os.path.exists(
        "/usr/share/perl5/Gearman/Client.pm")


def _pygearman_installed() -> bool:
    return importlib.util.find_spec("gearman") is not None


@dataclass(frozen=True)
class Library:
    """One client/worker library and how to run its helper scripts."""

    name: str
    interpreter: tuple[str, ...]
    client_script: str
    worker_script: str
    available: Callable[[], bool]
    missing: str  # what to install
    #: does the client library ask for WORK_EXCEPTION packets (OPTION_REQ exceptions)?
    exceptions: bool = True

    def client_cmd(self) -> list[str]:
        return [*self.interpreter, str(HERE / self.client_script)]

    def worker_cmd(self, port: int, log: Path) -> list[str]:
        return [*self.interpreter, str(HERE / self.worker_script), str(port), str(log)]


LIBRARIES: dict[str, Library] = {
    "perl": Library("perl", ("perl",), "perl_client.pl", "perl_worker.pl", _perl_has_gearman,
                    "Debian libgearman-client-perl"),
    "php": Library("php", ("php",), "php_client.php", "php_worker.php", _php_has_gearman,
                   "Debian php-cli and php-gearman"),
    "pygearman": Library("pygearman", (sys.executable,), "pygearman_client.py",
                         "pygearman_worker.py", _pygearman_installed,
                         "PyPI pygearman (the test extra)", exceptions=False),
    "ours": Library("ours", (sys.executable,), "ours_client.py", "ours_worker.py",
                    lambda: True, "nothing"),
}


def need(name: str) -> Library:
    """The library, or skip (fail on CI, where scripts/test installs them) if missing."""
    lib = LIBRARIES[name]
    if not lib.available():
        msg = f"{name} Gearman library not installed ({lib.missing})"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return lib


def task(fn: str, arg: bytes | str = b"x", *, unique: str | None = None,
         priority: str = "normal", background: bool = False) -> dict[str, Any]:
    """One task of a client request (libgearman refuses empty workloads, hence ``x``)."""
    raw = arg.encode() if isinstance(arg, str) else arg
    return {"fn": fn, "arg": raw.hex(), "unique": unique, "priority": priority,
            "background": background}


def request(server: RunningServer, mode: str, tasks: list[dict[str, Any]] | None = None,
            *, handles: list[str] | None = None, exceptions: bool = False,
            timeout: float = TIMEOUT, **extra: Any) -> bytes:
    return json.dumps({"port": server.port, "mode": mode, "tasks": tasks or [],
                       "handles": handles or [], "exceptions": exceptions,
                       "timeout": timeout, **extra}).encode()


def _parse(out: bytes) -> list[Event]:
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


def run_client(lib: Library, server: RunningServer, mode: str,
               tasks: list[dict[str, Any]] | None = None, *, handles: list[str] | None = None,
               exceptions: bool = False, timeout: float = TIMEOUT,
               **extra: Any) -> list[Event]:
    """Run a client script to the end and return its events (the final ``end`` checked);
    ``extra`` goes into the request (``prefix``, ``uniques``, ...)."""
    proc = subprocess.run(lib.client_cmd(),
                          input=request(server, mode, tasks, handles=handles,
                                        exceptions=exceptions, timeout=timeout, **extra),
                          capture_output=True, timeout=timeout + 10, check=False, cwd=REPO)
    events = _parse(proc.stdout)
    if proc.returncode != 0 or not events or events[-1] != {"ev": "end"}:
        raise AssertionError(f"{lib.name} client exited {proc.returncode}: {events}\n"
                             f"{proc.stderr.decode(errors='replace')[-3000:]}")
    return events[:-1]


class ClientProcess:
    """A client script running in the background; its events are read as they come."""

    def __init__(self, lib: Library, server: RunningServer, mode: str,
                 tasks: list[dict[str, Any]], *, exceptions: bool = False,
                 timeout: float = TIMEOUT) -> None:
        self.lib = lib
        self.proc = subprocess.Popen(lib.client_cmd(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
        assert self.proc.stdin is not None
        self.proc.stdin.write(request(server, mode, tasks, exceptions=exceptions,
                                      timeout=timeout))
        self.proc.stdin.close()
        self.proc.stdin = None  # so nothing tries to flush it again
        self.events: list[Event] = []
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, want: Callable[[Event], bool], timeout: float = TIMEOUT) -> Event:
        """The first event (seen so far or still to come) for which ``want`` is true."""
        for event in self.events:
            if want(event):
                return event
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{self.lib.name} client: no such event after "
                                     f"{timeout}s; got {self.events}") from None
            if line is None:
                raise AssertionError(f"{self.lib.name} client ended early: {self.events}\n"
                                     f"{self._stderr()}")
            event = json.loads(line)
            self.events.append(event)
            if want(event):
                return event

    def finish(self, timeout: float = TIMEOUT) -> list[Event]:
        """Wait for ``end`` and the exit; return every event before ``end``."""
        self.wait_for(lambda e: e["ev"] == "end", timeout)
        self.proc.wait(timeout)
        assert self.proc.returncode == 0, self._stderr()
        return self.events[:-1]

    def _stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")[-3000:]

    def close(self) -> None:
        # not communicate(): the reader thread owns stdout
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def client_process(lib: Library, server: RunningServer, mode: str,
                   tasks: list[dict[str, Any]], **kw: Any) -> Iterator[ClientProcess]:
    client = ClientProcess(lib, server, mode, tasks, **kw)
    try:
        yield client
    finally:
        client.close()


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=5)


@dataclass
class WorkerProcess:
    lib: Library
    proc: subprocess.Popen[bytes]
    log: Path
    stderr: Path = field(repr=False)

    def jobs(self) -> list[dict[str, Any]]:
        """The jobs the worker started, in order: {"fn", "arg" (bytes, first 64), "len"}."""
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            job = json.loads(line)
            job["arg"] = bytes.fromhex(job["arg"])
            out.append(job)
        return out


@contextmanager
def worker_process(lib: Library, server: RunningServer, tmp_path: Path,
                   functions: tuple[str, ...] = FUNCTIONS,
                   env: dict[str, str] | None = None) -> Iterator[WorkerProcess]:
    """A worker script, registered for ``functions`` before this yields; always reaped."""
    n = len(list(tmp_path.glob("worker-*.log")))
    log = tmp_path / f"worker-{n}-{lib.name}.log"
    err = tmp_path / f"worker-{n}-{lib.name}.stderr"
    with open(err, "wb") as stderr:
        proc = subprocess.Popen(lib.worker_cmd(server.port, log), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=stderr, cwd=REPO,
                                env={**os.environ, **(env or {})})
    worker = WorkerProcess(lib, proc, log, err)
    try:
        wait_workers(server, functions, 1, proc=proc, stderr=err)
        yield worker
    finally:
        _reap(proc)


@contextmanager
def command_worker(server: RunningServer, args: list[str],
                   functions: tuple[str, ...]) -> Iterator[subprocess.Popen[bytes]]:
    """Any worker command (e.g. our ``gearman -w``), registered before this yields."""
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=REPO)
    try:
        wait_workers(server, functions, 1, proc=proc)
        yield proc
    finally:
        _reap(proc)


def admin(server: RunningServer, command: str) -> str:
    """One admin text command; the reply up to its ``.`` line."""
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(command.encode() + b"\n")
        buf = b""
        while not (buf.endswith(b"\n.\n") or buf == b".\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    return buf.decode()


def status(server: RunningServer) -> dict[str, tuple[int, int, int]]:
    """``status`` as {function: (total, running, workers)}."""
    out = {}
    for line in admin(server, "status").splitlines():
        if line != "." and line.count("\t") >= 3:
            name, total, running, workers = line.rsplit("\t", 3)  # names may hold tabs
            out[name] = (int(total), int(running), int(workers))
    return out


def wait_workers(server: RunningServer, functions: tuple[str, ...], count: int = 1, *,
                 proc: subprocess.Popen[bytes] | None = None, stderr: Path | None = None,
                 timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        st = status(server)
        if all(st.get(fn, (0, 0, 0))[2] >= count for fn in functions):
            return
        if proc is not None and proc.poll() is not None:
            text = stderr.read_text(errors="replace") if stderr else ""
            raise AssertionError(f"worker exited {proc.returncode} before registering: {text}")
        if time.monotonic() > deadline:
            raise AssertionError(f"workers for {functions} not registered: {st}")
        time.sleep(0.02)


def wait_until(check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass
class Outcome:
    """What one client saw of one task."""

    handle: str | None = None
    data: list[bytes] = field(default_factory=list)
    warnings: list[bytes] = field(default_factory=list)
    status: list[tuple[int, int]] = field(default_factory=list)
    result: bytes | None = None
    failed: bool = False
    exception: bytes | None = None


def outcomes(events: list[Event], count: int) -> list[Outcome]:
    out = [Outcome() for _ in range(count)]
    for e in events:
        o = out[e["i"]]
        kind = e["ev"]
        if kind == "created":
            o.handle = e["handle"]
        elif kind == "data":
            o.data.append(bytes.fromhex(e["hex"]))
        elif kind == "warning":
            o.warnings.append(bytes.fromhex(e["hex"]))
        elif kind == "status":
            o.status.append((int(e["n"]), int(e["d"])))
        elif kind == "complete":
            o.result = bytes.fromhex(e["hex"])
        elif kind == "fail":
            o.failed = True
        elif kind == "exception":
            o.exception = bytes.fromhex(e["hex"])
        else:
            raise AssertionError(f"unexpected event {e}")
    return out


def payload(size: int = 1 << 20) -> bytes:
    """A binary payload with every byte value, NULs included, that no shift leaves equal."""
    block = bytes(range(256)) + b"\0\r\n\0" + bytes(range(255, -1, -1))
    data = (block * (size // len(block) + 1))[:size]
    return data[:-8] + b"\0END\xff\xfe\0\n"

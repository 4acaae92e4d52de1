"""Shared fixtures: free ports, and gearmand processes (ours and the reference) on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

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


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """``start_server(kind, *extra_args)`` starts a gearmand; all are stopped at teardown."""
    started: list[RunningServer] = []

    def start(kind: str = "ours", *extra: str) -> RunningServer:
        srv = _start(kind, tmp_path, list(extra))
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def reference_server(start_server: Callable[..., RunningServer]) -> RunningServer:
    """The reference C gearmand on a free port."""
    return start_server("reference")


@pytest.fixture(params=["ours", "reference"])
def any_server(request: pytest.FixtureRequest,
               start_server: Callable[..., RunningServer]) -> RunningServer:
    """Each test runs once against our gearmand and once against the reference."""
    return start_server(request.param)

"""Helpers for the CLI tests: run our ``gearman``/``gearadmin`` (and the reference tools) as
real processes, always with a timeout, always reaped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from tests.conftest import REFERENCE_GEARADMIN, REFERENCE_GEARMAN, RunningServer
from tests.wire import connect

TIMEOUT = 15.0
GEARMAN = [sys.executable, "-m", "gearman_cli"]
GEARADMIN = [sys.executable, "-m", "gearman_cli.gearadmin"]
REF_GEARMAN = [REFERENCE_GEARMAN]
REF_GEARADMIN = [REFERENCE_GEARADMIN]

ENV = {k: v for k, v in os.environ.items() if not k.startswith("GEARMAN_SERVER")}


def server_args(server: RunningServer) -> list[str]:
    return ["-h", "127.0.0.1", "-p", str(server.port)]


def run(cmd: Sequence[str], *args: str, input: bytes | None = b"", timeout: float = TIMEOUT,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*cmd, *args], input=input, capture_output=True, timeout=timeout,
                          check=False, env=env if env is not None else ENV)


def gearman(server: RunningServer, *args: str, input: bytes | None = b"",
            timeout: float = TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    """Our ``gearman`` against ``server``."""
    return run(GEARMAN, *server_args(server), *args, input=input, timeout=timeout)


def gearadmin(server: RunningServer, *args: str,
              cmd: Sequence[str] = GEARADMIN) -> subprocess.CompletedProcess[bytes]:
    return run(cmd, *server_args(server), *args, input=None)


def status(server: RunningServer) -> dict[bytes, tuple[int, int, int]]:
    with connect(server.port) as admin:
        reply = admin.admin("status")
    out = {}
    for line in reply[:-2].splitlines():
        name, total, running, workers = line.split(b"\t")
        out[name] = (int(total), int(running), int(workers))
    return out


def wait_status(server: RunningServer, fn: bytes, want: tuple[int, int, int],
                timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while (got := status(server).get(fn)) != want:
        if time.monotonic() > deadline:
            raise AssertionError(f"status of {fn!r} is {got}, waited for {want}")
        time.sleep(0.03)


def reap(proc: subprocess.Popen[bytes], sig_term: bool = True) -> tuple[bytes, bytes]:
    if proc.poll() is None and sig_term:
        proc.terminate()
    try:
        out, err = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=5)
    return out, err


@contextmanager
def spawn(cmd: Sequence[str], *args: str, stdin: int | None = subprocess.DEVNULL,
          env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([*cmd, *args], stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env if env is not None else ENV)
    try:
        yield proc
    finally:
        reap(proc)


@contextmanager
def worker(server: RunningServer, function: str, *command: str, options: Sequence[str] = (),
           tool: Sequence[str] = GEARMAN, workers: int = 1) -> Iterator[subprocess.Popen[bytes]]:
    """``gearman -w -f function [options] -- command``, registered before we go on."""
    args = [*server_args(server), "-w", "-f", function, *options]
    if command:
        args += ["--", *command]
    before = status(server).get(function.encode(), (0, 0, 0))
    with spawn(tool, *args) as proc:
        wait_status(server, function.encode(), (before[0], before[1], before[2] + workers))
        yield proc

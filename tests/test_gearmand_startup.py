"""Issue 13, gearmand's start-up (server/daemon.py, server/__main__.py): the pid file is
written only after binding and never clobbers a live process's; a detached server that
cannot log refuses to start; fatal errors print once and name the address."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for_port

pytestmark = pytest.mark.slow

TIMEOUT = 20


def gearmand(*args: str) -> list[str]:
    return [sys.executable, "-m", "server", "-L", "127.0.0.1", *args]


def written_pid(path: Path, before: str = "") -> str:
    """The pid file's text once the server has written it. The port accepts connections
    as soon as it is bound, a moment before the server writes its pid (it writes only
    after binding), so a test that waited for the port waits for the file too."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = before
        if text != before or time.monotonic() > deadline:
            return text
        time.sleep(0.01)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes], Path]]:
    port = free_port()
    pid_file = tmp_path / "a.pid"
    proc = subprocess.Popen(gearmand("-p", str(port), "-P", str(pid_file),
                                     f"--log-file={tmp_path / 'a.log'}"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        written_pid(pid_file)
        yield port, proc, pid_file
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)


def test_failed_start_leaves_the_running_servers_pid_file(
        running: tuple[int, subprocess.Popen[bytes], Path], tmp_path: Path) -> None:
    port, proc, pid_file = running
    assert pid_file.read_text() == f"{proc.pid}\n"
    done = subprocess.run(gearmand("-p", str(port), "-P", str(pid_file), "-l", "stderr"),
                          capture_output=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 1
    assert pid_file.read_text() == f"{proc.pid}\n"


def test_port_in_use_names_the_address_once(
        running: tuple[int, subprocess.Popen[bytes], Path], tmp_path: Path) -> None:
    port, _, _ = running
    done = subprocess.run(gearmand("-p", str(port), "-P", str(tmp_path / "b.pid"),
                                   "-l", "stderr"),
                          capture_output=True, timeout=TIMEOUT, check=False, text=True)
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert done.stderr.count("Could not start") == 1, done.stderr


def test_live_pid_file_is_not_overwritten(tmp_path: Path) -> None:
    pid_file = tmp_path / "held.pid"
    with subprocess.Popen(["sleep", "30"]) as holder:
        try:
            pid_file.write_text(f"{holder.pid}\n")
            done = subprocess.run(
                gearmand("-p", str(free_port()), "-P", str(pid_file), "-l", "stderr"),
                capture_output=True, timeout=TIMEOUT, check=False, text=True)
            assert done.returncode == 1
            assert f"belongs to running process {holder.pid}" in done.stderr
            assert pid_file.read_text() == f"{holder.pid}\n"
        finally:
            holder.kill()


def test_stale_pid_file_is_replaced_and_removed(tmp_path: Path) -> None:
    pid_file = tmp_path / "stale.pid"
    pid_file.write_text("999999999\n")
    port = free_port()
    proc = subprocess.Popen(gearmand("-p", str(port), "-P", str(pid_file), "-l", "none"))
    try:
        wait_for_port(port)
        assert written_pid(pid_file, "999999999\n") == f"{proc.pid}\n"
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)
    assert not pid_file.exists()


def test_daemon_that_cannot_log_fails_before_detaching(tmp_path: Path) -> None:
    done = subprocess.run(gearmand("-d", "-p", str(free_port()), "-P", str(tmp_path / "d.pid"),
                                   "-l", "/nonexistent/dir/x.log"),
                          capture_output=True, timeout=TIMEOUT, check=False, text=True)
    assert done.returncode == 1
    assert "/nonexistent/dir/x.log" in done.stderr
    assert not (tmp_path / "d.pid").exists()

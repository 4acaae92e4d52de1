"""The reference C tools (gearman, gearadmin 1.1.20) against our gearmand and the reference.

Each scenario runs against both servers and asserts the same output (spec §6, §7), except
where decisions.md makes our server behave differently. Every process has a timeout and
is reaped.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import pytest

from protocol import PacketType as PT
from protocol import __version__
from tests.cli_helpers import status, wait_status
from tests.conftest import REFERENCE_GEARADMIN, REFERENCE_GEARMAN, RunningServer
from tests.wire import Wire, connect

TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def _tools_installed() -> None:
    if not (os.path.exists(REFERENCE_GEARMAN) and os.path.exists(REFERENCE_GEARADMIN)):
        pytest.skip("reference gearman-tools not installed")


def gearman(server: RunningServer, *args: str, input: bytes | None = b"",
            timeout: float = TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    """Run the reference ``gearman`` tool against ``server`` and wait for it."""
    return subprocess.run(
        [REFERENCE_GEARMAN, "-h", "127.0.0.1", "-p", str(server.port), *args],
        input=input, capture_output=True, timeout=timeout, check=False)


def gearadmin(server: RunningServer, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [REFERENCE_GEARADMIN, "-h", "127.0.0.1", "-p", str(server.port), *args],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT, check=False)


@contextmanager
def spawn(server: RunningServer, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """A ``gearman`` process (usually a worker), stopped and reaped on exit."""
    proc = subprocess.Popen(
        [REFERENCE_GEARMAN, "-h", "127.0.0.1", "-p", str(server.port), *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=5)


@contextmanager
def tool_worker(server: RunningServer, function: str, *command: str,
                options: Sequence[str] = ()) -> Iterator[subprocess.Popen[bytes]]:
    """``gearman -w -f function [options] -- command``, registered before we go on."""
    args = ["-w", "-f", function, *options]
    if command:
        args += ["--", *command]
    with spawn(server, *args) as proc:
        wait_status(server, function.encode(), (0, 0, 1))
        yield proc


def test_reverse(module_server: RunningServer) -> None:
    with tool_worker(module_server, "reverse", "rev"):
        done = gearman(module_server, "-f", "reverse", "Hello World!")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"!dlroW olleH", b"")


def test_tutorial_grep_session(module_server: RunningServer) -> None:
    listing = subprocess.run(["ls", "/"], capture_output=True, check=True, timeout=5).stdout
    expected = b"".join(line + b"\n" for line in listing.splitlines() if b"lib" in line)
    with tool_worker(module_server, "test", "grep", "lib"):
        done = gearman(module_server, "-f", "test", input=listing)
    assert (done.returncode, done.stdout, done.stderr) == (0, expected, b"")


def test_client_one_job_per_line(any_server: RunningServer) -> None:
    with tool_worker(any_server, "upper", "tr", "a-z", "A-Z"):
        done = gearman(any_server, "-n", "-f", "upper", input=b"one\ntwo\nthree\n")
        assert (done.returncode, done.stdout) == (0, b"ONE\nTWO\nTHREE\n")
        done = gearman(any_server, "-N", "-f", "upper", input=b"one\ntwo\n")
        assert (done.returncode, done.stdout) == (0, b"ONETWO")
        # -v prints the handle of each job (through stdio, so after the raw data).
        done = gearman(any_server, "-v", "-f", "upper", "x")
    assert done.returncode == 0
    assert re.fullmatch(rb"XTask created: H:[^:]+:6\n", done.stdout), done.stdout


def test_background_jobs_drained_by_counting_worker(module_server: RunningServer) -> None:
    for data in ("a1", "b2", "c3"):
        done = gearman(module_server, "-b", "-f", "bgq", data)
        assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    assert status(module_server)[b"bgq"] == (3, 0, 0)
    with spawn(module_server, "-w", "-c", "3", "-f", "bgq") as proc:
        out, err = proc.communicate(timeout=TIMEOUT)
    assert (proc.returncode, out, err) == (0, b"a1b2c3", b"")
    # The reference keeps the function for ever; ours frees it once nothing refers to it.
    assert status(module_server).get(b"bgq", (0, 0, 0)) == (0, 0, 0)


def test_priority_options_and_unique(any_server: RunningServer) -> None:
    for opt, data in (("-L", "low"), ("-b", "normal"), ("-I", "high")):
        extra = [opt] if opt == "-b" else ["-b", opt]
        assert gearman(any_server, *extra, "-f", "pq", data).returncode == 0
    with connect(any_server.port) as admin:
        assert admin.admin("prioritystatus") == b"pq\t1\t1\t1\t0\n.\n"
        # libgearman sends a fresh time-based UUID as the unique of every job (spec §1.4).
        uniques = admin.admin("show unique jobs")[:-2].splitlines()
    assert len(set(uniques)) == 3
    for unique in uniques:
        assert re.fullmatch(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                            unique), unique
    # -u: the same unique twice coalesces into one job.
    assert gearman(any_server, "-b", "-u", "same", "-f", "uq", "x").returncode == 0
    assert gearman(any_server, "-b", "-u", "same", "-f", "uq", "y").returncode == 0
    assert status(any_server)[b"uq"] == (1, 0, 0)
    with spawn(any_server, "-w", "-c", "3", "-f", "pq") as proc:
        out, _ = proc.communicate(timeout=TIMEOUT)
    assert out == b"highnormallow"


def test_prefix_with_two_functions(module_server: RunningServer) -> None:
    with tool_worker(module_server, "reverse", "rev"), tool_worker(module_server, "upper", "tr",
                                                                "a-z", "A-Z"):
        done = gearman(module_server, "-P", "-f", "reverse", "abc")
        assert (done.returncode, done.stdout) == (0, b"reverse: cba")
        done = gearman(module_server, "-P", "-f", "reverse", "-f", "upper", "abc")
    assert done.returncode == 0
    # Both tasks run concurrently: either may print first.
    assert done.stdout in (b"reverse: cbaupper: ABC", b"upper: ABCreverse: cba")


def _serve_one(server: RunningServer, function: bytes,
               packets: Sequence[tuple[PT, bytes]]) -> None:
    """Take one job of ``function`` over the wire and answer it with ``packets``."""
    with Wire(server.port) as w:
        w.send(PT.CAN_DO, function)
        deadline = time.monotonic() + TIMEOUT
        while True:
            w.send(PT.GRAB_JOB)
            reply = w.recv()
            if reply.type is PT.JOB_ASSIGN:
                break
            assert reply.type is PT.NO_JOB, reply
            # Sleep until the server wakes us for the job (as a real worker does).
            w.send(PT.PRE_SLEEP)
            w.expect(PT.NOOP, timeout=max(0.0, deadline - time.monotonic()))
        handle = reply.args[0]
        for ptype, payload in packets:
            if ptype is PT.WORK_STATUS:
                num, den = payload.split(b"/")
                w.send(ptype, handle, num, den)
            elif ptype is PT.WORK_FAIL:
                w.send(ptype, handle)
            else:
                w.send(ptype, handle, payload)
            time.sleep(0.05)  # one packet at a time, as a real worker would
        w.send(PT.ECHO_REQ, b"done")
        w.expect(PT.ECHO_RES, b"done")


ROUTING = [(PT.WORK_DATA, b"D1"), (PT.WORK_WARNING, b"W1"), (PT.WORK_STATUS, b"1/3"),
           (PT.WORK_COMPLETE, b"RESULT")]


@contextmanager
def client(server: RunningServer, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    with spawn(server, *args) as proc:
        yield proc


def test_output_routing(module_server: RunningServer) -> None:
    with client(module_server, "-s", "-f", "pw") as proc:
        _serve_one(module_server, b"pw", ROUTING)
        out, err = proc.communicate(timeout=TIMEOUT)
    # spec §6.1, verified against 1.1.20.
    assert (proc.returncode, out, err) == (0, b"D1RESULT33% Complete\n", b"W1")


def test_output_routing_with_prefix(module_server: RunningServer) -> None:
    with client(module_server, "-P", "-s", "-f", "pw") as proc:
        _serve_one(module_server, b"pw", ROUTING)
        out, err = proc.communicate(timeout=TIMEOUT)
    assert (proc.returncode, out, err) == (0, b"pw: D1pw: 33% Complete\npw: RESULT", b"pw: W1")


def test_failed_job(module_server: RunningServer) -> None:
    with client(module_server, "-s", "-f", "ff") as proc:
        _serve_one(module_server, b"ff", [(PT.WORK_DATA, b"partial"), (PT.WORK_FAIL, b"")])
        out, err = proc.communicate(timeout=TIMEOUT)
    assert (proc.returncode, out, err) == (1, b"partial", b"Job failed\n")


def test_exception_without_exceptions_option(any_server: RunningServer) -> None:
    with client(any_server, "-s", "-f", "fe") as proc:
        _serve_one(any_server, b"fe", [(PT.WORK_EXCEPTION, b"boom")])
        if any_server.kind == "ours":
            # decisions.md: WORK_FAIL with the bare handle, which the client understands.
            out, err = proc.communicate(timeout=TIMEOUT)
            assert (proc.returncode, out, err) == (1, b"", b"Job failed\n")
        else:
            # 1.1.20 appends a NUL to the handle: the client never matches it and hangs.
            with pytest.raises(subprocess.TimeoutExpired):
                proc.communicate(timeout=1.5)


def test_exception_with_server_exceptions_flag(
        start_server: Callable[..., RunningServer]) -> None:
    for kind in ("ours", "reference"):
        server = start_server(kind, "--exceptions")
        with client(server, "-s", "-f", "fe") as proc:
            _serve_one(server, b"fe", [(PT.WORK_EXCEPTION, b"boom")])
            out, err = proc.communicate(timeout=TIMEOUT)
        assert (proc.returncode, out, err) == (0, b"", b"boom"), kind


def test_worker_command_failure(module_server: RunningServer) -> None:
    with tool_worker(module_server, "fails", "sh", "-c", "cat; exit 3"):
        done = gearman(module_server, "-f", "fails", "payload")
    assert (done.returncode, done.stdout, done.stderr) == (1, b"payload", b"Job failed\n")


def test_gearadmin_against_server(any_server: RunningServer) -> None:
    with tool_worker(any_server, "adm", options=["-c", "0"]):
        assert gearman(any_server, "-b", "-f", "queued", "x").returncode == 0
        done = gearadmin(any_server, "--status", "--workers", "--server-version", "--getpid",
                         "--show-jobs")
    assert done.returncode == 0 and done.stderr == b""
    text = done.stdout
    version = re.escape(__version__.encode()) if any_server.kind == "ours" else rb"1\.1\.20\+ds"
    # Fixed order: getpid, show-jobs, server-version, workers, status (spec §7).
    m = re.fullmatch(
        rb"(?P<pid>\d+)\n"
        rb"(?P<jobs>(?:H:[^\t\n]+\t0\t0\t1\n)*)\.\n"
        rb"(?P<version>" + version + rb")\n"
        rb"(?P<workers>(?:\d+ 127\.0\.0\.1 [^\n]*\n)*)\.\n"
        rb"(?P<status>(?:[^\t\n]+\t\d+\t\d+\t\d+\n)*)\.\n", text)
    assert m, text
    assert int(m["pid"]) == any_server.proc.pid
    assert len(m["jobs"].splitlines()) == 1
    worker_lines = m["workers"].splitlines()
    assert any(line.endswith(b" - : adm") for line in worker_lines), worker_lines
    assert sorted(m["status"].splitlines()) == [b"adm\t0\t0\t1", b"queued\t1\t0\t0"]


def test_gearadmin_mutating_commands(any_server: RunningServer) -> None:
    done = gearadmin(any_server, "--create-function", "made")
    assert (done.returncode, done.stdout) == (0, b"OK\n")
    assert b"made" in status(any_server)
    done = gearadmin(any_server, "--drop-function", "made")
    assert (done.returncode, done.stdout) == (0, b"OK\n")
    assert b"made" not in status(any_server)
    done = gearadmin(any_server, "--cancel-job", "H:nowhere:1")
    assert done.stderr == b"Error: UNKNOWN_JOB\r\n"
    # decisions.md: gearadmin's exit code is the tool's business; the reference tool says 0.
    assert done.returncode == 0
    assert gearman(any_server, "-b", "-f", "c", "x").returncode == 0
    with connect(any_server.port) as admin:
        handle = admin.admin("show jobs").split(b"\t")[0].decode()
    done = gearadmin(any_server, "--cancel-job", handle)
    assert (done.returncode, done.stdout) == (0, b"OK\n")


def test_gearadmin_every_listing(any_server: RunningServer) -> None:
    assert gearman(any_server, "-b", "-I", "-u", "uniq-1", "-f", "lst", "x").returncode == 0
    done = gearadmin(any_server, "--status", "--priority-status", "--show-unique-jobs",
                     "--server-verbose")
    # Fixed order: show-unique-jobs, server-verbose, priority-status, status (spec §7).
    assert (done.returncode, done.stdout, done.stderr) == (
        0, b"uniq-1\n.\nERROR\nlst\t1\t0\t0\t0\n.\nlst\t1\t0\t0\n.\n", b"")

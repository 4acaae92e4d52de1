"""Our ``gearadmin`` against our gearmand and the reference: the same bytes as the reference
tool where a script reads them (spec §7), the fixes of decisions.md (commands in the order
given, replies read to their end, exit 1 on ERR), ``--json`` and the terminal table."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

import pexpect
import pytest

from tests.cli_helpers import (
    GEARADMIN,
    REF_GEARADMIN,
    TIMEOUT,
    gearadmin,
    gearman,
    run,
    worker,
)
from tests.conftest import RunningServer, free_port

OPTIONS = ["--help", "-h", "--host", "-p", "--port", "--server-version", "--server-verbose",
           "--create-function", "--cancel-job", "--drop-function", "--show-unique-jobs",
           "--show-jobs", "--getpid", "--status", "--priority-status", "--workers", "-S",
           "--ssl", "--ssl-ca-file", "--ssl-certificate", "--ssl-key", "--json", "--shutdown",
           "--shutdown-graceful"]


def _need_reference() -> None:
    if not os.path.exists(REF_GEARADMIN[0]):
        pytest.skip("reference gearadmin not installed")


def test_help_lists_every_option() -> None:
    done = run(GEARADMIN, "--help", input=None)
    assert done.returncode == 0
    for option in OPTIONS:
        assert option in done.stdout.decode(), option


@pytest.mark.parametrize(("args", "message"), [
    ((), b"No option execution operation given."),
    (("--bogus",), b"No such option"),
    (("--status", "--ssl-ca-file", "/nonexistent/ca.pem"), b"cannot read it"),
    (("--status", "-p", "no-such-service"), b"unknown port"),
    (("--cancel-job",), b"requires an argument"),
])
def test_usage_errors_exit_2(args: tuple[str, ...], message: bytes) -> None:
    done = run(GEARADMIN, *args, input=None)
    assert done.returncode == 2 and message in done.stderr and b"Traceback" not in done.stderr


def test_unreachable_server_exits_3() -> None:
    done = run(GEARADMIN, "-h", "127.0.0.1", "-p", str(free_port()), "--status", input=None)
    assert done.returncode == 3 and done.stdout == b""
    assert done.stderr.startswith(b"gearadmin: cannot connect to 127.0.0.1:")


def test_same_bytes_as_the_reference_tool(any_server: RunningServer) -> None:
    _need_reference()
    assert gearman(any_server, "-b", "-I", "-u", "uniq-1", "-f", "lst", "x").returncode == 0
    # The reference's fixed order (spec §7), so both tools print the same sequence.
    args = ["--getpid", "--create-function", "made", "--show-jobs", "--show-unique-jobs",
            "--server-verbose", "--server-version", "--priority-status", "--status"]
    ours = gearadmin(any_server, *args)
    theirs = gearadmin(any_server, *args, cmd=REF_GEARADMIN)
    assert (ours.returncode, ours.stdout, ours.stderr) == (0, theirs.stdout, theirs.stderr)
    assert ours.stdout.startswith(f"{any_server.proc.pid}\nOK\n".encode())
    assert b"uniq-1\n.\n" in ours.stdout and b"lst\t1\t0\t0\t0\n" in ours.stdout
    ours = gearadmin(any_server, "--drop-function", "made")
    theirs = gearadmin(any_server, "--drop-function", "nothere", cmd=REF_GEARADMIN)
    assert ours.stdout == b"OK\n"
    assert theirs.stderr == b"Error: function not found\r\n"
    ours = gearadmin(any_server, "--drop-function", "nothere", "--cancel-job", "H:nowhere:1")
    theirs = gearadmin(any_server, "--drop-function", "nothere", "--cancel-job", "H:nowhere:1",
                       cmd=REF_GEARADMIN)
    assert ours.stderr == theirs.stderr == (
        b"Error: function not found\r\nError: UNKNOWN_JOB\r\n")
    # decisions.md: an ERR reply makes the exit status 1 (the reference says 0).
    assert (ours.returncode, theirs.returncode) == (1, 0)


def test_commands_run_in_the_order_given(any_server: RunningServer) -> None:
    with worker(any_server, "adm"):
        done = gearadmin(any_server, "--status", "--server-version", "--workers", "--getpid")
    assert done.returncode == 0
    text = done.stdout
    status, rest = text.split(b"\n.\n", 1)
    assert b"adm\t0\t0\t1" in status.splitlines()
    version, rest = rest.split(b"\n", 1)
    assert version and b"\t" not in version
    workers, pid = rest.split(b".\n")
    assert any(line.endswith(b" : adm") for line in workers.splitlines()), workers
    assert pid == f"{any_server.proc.pid}\n".encode()


def test_json(any_server: RunningServer) -> None:
    with worker(any_server, "js"):
        done = gearadmin(any_server, "--json", "--getpid", "--status", "--workers",
                         "--cancel-job", "H:nowhere:1")
    assert done.returncode == 1
    getpid, status, workers, cancel = json.loads(done.stdout)
    assert getpid == {"command": "getpid", "ok": True, "reply": any_server.proc.pid}
    assert {"function": "js", "total": 0, "running": 0, "workers": 1} in status["reply"]
    assert any(w["functions"] == ["js"] for w in workers["reply"])
    assert cancel == {"command": "cancel job H:nowhere:1", "ok": False, "error": "UNKNOWN_JOB"}


def test_table_on_a_terminal(any_server: RunningServer) -> None:
    assert gearman(any_server, "-b", "-f", "[bold]tbl", "x").returncode == 0
    child = pexpect.spawn(sys.executable, [*GEARADMIN[1:], "-h", "127.0.0.1", "-p",
                                           str(any_server.port), "--status"],
                          timeout=TIMEOUT, dimensions=(24, 100), env={**os.environ})
    try:
        child.expect(pexpect.EOF)
        text = child.before.decode()
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    assert "Function" in text and "Workers" in text and "─" in text
    assert "[bold]tbl" in text  # markup off: a function name is never read as markup


def test_shutdown_our_server(start_server: Callable[..., RunningServer]) -> None:
    server = start_server("ours")
    done = gearadmin(server, "--shutdown")
    assert (done.returncode, done.stdout) == (0, b"OK\n")
    assert server.proc.wait(TIMEOUT) is not None


def test_reference_gearadmin_unaffected_by_our_tools(reference_server: RunningServer) -> None:
    """Our gearadmin prints a server's OK value verbatim (here the reference's version)."""
    done = gearadmin(reference_server, "--server-version")
    assert (done.returncode, done.stdout) == (0, b"1.1.20+ds\n")

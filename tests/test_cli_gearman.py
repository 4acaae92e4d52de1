"""Our ``gearman`` command, as real processes, against our gearmand and the reference.

Spec §6 with the fixes of decisions.md ("Tools"): every flag, output routing, exit codes,
the pipelined -n client, and the worker (with the reference's two worker bugs as
regression tests: the 400 KB deadlock, and -n resending earlier lines).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from protocol import PacketType as PT
from tests.cli_helpers import (
    ENV,
    GEARMAN,
    TIMEOUT,
    gearman,
    reap,
    run,
    server_args,
    spawn,
    status,
    wait_status,
    worker,
)
from tests.conftest import RunningServer, free_port, wait_for_port
from tests.wire import Wire, WireTimeout, connect

# -- parsing, no server needed ------------------------------------------------------------

FLAGS = ["-f", "-h", "-p", "-t", "-i", "-d", "-S", "-v", "-b", "-I", "-L", "-n", "-N", "-P",
         "-s", "-u", "-c", "-w", "-H", "--window", "--concurrency", "--job-timeout", "--ssl",
         "--ssl-ca-file", "--ssl-certificate", "--ssl-key"]


def test_help_lists_every_flag() -> None:
    for flag in ("-H", "--help"):
        done = run(GEARMAN, flag)
        assert done.returncode == 0 and done.stderr == b""
        text = done.stdout.decode()
        for f in FLAGS:
            assert f in text, f
        assert "Exit status" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), b"no function given"),
        (("-e", "-f", "x"), b"No such option '-e'"),
        (("-f",), b"requires an argument"),
        (("-S", "--ssl-key", "k.pem", "-f", "x"), b"a client key needs its certificate"),
        (("-p", "0", "-f", "x"), b"-p"),
        (("-c", "-1", "-w", "-f", "x"), b"-c"),
        (("-u", "x" * 65, "-f", "x"), b"-u"),
    ],
)
def test_usage_errors_exit_2_without_traceback(args: tuple[str, ...], message: bytes) -> None:
    done = run(GEARMAN, *args)
    assert done.returncode == 2, done
    assert message in done.stderr
    assert b"Traceback" not in done.stderr and done.stdout == b""


def test_no_server_exits_3_with_one_line() -> None:
    done = run(GEARMAN, "-h", "127.0.0.1", "-p", str(free_port()), "-f", "x", "data")
    assert done.returncode == 3
    assert done.stderr.startswith(b"gearman: no server reachable")
    assert done.stderr.count(b"\n") == 1 and done.stdout == b""


# -- client and worker, against both servers ----------------------------------------------


def test_tutorial_reverse(any_server: RunningServer) -> None:
    with worker(any_server, "reverse", "rev"):
        done = gearman(any_server, "-f", "reverse", "Hello World!")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"!dlroW olleH", b"")


def test_seed_grep_session(any_server: RunningServer) -> None:
    listing = subprocess.run(["ls", "/"], capture_output=True, check=True, timeout=5).stdout
    want = b"".join(line + b"\n" for line in listing.splitlines() if b"lib" in line)
    with worker(any_server, "test", "grep", "lib"):
        done = gearman(any_server, "-f", "test", input=listing)
    assert (done.returncode, done.stdout, done.stderr) == (0, want, b"")


def _serve_one(server: RunningServer, function: bytes,
               packets: Sequence[tuple[PT, bytes]]) -> bytes:
    """Take one job of ``function`` over the wire, answer with ``packets``; the workload."""
    with Wire(server.port) as w:
        w.send(PT.CAN_DO, function)
        deadline = time.monotonic() + TIMEOUT
        while True:
            w.send(PT.GRAB_JOB)
            reply = w.recv()
            if reply.type is PT.JOB_ASSIGN:
                break
            if time.monotonic() > deadline:
                raise WireTimeout("no job came")
            time.sleep(0.02)
        handle = reply.args[0]
        for ptype, payload in packets:
            if ptype is PT.WORK_STATUS:
                w.send(ptype, handle, *payload.split(b"/"))
            elif ptype is PT.WORK_FAIL:
                w.send(ptype, handle)
            else:
                w.send(ptype, handle, payload)
            time.sleep(0.03)
        w.send(PT.ECHO_REQ, b"done")
        w.expect(PT.ECHO_RES, b"done")
        return bytes(reply.args[2])


ROUTING = [(PT.WORK_DATA, b"D1"), (PT.WORK_WARNING, b"W1"), (PT.WORK_STATUS, b"1/3"),
           (PT.WORK_STATUS, b"1/0"), (PT.WORK_COMPLETE, b"RESULT")]


@pytest.mark.parametrize("prefix", [False, True])
def test_output_routing(any_server: RunningServer, prefix: bool) -> None:
    args = ["-P"] if prefix else []
    with spawn(GEARMAN, *server_args(any_server), *args, "-s", "-f", "pw") as proc:
        assert _serve_one(any_server, b"pw", ROUTING) == b""
        out, err = proc.communicate(timeout=TIMEOUT)
    # spec §6.1; a denominator of 0 prints 0% instead of crashing (decisions.md).
    if prefix:
        assert (proc.returncode, out, err) == (
            0, b"pw: D1pw: 33% Complete\npw: 0% Complete\npw: RESULT", b"pw: W1")
    else:
        assert (proc.returncode, out, err) == (0, b"D1RESULT33% Complete\n0% Complete\n", b"W1"
                                               ) or (proc.returncode, out, err) == (
            0, b"D133% Complete\n0% Complete\nRESULT", b"W1")


def test_exception_exits_1_with_the_text(any_server: RunningServer) -> None:
    with spawn(GEARMAN, *server_args(any_server), "-f", "fe", "payload") as proc:
        assert _serve_one(any_server, b"fe", [(PT.WORK_EXCEPTION, b"boom")]) == b"payload"
        out, err = proc.communicate(timeout=TIMEOUT)
    # We ask for exceptions (OPTION_REQ), so the text arrives; decisions.md: exit non-zero.
    assert (proc.returncode, out, err) == (1, b"", b"boom")


def test_failing_command(any_server: RunningServer) -> None:
    with worker(any_server, "fails", "sh", "-c", "cat; echo oops >&2; exit 3"):
        done = gearman(any_server, "-f", "fails", "payload")
    # Output so far as data, stderr lines as warnings, then WORK_FAIL.
    assert (done.returncode, done.stdout, done.stderr) == (1, b"payload", b"oops\nJob failed\n")


def test_several_functions_with_prefix(any_server: RunningServer) -> None:
    with worker(any_server, "reverse", "rev"), worker(any_server, "upper", "tr", "a-z", "A-Z"):
        done = gearman(any_server, "-P", "-f", "reverse", "-f", "upper", "abc", "de")
    assert done.returncode == 0
    first, second = (b"reverse: cba", b"upper: ABC"), (b"reverse: ed", b"upper: DE")
    out = done.stdout
    # Each argument is one workload; the second starts after both tasks of the first.
    assert out in {a + b + c + d for a, b in (first, first[::-1]) for c, d in
                   (second, second[::-1])}, out


def test_lines_are_pipelined_and_in_input_order(any_server: RunningServer) -> None:
    script = 'read n; sleep 0.$(( (7 * n) % 3 )); echo "r$n"'
    lines = b"".join(b"%d\n" % i for i in range(1, 13))
    with worker(any_server, "slow", "sh", "-c", script, options=["--concurrency", "6"]):
        start = time.monotonic()
        done = gearman(any_server, "-n", "-f", "slow", input=lines)
        elapsed = time.monotonic() - start
        stripped = gearman(any_server, "-N", "-f", "slow", input=b"1\n2\n3")
    assert (done.returncode, done.stderr) == (0, b"")
    assert done.stdout == b"".join(b"r%d\n" % i for i in range(1, 13))
    # One at a time this takes 12 jobs x ~0.1 s sleep + a process each; 6 at once is faster.
    assert elapsed < 4.0
    # -N: the worker saw each line without its newline ("read" still works at EOF).
    assert stripped.stdout == b"r1\nr2\nr3\n"


def test_lines_strip_only_a_newline(any_server: RunningServer) -> None:
    with worker(any_server, "echo", "cat"):
        done = gearman(any_server, "-N", "-P", "-f", "echo", input=b"ab\ncd")
    # decisions.md: -N strips the newline only when there is one ("cd" keeps its "d").
    assert done.stdout == b"echo: abecho: cd"


def test_lines_streamed_as_they_arrive(any_server: RunningServer) -> None:
    """A `tail -f` line is submitted and its result written at once, without EOF."""
    with worker(any_server, "echo", "cat"), spawn(
            GEARMAN, *server_args(any_server), "-n", "-f", "echo",
            stdin=subprocess.PIPE) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"first\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
        assert ready, "the first line's result did not come before EOF"
        assert os.read(proc.stdout.fileno(), 100) == b"first\n"
        proc.stdin.close()
        proc.stdin = None
        assert proc.wait(TIMEOUT) == 0


def test_endless_input_is_bounded_by_the_window(any_server: RunningServer) -> None:
    """No worker: jobs never finish, so the client must stop reading stdin."""
    with spawn(GEARMAN, *server_args(any_server), "-n", "--window", "8", "-f", "nobody",
               stdin=subprocess.PIPE) as proc:
        assert proc.stdin is not None
        fd = proc.stdin.fileno()
        os.set_blocking(fd, False)
        line = b"x" * 99 + b"\n"
        written = 0
        deadline = time.monotonic() + 5
        stalled = 0
        while time.monotonic() < deadline and written < 20_000_000 and stalled < 8:
            try:
                written += os.write(fd, line * 100)
                stalled = 0
            except BlockingIOError:
                stalled += 1
                time.sleep(0.05)
        # 8 jobs + one 64 KiB read + the pipe buffer, never the 20 MB offered.
        assert written < 2_000_000, written
        wait_status(any_server, b"nobody", (8, 0, 0))
        proc.terminate()


def test_background_verbose_priority_unique_and_no_stdin(any_server: RunningServer) -> None:
    done = gearman(any_server, "-b", "-v", "-f", "q", "x")
    assert done.returncode == 0 and done.stderr == b""
    assert done.stdout.startswith(b"Task created: H:") and done.stdout.endswith(b"\n")
    assert gearman(any_server, "-b", "-I", "-f", "q", "x").returncode == 0
    assert gearman(any_server, "-b", "-I", "-L", "-f", "q", "x").returncode == 0  # last wins
    for _ in range(2):
        assert gearman(any_server, "-b", "-u", "same", "-f", "q", "y").returncode == 0
    assert gearman(any_server, "-b", "-s", "-f", "empty").returncode == 0
    with connect(any_server.port) as admin:
        prio = admin.admin("prioritystatus")
        uniques = admin.admin("show unique jobs")
    assert b"q\t1\t2\t1\t0\n" in prio  # high 1; normal: x and the coalesced "same"; low 1
    assert b"same\n" in uniques
    done = gearman(any_server, "-w", "-c", "1", "-f", "empty")
    assert (done.returncode, done.stdout) == (0, b"")


def test_background_lines_verbose_in_order_and_every_line_queued(
    any_server: RunningServer,
) -> None:
    n = 3000  # several batches of the window, several stdin reads' worth with -N
    lines = b"".join(b"%d\n" % i for i in range(n)) + b"last without newline"
    done = gearman(any_server, "-n", "-b", "-v", "--window", "64", "-f", "bgl", input=lines)
    assert (done.returncode, done.stderr) == (0, b"")
    created = done.stdout.splitlines()
    assert len(created) == n + 1 and all(c.startswith(b"Task created: H:") for c in created)
    assert len(set(created)) == n + 1  # one handle per line, in input order below
    done = gearman(any_server, "-N", "-b", "-I", "-f", "bgl", input=b"a\n\nb\r\n")
    assert (done.returncode, done.stdout) == (0, b"")
    assert status(any_server)[b"bgl"][0] == n + 4
    done = gearman(any_server, "-w", "-c", str(n + 4), "-f", "bgl")
    # The three high-priority -N jobs first, then the -n lines in input order.
    assert done.stdout == b"a" + b"" + b"b\r" + lines


def test_background_lines_without_a_server_exit_3() -> None:
    done = run(GEARMAN, "-h", "127.0.0.1", "-p", str(free_port()), "-n", "-b", "-f", "q",
               input=b"1\n2\n")
    assert done.returncode == 3
    assert done.stderr.count(b"\n") == 1 and b"Traceback" not in done.stderr


def test_count_pid_file_and_log_storage(any_server: RunningServer, tmp_path: Path) -> None:
    pid_file = tmp_path / "w.pid"
    with spawn(GEARMAN, *server_args(any_server), "-w", "-c", "2", "-i", str(pid_file),
               "-f", "log") as proc:
        deadline = time.monotonic() + TIMEOUT
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert int(pid_file.read_text()) == proc.pid
        for i in range(3):
            assert gearman(any_server, "-b", "-f", "log", f"line {i}\n").returncode == 0
        out, err = proc.communicate(timeout=TIMEOUT)
    assert (proc.returncode, out, err) == (0, b"line 0\nline 1\n", b"")
    assert not pid_file.exists()
    assert status(any_server)[b"log"][0] == 1


def test_log_storage_flushes_each_job(any_server: RunningServer) -> None:
    with worker(any_server, "log") as proc:
        assert gearman(any_server, "-b", "-f", "log", "one\n").returncode == 0
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
        assert ready and os.read(proc.stdout.fileno(), 100) == b"one\n"


def test_client_timeout_exits_4(any_server: RunningServer) -> None:
    start = time.monotonic()
    done = gearman(any_server, "-t", "300", "-f", "nobody", "x")
    assert time.monotonic() - start < 5
    assert (done.returncode, done.stderr) == (4, b"gearman: timed out after 300 ms\n")


def test_worker_timeout_exits_when_idle(any_server: RunningServer) -> None:
    done = gearman(any_server, "-w", "-t", "300", "-f", "idle")
    assert (done.returncode, done.stderr) == (0, b"")


def test_environment_servers(any_server: RunningServer) -> None:
    with worker(any_server, "reverse", "rev"):
        for var in ("GEARMAN_SERVER", "GEARMAN_SERVERS"):
            env = {**ENV, var: f"127.0.0.1:{any_server.port}"}
            done = run(GEARMAN, "-f", "reverse", "abc", env=env)
            assert (done.returncode, done.stdout) == (0, b"cba"), var


def test_daemonize(any_server: RunningServer, tmp_path: Path) -> None:
    pid_file = tmp_path / "d.pid"
    done = gearman(any_server, "-d", "-i", str(pid_file), "-w", "-f", "daemon")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    wait_status(any_server, b"daemon", (0, 0, 1))
    pid = int(pid_file.read_text())
    try:
        assert os.getsid(pid) == pid  # its own session
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + TIMEOUT
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_file.exists()


# -- worker fixes ---------------------------------------------------------------------------


def test_large_payload_does_not_deadlock(any_server: RunningServer) -> None:
    """Regression: the reference worker deadlocks on a 400 KB payload (spec §6.2)."""
    payload = os.urandom(400_000) + os.urandom(600_000)
    with worker(any_server, "cat", "cat"):
        done = gearman(any_server, "-f", "cat", input=payload)
    assert done.returncode == 0 and done.stdout == payload


def _wire_job(server: RunningServer, function: bytes, data: bytes) -> list[tuple[PT, bytes]]:
    """Submit one job over the wire; every WORK_* packet until it ends."""
    got: list[tuple[PT, bytes]] = []
    with Wire(server.port, timeout=TIMEOUT) as w:
        w.send(PT.SUBMIT_JOB, function, b"", data)
        assert w.recv().type is PT.JOB_CREATED
        while True:
            packet = w.recv()
            got.append((packet.type, packet.args[1] if len(packet.args) > 1 else b""))
            if packet.type in (PT.WORK_COMPLETE, PT.WORK_FAIL, PT.WORK_EXCEPTION):
                return got


def test_worker_lines_sent_once(any_server: RunningServer) -> None:
    """Regression: the reference -n worker resends all earlier lines in each packet."""
    with worker(any_server, "lines", "printf", "a\\nb\\nc", options=["-n"]):
        got = _wire_job(any_server, b"lines", b"")
    assert got == [(PT.WORK_DATA, b"a\n"), (PT.WORK_DATA, b"b\n"), (PT.WORK_DATA, b"c"),
                   (PT.WORK_COMPLETE, b"")]
    with worker(any_server, "stripped", "printf", "a\\nb\\nc", options=["-N"]):
        got = _wire_job(any_server, b"stripped", b"")
    assert got == [(PT.WORK_DATA, b"a"), (PT.WORK_DATA, b"b"), (PT.WORK_DATA, b"c"),
                   (PT.WORK_COMPLETE, b"")]


def test_worker_environment(any_server: RunningServer) -> None:
    script = 'printf "%s|%s|%s" "$GEARMAN_FUNCTION" "$GEARMAN_UNIQUE" "$GEARMAN_HANDLE"'
    with worker(any_server, "env", "sh", "-c", script):
        done = gearman(any_server, "-u", "key-1", "-f", "env", "x")
    function, unique, handle = done.stdout.split(b"|")
    assert (function, unique) == (b"env", b"key-1") and handle.startswith(b"H:")


def test_job_timeout_kills_the_process_group(any_server: RunningServer,
                                             tmp_path: Path) -> None:
    pid_file = tmp_path / "job.pid"
    script = f'sleep 30 & echo $$ $! > {pid_file}; sleep 30'
    with worker(any_server, "hang", "sh", "-c", script, options=["--job-timeout", "0.5"]):
        start = time.monotonic()
        done = gearman(any_server, "-f", "hang", "x")
        assert time.monotonic() - start < 5
    assert done.returncode == 1
    assert b"timed out after 0.5s" in done.stderr and done.stderr.endswith(b"Job failed\n")
    # The shell and its background sleep are gone (or zombies nobody reaped yet).
    for pid in pid_file.read_text().split():
        deadline = time.monotonic() + 5
        while _alive(int(pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(int(pid)), pid


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_sigterm_drains_the_running_job(any_server: RunningServer) -> None:
    with worker(any_server, "drain", "sh", "-c", "sleep 0.7; cat") as proc, spawn(
            GEARMAN, *server_args(any_server), "-f", "drain", "payload") as client:
        wait_status(any_server, b"drain", (1, 1, 1))
        proc.send_signal(signal.SIGTERM)
        out, err = client.communicate(timeout=TIMEOUT)
        assert (client.returncode, out, err) == (0, b"payload", b"")
        # Issue 13: after draining, it dies by the signal (so a supervisor sees why).
        assert proc.wait(TIMEOUT) == -signal.SIGTERM


def test_worker_reconnects_when_the_server_comes_back(tmp_path: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "server", "-p", str(port), "-L", "127.0.0.1",
           f"--log-file={tmp_path / 'g.log'}"]

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(port)
        return proc

    server = start()
    args = ["-h", "127.0.0.1", "-p", str(port)]
    with spawn(GEARMAN, *args, "-w", "-f", "rev", "--", "rev") as w:
        try:
            time.sleep(0.5)
            server.terminate()
            server.wait(5)
            time.sleep(0.5)
            server = start()
            done = run(GEARMAN, *args, "-t", "8000", "-f", "rev", "abc")
            assert (done.returncode, done.stdout) == (0, b"cba")
        finally:
            reap(server)
        _, err = reap(w)
    assert b"Traceback" not in err


# -- the reference tools talking to ours ---------------------------------------------------


def test_reference_client_with_our_worker(any_server: RunningServer,
                                          start_server: Callable[..., RunningServer]) -> None:
    from tests.cli_helpers import REF_GEARMAN

    if not os.path.exists(REF_GEARMAN[0]):
        pytest.skip("reference gearman not installed")
    with worker(any_server, "reverse", "rev"):
        done = run(REF_GEARMAN, *server_args(any_server), "-f", "reverse", "Hello World!")
    assert (done.returncode, done.stdout) == (0, b"!dlroW olleH")


# ---------------------------------------------------------------- review regressions


def test_lines_with_one_unique_key_each_get_their_own_result(
        any_server: RunningServer) -> None:
    # Pipelined, the lines would coalesce onto one job (same unique); like the C tool,
    # each line runs on its own and prints its own result.
    with worker(any_server, "rev", "rev"):
        done = gearman(any_server, "-n", "-u", "same", "-f", "rev",
                       input=b"abc\ndef\nghi\n")
    assert (done.returncode, done.stdout) == (0, b"cba\nfed\nihg\n")


def test_ctrl_c_in_client_mode_is_one_exit_code_no_traceback(
        any_server: RunningServer) -> None:
    with spawn(GEARMAN, *server_args(any_server), "-n", "-f", "nobody",
               stdin=subprocess.PIPE) as client:
        time.sleep(0.5)
        client.send_signal(signal.SIGINT)
        _, err = client.communicate(timeout=TIMEOUT)
    # Issue 13: it dies by SIGINT (a shell loop around it stops), not exit 130.
    assert client.returncode == -signal.SIGINT
    assert b"Traceback" not in err


def test_background_lines_timeout_does_not_count_waiting_on_stdin(
        any_server: RunningServer) -> None:
    read, write = os.pipe()
    with spawn(GEARMAN, *server_args(any_server), "-n", "-b", "-t", "500", "-f", "bgslow",
               stdin=read) as client:
        os.close(read)
        os.write(write, b"a\n")
        time.sleep(1.5)  # three timeouts long, waiting on stdin only
        os.write(write, b"b\n")
        os.close(write)
        _, err = client.communicate(timeout=TIMEOUT)
    assert client.returncode == 0, err
    wait_status(any_server, b"bgslow", (2, 0, 0))


def test_long_line_is_linear_not_quadratic(any_server: RunningServer) -> None:
    line = b"a" * (8 << 20) + b"\n"
    start = time.monotonic()
    done = gearman(any_server, "-n", "-b", "-f", "longline", input=line)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - start < 10
    wait_status(any_server, b"longline", (1, 0, 0))


def test_sighup_stops_the_worker_and_its_command(any_server: RunningServer,
                                                  tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    script = f"echo $$ > {marker}; exec sleep 60"
    with worker(any_server, "hup", "sh", "-c", script) as proc, spawn(
            GEARMAN, *server_args(any_server), "-f", "hup", "x"):
        wait_status(any_server, b"hup", (1, 1, 1))
        deadline = time.monotonic() + 5
        while not marker.exists() or not marker.read_text().strip():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        child = int(marker.read_text())
        proc.send_signal(signal.SIGHUP)
        proc.wait(TIMEOUT)
        deadline = time.monotonic() + 5
        while True:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, "the command outlived its worker"
            time.sleep(0.05)

"""Issue 13 (client side) and issue 12 item 7: the tools as a shell uses them.

Signals end a shell loop; failures are refused at start-up with a message that names the
problem; gearadmin has a read timeout and clean JSON errors. Processes are real, so every
test here is marked slow."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pexpect
import pytest

from tests.cli_helpers import (
    ENV,
    GEARADMIN,
    GEARMAN,
    TIMEOUT,
    gearadmin,
    run,
    wait_status,
    worker,
)
from tests.conftest import RunningServer, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def _cmd(cmd: list[str]) -> str:
    return " ".join(cmd)


def _wait_gone(child: pexpect.spawn) -> None:
    child.expect(pexpect.EOF, timeout=TIMEOUT)
    child.close()


class Silent:
    """A listening port that never answers; ``wait_client`` returns once a client is
    connected (and so waiting for a reply)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.clients: list[socket.socket] = []

    def wait_client(self) -> None:
        self.sock.settimeout(TIMEOUT)
        conn, _ = self.sock.accept()
        self.clients.append(conn)


@contextmanager
def silent_server() -> Iterator[Silent]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        silent = Silent(sock)
        try:
            yield silent
        finally:
            for conn in silent.clients:
                conn.close()


def _wait_for(path: Path, pattern: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while pattern not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"{pattern!r} never in {path}"
        time.sleep(0.02)


@pytest.mark.parametrize("tool", ["gearman", "gearadmin"])
def test_ctrl_c_stops_a_bash_loop(tool: str, tmp_path: Path) -> None:
    """Old code exited 130, so bash carried on with the next iteration."""
    marks = tmp_path / "marks"
    with silent_server() as silent:
        port = silent.port
        if tool == "gearman":
            cmd = _cmd([*GEARMAN, "-h", "127.0.0.1", "-p", str(port), "-f", "f", "x"])
        else:
            cmd = _cmd([*GEARADMIN, "-h", "127.0.0.1", "-p", str(port), "--status"])
        script = f"for i in 1 2 3; do echo start $i >> {marks}; {cmd}; echo after $i; done"
        child = pexpect.spawn("bash", ["-c", script], env=ENV, timeout=TIMEOUT)
        try:
            _wait_for(marks, "start 1")
            silent.wait_client()  # the tool is waiting for the server's reply
            child.sendintr()
            _wait_gone(child)
        finally:
            child.close(force=True)
    assert marks.read_text() == "start 1\n"
    assert b"after" not in (child.before or b"")
    assert child.signalstatus == signal.SIGINT  # bash re-raises its child's SIGINT


def test_sigterm_kills_by_signal_and_removes_the_pid_file(tmp_path: Path) -> None:
    pid_file = tmp_path / "c.pid"
    with silent_server() as silent:
        child = pexpect.spawn(sys.executable, [*GEARMAN[1:], "-h", "127.0.0.1", "-p",
                                               str(silent.port), "-i", str(pid_file), "-f",
                                               "f", "x"],
                              env=ENV, timeout=TIMEOUT)
        try:
            _wait_for(pid_file, "\n")
            silent.wait_client()
            child.kill(signal.SIGTERM)
            _wait_gone(child)
        finally:
            child.close(force=True)
    assert child.signalstatus == signal.SIGTERM
    assert not pid_file.exists()


def test_blocking_worker_ctrl_c_is_a_plain_keyboard_interrupt() -> None:
    """Old code: a 30-line BaseExceptionGroup that ``except KeyboardInterrupt`` missed."""
    script = (
        "from gearman_cli import Worker\n"
        f"w = Worker('127.0.0.1:{free_port()}')\n"
        "w.add_function('f', lambda job: b'')\n"
        "print('ready', flush=True)\n"
        "try:\n"
        "    w.work_forever()\n"
        "except KeyboardInterrupt:\n"
        "    print('caught KeyboardInterrupt', flush=True)\n"
    )
    child = pexpect.spawn(sys.executable, ["-c", script], env=ENV, timeout=TIMEOUT, cwd=ROOT)
    try:
        child.expect("ready")
        child.expect("cannot connect")  # inside work_forever's trio.run, retrying
        child.sendintr()
        child.expect(pexpect.EOF)
        text = child.before.decode()
    finally:
        child.close(force=True)
    assert "caught KeyboardInterrupt" in text
    assert "ExceptionGroup" not in text and "Traceback" not in text


def test_gearadmin_read_timeout() -> None:
    """Issue 12 item 7: a server that never answers no longer hangs gearadmin."""
    with silent_server() as silent:
        start = time.monotonic()
        done = run(GEARADMIN, "-h", "127.0.0.1", "-p", str(silent.port), "-t", "300",
                   "--status",
                   input=None)
        elapsed = time.monotonic() - start
    assert done.returncode == 4, done
    assert done.stdout == b""
    assert b"no reply from 127.0.0.1:" in done.stderr and b"0.3s" in done.stderr
    assert elapsed < TIMEOUT


def test_gearadmin_json_without_a_server_prints_nothing_on_stdout() -> None:
    done = run(GEARADMIN, "-h", "127.0.0.1", "-p", str(free_port()), "--json", "--status",
               input=None)
    assert (done.returncode, done.stdout) == (3, b"")
    assert b"connection refused" in done.stderr


def test_gearadmin_json_numbers_and_unique_less_jobs(start_server: object) -> None:
    server: RunningServer = start_server("ours")  # type: ignore[operator]
    args = ["-h", "127.0.0.1", "-p", str(server.port)]
    assert run(GEARMAN, *args, "-b", "-f", "nokey", "x").returncode == 0
    assert run(GEARMAN, *args, "-b", "-u", "k1", "-f", "nokey", "y").returncode == 0
    with worker(server, "js"):
        done = gearadmin(server, "--json", "--workers", "--show-unique-jobs")
    workers, uniques = json.loads(done.stdout)
    assert all(isinstance(row["fd"], int) for row in workers["reply"])
    assert None in uniques["reply"] and "k1" in uniques["reply"]


def test_gearadmin_table_titles_and_unique_less_jobs(start_server: object) -> None:
    server: RunningServer = start_server("ours")  # type: ignore[operator]
    args = ["-h", "127.0.0.1", "-p", str(server.port)]
    assert run(GEARMAN, *args, "-b", "-f", "tbl", "x").returncode == 0
    child = pexpect.spawn(sys.executable, [*GEARADMIN[1:], *args, "--status",
                                           "--show-unique-jobs"],
                          timeout=TIMEOUT, dimensions=(24, 100), env=ENV)
    try:
        child.expect(pexpect.EOF)
        text = child.before.decode()
    finally:
        child.close(force=True)
    assert "Functions" in text and "(job without a unique key)" in text


def test_worker_with_a_missing_command_is_refused_at_start() -> None:
    done = run(GEARMAN, "-h", "127.0.0.1", "-p", str(free_port()), "-w", "-f", "x", "--",
               "/no/such/cmd", timeout=TIMEOUT)
    assert done.returncode == 2
    assert done.stderr == b"gearman: cannot run /no/such/cmd: no such file\n"
    done = run(GEARMAN, "-w", "-f", "x", "--", "no-such-command-anywhere", timeout=TIMEOUT)
    assert done.returncode == 2 and b"command not found" in done.stderr


def test_daemon_worker_without_a_server_says_so_before_detaching(tmp_path: Path) -> None:
    port = free_port()
    done = run(GEARMAN, "-h", "127.0.0.1", "-p", str(port), "-d", "-w", "-f", "x",
               timeout=TIMEOUT)
    assert done.returncode == 3
    assert done.stderr.startswith(f"gearman: no server reachable (127.0.0.1:{port}: ".encode())


def test_no_server_message_names_a_dns_failure() -> None:
    done = run(GEARMAN, "-h", "no-such-host.invalid", "-p", "4730", "-f", "x", "data",
               timeout=TIMEOUT)
    assert done.returncode == 3
    assert b"no-such-host.invalid:4730: cannot resolve the host name" in done.stderr


def test_help_needs_no_trio_and_no_rich() -> None:
    probe = ("import sys; from gearman_cli import gearman; "
             "import io, contextlib\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             "    gearman.main(['--help'])\n"
             "print(sorted(m for m in ('trio', 'rich', 'click', 'logging') if m in sys.modules))")
    done = run([sys.executable, "-c", probe], input=None)
    assert done.stdout.strip() == b"[]", done


def test_blocking_client_needs_no_trio(any_server: RunningServer) -> None:
    probe = ("import sys; from gearman_cli import Client, Admin\n"
             f"print(Client('127.0.0.1:{any_server.port}').echo(b'hi'), "
             f"Admin('127.0.0.1:{any_server.port}').version() != '', "
             "'trio' in sys.modules)")
    done = run([sys.executable, "-c", probe], input=None, env={**ENV, "PYTHONPATH": str(ROOT)})
    assert done.stdout.strip() == b"b'hi' True False", done


def test_distributed_grep_usage_message() -> None:
    done = run(["bash", str(ROOT / "shell_examples/distributed_grep/run.sh")], input=None)
    assert done.returncode == 2
    assert done.stderr.startswith(b"usage: run.sh PATTERN [WORKDIR]")


def test_readme_and_docs_stand_alone() -> None:
    """No link outside the clone; gearadmin's help is --help (-h is the host)."""
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        assert "../shared" not in text and "decisions.md" not in text, path
    readme = (ROOT / "README.md").read_text()
    assert "gearadmin --help" in readme and "-l stderr" in readme
    assert "pip install -e '.[queues]'" in readme
    assert run(GEARADMIN, "--help", input=None).returncode == 0


def test_long_lines_run_shows_progress_on_a_terminal_only(start_server: object) -> None:
    server: RunningServer = start_server("ours")  # type: ignore[operator]
    hp = f"-h 127.0.0.1 -p {server.port}"
    feed = "for i in $(seq 30); do echo $i; sleep 0.1; done"
    child = pexpect.spawn("bash", ["-c", f"{feed} | {_cmd(GEARMAN)} {hp} -n -b -f prog"],
                          env=ENV, timeout=TIMEOUT)
    try:
        child.expect(r"gearman: \d+ lines sent, \d+ done, 0 failed, \d+/s")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    # Not a terminal: not a byte on stderr.
    done = run(["bash", "-c", f"{feed} | {_cmd(GEARMAN)} {hp} -n -b -f prog"], input=None)
    assert (done.returncode, done.stderr) == (0, b"")


def test_command_line_worker_says_when_it_reconnected(tmp_path: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "server", "-p", str(port), "-L", "127.0.0.1", "-l", "none"]
    server = subprocess.Popen(cmd, cwd=ROOT)
    try:
        from tests.conftest import wait_for_port

        wait_for_port(port)
        child = pexpect.spawn(sys.executable, [*GEARMAN[1:], "-h", "127.0.0.1", "-p",
                                               str(port), "-w", "-f", "rc"],
                              env=ENV, timeout=TIMEOUT, cwd=ROOT)
        try:
            wait_status(RunningServer("ours", port, server, tmp_path / "none"),
                        b"rc", (0, 0, 1))
            server.terminate()
            server.wait(TIMEOUT)
            child.expect("lost")
            server = subprocess.Popen(cmd, cwd=ROOT)
            child.expect(f"reconnected to 127.0.0.1:{port}")
        finally:
            child.close(force=True)
    finally:
        server.terminate()
        server.wait(TIMEOUT)

"""``gearmand --ssl`` against other TLS peers (issue 14): ``openssl s_client``, the PyPI
``gear`` library's TLS client and worker (the Zuul project's; it always presents a client
certificate), our ``gearman``/``gearadmin`` tools as processes, start-up failures, and
the reference's ``--ssl``, which answers plaintext (recorded, docs/differences.md).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.cli_helpers import ENV, GEARADMIN, GEARMAN
from tests.conftest import RunningServer, free_port, need_reference
from tests.test_tls import ECHO, ECHO_RES, Pki, plaintext_reply

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60),
              pytest.mark.filterwarnings("ignore::DeprecationWarning:gear")]

StartServer = Callable[..., RunningServer]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
def start_ours(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Our gearmand as a process on port 0, its port read from its log: a port picked
    before the start could be taken meanwhile by another process of this shared machine
    (a plaintext gearmand, seen once), and a TLS test must never talk to that one."""
    started: list[RunningServer] = []

    def start(*extra: str) -> RunningServer:
        n = len(started)
        log = tmp_path / f"ours-{n}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "-p", "0", "-L", "127.0.0.1", "-l", str(log),
             "--verbose", "INFO", "-P", str(tmp_path / f"ours-{n}.pid"), *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = RunningServer("ours", 0, proc, log, list(extra))
        started.append(server)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None:
            text = log.read_text() if log.exists() else ""
            if match := re.search(r"Listening on 127\.0\.0\.1:(\d+)", text):
                server.port = int(match.group(1))
                return server
            time.sleep(0.05)
        raise RuntimeError(f"our gearmand did not start: {log.read_text() if log.exists() else ''}")

    yield start
    for server in started:
        server.stop()


def run_tool(cmd: list[str], *args: str, env: dict[str, str] | None = None,
             input: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*cmd, *args], input=input, capture_output=True, timeout=30,
                          check=False, env=env if env is not None else ENV)


def test_openssl_s_client_talks_to_the_admin_protocol(pki: Pki, start_ours: StartServer
                                                      ) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    srv = start_ours(*pki.server_args())
    assert s_client_first_line(openssl, srv.port, pki.ca_file,
                               "-verify_return_error", "-verify_ip", "127.0.0.1"
                               ).startswith(b"OK ")
    # TLS 1.1 is refused (the server's minimum is 1.2).
    assert s_client_first_line(openssl, srv.port, pki.ca_file, "-tls1_1", "-cipher",
                               "ALL:@SECLEVEL=0") == b""


def s_client_first_line(openssl: str, port: int, ca_file: str, *args: str) -> bytes:
    """The first line ``openssl s_client`` prints after sending ``version``."""
    proc = subprocess.Popen(
        [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", ca_file, "-quiet",
         *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(b"version\n")
        proc.stdin.flush()
        timer = threading.Timer(15, proc.kill)
        timer.start()
        line = proc.stdout.readline()
        timer.cancel()
        return line
    except BrokenPipeError:
        return b""
    finally:
        proc.kill()
        proc.wait()


def test_gear_library_client_and_worker_with_client_certificates(
        pki: Pki, start_ours: StartServer) -> None:
    gear = pytest.importorskip("gear")
    srv = start_ours(*pki.server_args("--ssl-ca-file", pki.ca_file,
                                                "--ssl-verify-client", "--verbose", "INFO"))
    leaf = pki.ca.issue_cert("zuul.example.org", common_name="zuul-worker")
    cert = pki._write("gear.crt", leaf.cert_chain_pems[0].bytes())
    key = pki._write("gear.key", leaf.private_key_pem.bytes())

    worker = gear.Worker("tls-worker")
    worker.addServer("127.0.0.1", srv.port, ssl_key=key, ssl_cert=cert, ssl_ca=pki.ca_file)
    worker.registerFunction("reverse")
    client = gear.Client("tls-client")
    client.addServer("127.0.0.1", srv.port, ssl_key=key, ssl_cert=cert, ssl_ca=pki.ca_file)
    try:
        worker.waitForServer(timeout=10)
        client.waitForServer(timeout=10)

        def work() -> None:
            job = worker.getJob()
            job.sendWorkComplete(job.arguments[::-1])

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        job = gear.TextJob("reverse", "Hello over TLS")
        client.submitJob(job, timeout=10)
        thread.join(15)
        deadline = 0
        while not job.complete and deadline < 500:
            threading.Event().wait(0.02)
            deadline += 1
        assert job.complete and not job.failure
        assert job.data == ["SLT revo olleH"]
    finally:
        client.shutdown()
        worker.shutdown()
    log = srv.log.read_text()
    assert "as 'zuul-worker'" in log


def test_our_tools_over_tls(pki: Pki, start_ours: StartServer, tmp_path: Path) -> None:
    srv = start_ours(*pki.server_args())
    where = ["-h", "127.0.0.1", "-p", str(srv.port)]
    worker = subprocess.Popen(
        [*GEARMAN, *where, "-S", "--ssl-ca-file", pki.ca_file, "-w", "-f", "rev", "-c", "1",
         "--", "rev"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=ENV)
    try:
        status = run_tool(GEARADMIN, *where, "-S", "--ssl-ca-file", pki.ca_file, "--status")
        assert status.returncode == 0 and status.stdout.endswith(b".\n"), status
        # The CA from the environment, as the C tools' users set it once.
        env = {**ENV, "GEARMAN_SSL_CA_FILE": pki.ca_file}
        done = run_tool(GEARMAN, *where, "-f", "rev", "hello", env=env)
        assert (done.returncode, done.stdout) == (0, b"olleh"), done
        assert worker.wait(15) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    # Without TLS the server says nothing and closes: a connection failure, exit 3.
    plain = run_tool(GEARMAN, *where, "-f", "rev", "hello")
    assert plain.returncode == 3 and plain.stdout == b""
    # A server certificate the tool cannot verify: exit 3, and the reason.
    other = tmp_path / "other-ca.pem"
    other.write_bytes(trustme.CA().cert_pem.bytes())
    wrong = run_tool(GEARADMIN, *where, "--ssl-ca-file", str(other), "--status")
    assert wrong.returncode == 3 and b"certificate" in wrong.stderr, wrong


def test_gearman_result_over_tls(pki: Pki, start_ours: StartServer) -> None:
    """``gearman --result H -S``: the result is read over TLS too (it went out in
    plaintext, and the TLS server refused it)."""
    srv = start_ours(*pki.server_args("--result-ttl", "60"))
    where = ["-h", "127.0.0.1", "-p", str(srv.port), "-S", "--ssl-ca-file", pki.ca_file]
    from gearman_cli import Client

    handle = Client(f"127.0.0.1:{srv.port}", ssl=pki.client_context()).do_background(
        "later", b"data")
    state = run_tool(GEARMAN, *where, "--result", handle.decode())
    assert state.returncode == 5 and b"is queued" in state.stderr, state


def test_start_up_fails_before_binding_with_a_missing_key(pki: Pki, tmp_path: Path) -> None:
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "server", "-p", str(port), "-L", "127.0.0.1", "-l", "stderr",
         "-P", str(tmp_path / "g.pid"), "--ssl", "--ssl-certificate", pki.cert,
         "--ssl-key", str(tmp_path / "missing.key")],
        capture_output=True, timeout=20, check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    assert done.stderr.decode().count("\n") == 1 and b"--ssl-key" in done.stderr
    assert b"cannot read it" in done.stderr and b"Traceback" not in done.stderr
    # Refused while parsing the command line: nothing was bound, nothing logged as started
    # (a connect to the port would prove little on a machine shared with other tests).
    assert b"Listening" not in done.stderr and b"starting up" not in done.stderr


def test_reference_ssl_answers_plaintext(pki: Pki, start_server: StartServer,
                                         start_ours: StartServer) -> None:
    """The reference (Debian's 1.1.20) with ``--ssl`` still answers a plaintext ECHO:
    the silent fallback of gearmand #207 (docs/differences.md). Ours closes it."""
    need_reference()
    ref = start_server("reference", *pki.server_args("--ssl-ca-file", pki.ca_file))
    assert plaintext_reply_first(ref.port, ECHO) == ECHO_RES
    ours = start_ours(*pki.server_args("--ssl-ca-file", pki.ca_file))
    assert plaintext_reply(ours.port, ECHO) == b""


def plaintext_reply_first(port: int, data: bytes) -> bytes:
    """The first reply to ``data`` sent in clear (the reference keeps the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        while len(received) < len(ECHO_RES):
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
        return received

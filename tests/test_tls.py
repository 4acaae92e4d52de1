"""``--ssl`` (issue 14): our server in-process with certificates made by ``trustme``, and
our library's clients, workers and admin over TLS; plaintext, slow handshakes and bad
client certificates refused; the identity of a verified client certificate.

Processes (``openssl s_client``, the ``gearman``/``gearadmin`` tools, the PyPI ``gear``
library's workers, the reference) are in tests/test_tls_interop.py.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from gearman_cli import (
    Admin,
    AsyncAdmin,
    AsyncClient,
    Client,
    ConnectionLostError,
    NoServerError,
    TlsSetupError,
    tls_context,
)
from gearman_cli._tls import TlsSettings
from protocol import PacketType, encode_req
from server.app import Server
from server.cli import CliError, parse_args
from server.config import ServerConfig, TlsConfig
from server.daemon import StartupError
from server.tls import identity_of
from tests.conftest import InProcessServer
from tests.lib_support import running_worker

ECHO = encode_req(int(PacketType.ECHO_REQ), b"ping")
ECHO_RES = b"\0RES" + (17).to_bytes(4, "big") + (4).to_bytes(4, "big") + b"ping"


class Pki:
    """A CA, a server certificate for 127.0.0.1 and localhost, and client certificates,
    written as PEM files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = trustme.CA()
        self.ca_file = self._write("ca.pem", self.ca.cert_pem.bytes())
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cert = self._write("server.crt", server.cert_chain_pems[0].bytes())
        self.key = self._write("server.key", server.private_key_pem.bytes())

    def _write(self, name: str, data: bytes) -> str:
        path = self.root / name
        path.write_bytes(data)
        return str(path)

    def client_file(self, name: str, ca: trustme.CA | None = None, *identities: str,
                    common_name: str | None = None, **kwargs: Any) -> str:
        """A client certificate and its key in one PEM file."""
        leaf = (ca or self.ca).issue_cert(*identities, common_name=common_name, **kwargs)
        return self._write(name, leaf.private_key_and_cert_chain_pem.bytes())

    def server_args(self, *extra: str) -> list[str]:
        return ["--ssl", "--ssl-certificate", self.cert, "--ssl-key", self.key, *extra]

    def client_context(self, cert_file: str | None = None) -> ssl.SSLContext:
        return tls_context(self.ca_file, cert_file)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


Start = Callable[..., InProcessServer]


def tls_echo(port: int, context: ssl.SSLContext, host: str = "127.0.0.1") -> bytes:
    """ECHO_REQ over TLS; what came back (b"" when the server closed the connection; a
    refusal after a TLS 1.3 handshake shows here, as an alert or the end of the stream)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=host) as sock:
        try:
            sock.sendall(ECHO)
            data = b""
            while len(data) < len(ECHO_RES):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return b""


def refused(port: int, context: ssl.SSLContext) -> bool:
    """The server would not talk to a client with this context (handshake or first read)."""
    try:
        return tls_echo(port, context) == b""
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True


def plaintext_reply(port: int, data: bytes) -> bytes:
    """Everything a plaintext client sending ``data`` gets before the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
        return received


# ---------------------------------------------------------------------- the Gear port


def test_gear_port_answers_over_tls_and_logs_the_version(
        pki: Pki, start_inprocess: Start, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="server")
    srv = start_inprocess(*pki.server_args())
    assert tls_echo(srv.port, pki.client_context()) == ECHO_RES
    # The server name is verified too: the certificate names 127.0.0.1 and localhost.
    assert tls_echo(srv.port, pki.client_context(), host="localhost") == ECHO_RES
    assert any("accepted from 127.0.0.1" in r.getMessage() and " over TLSv1." in
               r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("request_bytes", [ECHO, b"status\r\n", b"GET / HTTP/1.0\r\n\r\n"])
def test_plaintext_gets_a_closed_connection_and_one_log_line(
        pki: Pki, start_inprocess: Start, caplog: pytest.LogCaptureFixture,
        request_bytes: bytes) -> None:
    caplog.set_level(logging.INFO, logger="server")
    srv = start_inprocess(*pki.server_args())
    assert plaintext_reply(srv.port, request_bytes) == b""
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1
    assert "TLS handshake failed" in lines[0] and "127.0.0.1" in lines[0]
    # No connection was registered for it: the server still has none.
    assert not srv.server.manager.conns


def test_a_silent_peer_is_dropped_after_the_handshake_timeout(
        pki: Pki, start_inprocess: Start, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="server")
    srv = start_inprocess(*pki.server_args("--ssl-handshake-timeout", "0.3"))
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        assert sock.recv(100) == b""  # closed by the server, not by our 10 s timeout
    assert any("no TLS handshake within 0.3 s" in r.getMessage() for r in caplog.records)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_1_1_is_refused(pki: Pki, start_inprocess: Start) -> None:
    srv = start_inprocess(*pki.server_args())
    context = pki.client_context()
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    with contextlib.suppress(ssl.SSLError):
        context.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        tls_echo(srv.port, context)


# ---------------------------------------------------------------------- client certificates


@pytest.fixture
def verifying(pki: Pki, start_inprocess: Start) -> InProcessServer:
    """A server that requires client certificates signed by the test CA."""
    return start_inprocess(*pki.server_args("--ssl-ca-file", pki.ca_file,
                                            "--ssl-verify-client"))


def test_a_verified_client_certificate_gives_the_connection_its_identity(
        pki: Pki, verifying: InProcessServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="server")
    alice = pki.client_file("alice.pem", None, "worker1.example.org", common_name="alice")
    context = pki.client_context(alice)
    with socket.create_connection(("127.0.0.1", verifying.port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(ECHO)
        assert sock.recv(100) == ECHO_RES
        identities = [c.identity for c in list(verifying.server.manager.conns.values())]
        assert identities == ["alice"]
    assert any("over TLSv1." in r.getMessage() and "as 'alice'" in r.getMessage()
               for r in caplog.records)


def test_without_a_common_name_the_first_dns_name_is_the_identity(
        pki: Pki, verifying: InProcessServer) -> None:
    bob = pki.client_file("bob.pem", None, "bob.example.org", "other.example.org")
    context = pki.client_context(bob)
    with socket.create_connection(("127.0.0.1", verifying.port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(ECHO)
        assert sock.recv(100) == ECHO_RES
        identities = [c.identity for c in list(verifying.server.manager.conns.values())]
        assert identities == ["bob.example.org"]


def test_missing_client_certificate_is_refused(
        pki: Pki, verifying: InProcessServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="server")
    assert refused(verifying.port, pki.client_context())
    assert any("refused" in r.getMessage() and "certificate" in r.getMessage()
               for r in caplog.records)


def test_expired_client_certificate_is_refused(
        pki: Pki, verifying: InProcessServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="server")
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    old = pki.client_file("old.pem", None, "old.example.org", common_name="old",
                          not_before=past, not_after=past + datetime.timedelta(days=1))
    assert refused(verifying.port, pki.client_context(old))
    assert any("expired" in r.getMessage() for r in caplog.records)
    # The control: a current certificate from the same CA gets in.
    fresh = pki.client_file("fresh.pem", None, "fresh.example.org", common_name="fresh")
    assert tls_echo(verifying.port, pki.client_context(fresh)) == ECHO_RES


def test_client_certificate_of_another_ca_is_refused(
        pki: Pki, verifying: InProcessServer) -> None:
    other = pki.client_file("mallory.pem", trustme.CA(), "mallory.example.org",
                            common_name="alice")
    assert refused(verifying.port, pki.client_context(other))


def test_self_signed_client_certificate_is_refused(
        pki: Pki, verifying: InProcessServer, tmp_path: Path) -> None:
    own = trustme.CA()  # a CA certificate is self-signed: present it as the client's
    path = tmp_path / "self.pem"
    path.write_bytes(own.private_key_pem.bytes() + own.cert_pem.bytes())
    assert refused(verifying.port, pki.client_context(str(path)))


def test_with_a_ca_file_alone_a_client_certificate_is_optional_but_checked(
        pki: Pki, start_inprocess: Start) -> None:
    srv = start_inprocess(*pki.server_args("--ssl-ca-file", pki.ca_file))
    assert tls_echo(srv.port, pki.client_context()) == ECHO_RES  # none: accepted
    other = pki.client_file("other.pem", trustme.CA(), "x.example.org")
    assert refused(srv.port, pki.client_context(other))  # a bad one: refused
    carol = pki.client_file("carol.pem", None, common_name="carol")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw, \
            pki.client_context(carol).wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(ECHO)
        assert sock.recv(100) == ECHO_RES
        assert [c.identity for c in list(srv.server.manager.conns.values())] == ["carol"]


def test_identity_of_prefers_common_name_then_dns_then_uri() -> None:
    cn = {"subject": ((("organizationName", "o"),), (("commonName", "svc"),)),
          "subjectAltName": (("DNS", "a.example"),)}
    assert identity_of(cn) == "svc"
    assert identity_of({"subject": ((("organizationName", "o"),),),
                        "subjectAltName": (("email", "e@x"), ("URI", "spiffe://t/w"),
                                           ("DNS", "b.example"))}) == "b.example"
    assert identity_of({"subjectAltName": (("URI", "spiffe://t/w"),)}) == "spiffe://t/w"
    assert identity_of({"subject": ((("organizationName", "o"),),)}) is None
    assert identity_of({}) is None and identity_of(None) is None


# ---------------------------------------------------------------------- our library


async def reverse(job: Any) -> bytes:
    return bytes(job.data[::-1])


async def test_async_client_worker_and_admin_over_tls(pki: Pki, start_inprocess: Start
                                                      ) -> None:
    srv = start_inprocess(*pki.server_args())
    address = f"127.0.0.1:{srv.port}"
    context = pki.client_context()
    with trio.fail_after(20):
        async with running_worker(address, {"reverse": reverse}, ssl=context), \
                AsyncClient(address, ssl=context) as client:
            assert await client.do("reverse", b"Hello") == b"olleH"
            big = bytes(range(256)) * 4096  # 1 MiB each way: several TLS records
            assert await client.do("reverse", big) == big[::-1]
        async with AsyncAdmin(address, ssl=context) as admin:
            assert (await admin.version())


def test_blocking_client_and_admin_over_tls(pki: Pki, start_inprocess: Start) -> None:
    srv = start_inprocess(*pki.server_args())
    address = f"127.0.0.1:{srv.port}"
    context = pki.client_context()
    client = Client(address, ssl=context)
    handles = [client.do_background("tls_queue", b"x" * 100_000) for _ in range(3)]
    assert len(set(handles)) == 3
    status = {s.function: s for s in Admin(address, ssl=context).status()}
    assert status[b"tls_queue"].total == 3


async def test_results_are_read_over_the_client_s_tls(pki: Pki, start_inprocess: Start
                                                       ) -> None:
    """``Client.result`` / ``AsyncClient.result`` ask the admin port with the client's own
    TLS settings (not only the GEARMAN_SSL* variables)."""
    srv = start_inprocess(*pki.server_args("--result-ttl", "60"))
    address = f"127.0.0.1:{srv.port}"
    context = pki.client_context()
    client = Client(address, ssl=context)
    handle = client.do_background("later", b"x")
    assert client.result(handle).state == "queued"
    with trio.fail_after(10):
        async with AsyncClient(address, ssl=context) as aclient:
            assert (await aclient.result(handle)).state == "queued"


def test_clients_verify_the_server_certificate(pki: Pki, start_inprocess: Start) -> None:
    srv = start_inprocess(*pki.server_args())
    address = f"127.0.0.1:{srv.port}"
    other_ca = trustme.CA()
    other_file = pki.root / "other-ca.pem"
    other_file.write_bytes(other_ca.cert_pem.bytes())
    with pytest.raises(NoServerError, match="certificate"):
        Client(address, ssl=tls_context(str(other_file))).do_background("f", b"")
    # The host name is checked: a certificate of the right CA for another name is refused.
    leaf = pki.ca.issue_cert("db.example.org")
    misnamed = start_inprocess(
        "--ssl", "--ssl-certificate", pki._write("db.crt", leaf.cert_chain_pems[0].bytes()),
        "--ssl-key", pki._write("db.key", leaf.private_key_pem.bytes()))
    with pytest.raises(NoServerError, match=r"certificate is not valid for '127\.0\.0\.1'"):
        Client(f"127.0.0.1:{misnamed.port}", ssl=pki.client_context()).do_background("f")
    # A plaintext client of a TLS server is cut off and says so.
    with pytest.raises((NoServerError, ConnectionLostError)):
        Client(address, ssl=False).do_background("f", b"")


async def test_async_client_refuses_an_unknown_server_certificate(
        pki: Pki, start_inprocess: Start, tmp_path: Path) -> None:
    srv = start_inprocess(*pki.server_args())
    other = tmp_path / "other-ca.pem"
    other.write_bytes(trustme.CA().cert_pem.bytes())
    with trio.fail_after(10), pytest.raises(OSError, match="certificate"):
        async with AsyncAdmin(f"127.0.0.1:{srv.port}", ssl=tls_context(str(other))) as admin:
            await admin.version()


def test_tls_settings_from_the_environment(pki: Pki) -> None:
    assert not TlsSettings.from_env({}).enabled
    assert TlsSettings.from_env({"GEARMAN_SSL": "1"}).enabled
    assert not TlsSettings.from_env({"GEARMAN_SSL": "0"}).enabled
    env = TlsSettings.from_env({"GEARMAN_SSL_CA_FILE": pki.ca_file})
    assert env.enabled and env.ca_file == pki.ca_file
    assert env.context() is not None
    with pytest.raises(TlsSetupError, match="cannot read"):
        tls_context("/nonexistent/ca.pem")
    with pytest.raises(TlsSetupError, match="needs its certificate"):
        tls_context(pki.ca_file, None, pki.key)


# ---------------------------------------------------------------------- HTTP and memcached


def test_http_and_memcached_front_ends_speak_tls_only(pki: Pki, start_inprocess: Start
                                                      ) -> None:
    srv = start_inprocess(*pki.server_args("-r", "http", "--http-port", "0", "-r",
                                           "memcached", "--memcached-port", "0"))
    http_port = srv.server.frontend_addresses["http"][0][1]
    memcached_port = srv.server.frontend_addresses["memcached"][0][1]
    context = pki.client_context()
    with socket.create_connection(("127.0.0.1", http_port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(b"POST /tls_http HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"X-Gearman-Background: true\r\nContent-Length: 2\r\n\r\nhi")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200") and b"JOB_CREATED" in reply
    with socket.create_connection(("127.0.0.1", memcached_port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(b"version\r\n")
        assert sock.recv(100).startswith(b"VERSION ")
    assert plaintext_reply(http_port, b"GET / HTTP/1.0\r\n\r\n") == b""
    assert plaintext_reply(memcached_port, b"version\r\n") == b""


# ---------------------------------------------------------------------- start-up


def test_command_line_checks_the_files_before_anything_starts(pki: Pki, tmp_path: Path
                                                              ) -> None:
    config = parse_args(pki.server_args("--ssl-ca-file", pki.ca_file,
                                        "--ssl-verify-client"), {}).config
    assert config.tls is not None and config.tls.verify_client
    cases: list[tuple[list[str], str]] = [
        (["--ssl"], "needs --ssl-certificate FILE and --ssl-key FILE"),
        (["--ssl", "--ssl-certificate", str(tmp_path / "none.crt"), "--ssl-key", pki.key],
         "cannot read it"),
        (["--ssl", "--ssl-certificate", pki.ca_file, "--ssl-key", pki.key],
         "not a PEM certificate chain and its private key"),
        (pki.server_args("--ssl-verify-client"), "--ssl-verify-client needs --ssl-ca-file"),
        (pki.server_args("--ssl-ca-file", pki.key), "no PEM CA certificate"),
        (pki.server_args("--ssl-handshake-timeout", "0"), "more than 0"),
        (["--ssl-certificate", pki.cert], "without --ssl"),
        (["--ssl-verify-client"], "without --ssl"),
    ]
    for args, message in cases:
        with pytest.raises(CliError, match=message):
            parse_args(args, {})


def test_server_refuses_to_start_with_an_unusable_key(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    config = ServerConfig(tls=TlsConfig(certificate=Path(pki.cert), key=garbage))
    with pytest.raises(StartupError, match="--ssl-key"):
        Server(config)


def test_metrics_over_tls_and_identity_on_memcached(pki: Pki, start_inprocess: Start) -> None:
    srv = start_inprocess(*pki.server_args("--ssl-ca-file", pki.ca_file, "--ssl-verify-client",
                                           "--metrics-port", "0", "-r", "memcached",
                                           "--memcached-port", "0"))
    dave = pki.client_context(pki.client_file("dave.pem", None, common_name="dave"))
    metrics_port = srv.server.metrics_addresses[0][1]
    with socket.create_connection(("127.0.0.1", metrics_port), timeout=5) as raw, \
            dave.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200") and b"gearman" in reply
    assert refused(metrics_port, pki.client_context())  # no certificate: refused here too
    memcached_port = srv.server.frontend_addresses["memcached"][0][1]
    with socket.create_connection(("127.0.0.1", memcached_port), timeout=5) as raw, \
            dave.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(b"version\r\n")
        assert sock.recv(100).startswith(b"VERSION ")
        kinds = {c.kind: c.identity for c in list(srv.server.manager.conns.values())}
        assert kinds == {"memcached": "dave"}


@pytest.mark.slow  # waits for the kernel's buffers to fill, then for --write-timeout
def test_a_tls_peer_that_does_not_read_is_paused_then_dropped(
        pki: Pki, start_inprocess: Start, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="server")
    srv = start_inprocess(*pki.server_args("--write-timeout", "1"))
    context = pki.client_context()
    chunk = encode_req(int(PacketType.ECHO_REQ), b"x" * 60000) * 16
    sent = 0
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.settimeout(2)
        try:
            while sent < 200 * 1024 * 1024:
                sock.sendall(chunk)
                sent += len(chunk)
        except (TimeoutError, ConnectionResetError, BrokenPipeError, ssl.SSLError):
            pass
        # The server stopped reading it long before 200 MiB, and held at most its bound.
        assert sent < 64 * 1024 * 1024
        for peer in srv.server.gear.peers():
            assert len(peer.out) <= peer.hard_limit
        # Others are still served meanwhile.
        assert tls_echo(srv.port, context) == ECHO_RES
    assert any("took no data for 1 s" in r.getMessage() for r in caplog.records)


def test_half_a_handshake_and_bad_packets_over_tls_cost_only_their_connection(
        pki: Pki, start_inprocess: Start, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="server")
    srv = start_inprocess(*pki.server_args())
    # A ClientHello cut short, then the client is gone.
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    # A bad packet inside TLS: the ERROR reply is sent over TLS, then the close.
    context = pki.client_context()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(b"\0REQ\x00\x00\x00\xff\x00\x00\x00\x00")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"\0RES\x00\x00\x00\x13")  # ERROR
    assert tls_echo(srv.port, context) == ECHO_RES  # the server goes on
    assert any("refused: TLS handshake failed" in r.getMessage() for r in caplog.records)

"""TLS on the server's listeners (``--ssl``): the context, the handshake, the identity.

With ``--ssl`` every listener (Gear, HTTP, memcached, metrics) speaks TLS and nothing
else: a connection is handed to its front-end only once its handshake has completed
within ``--ssl-handshake-timeout``; one that fails (a plaintext client, a certificate
refused) or is too slow is closed, with one log line, before it is registered. There is
no plaintext fallback.

The identity of a verified client certificate (``identity_of``) becomes
``Conn.identity`` before the connection's first request is read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from .config import TlsConfig
from .jobs import Conn

log = logging.getLogger(__name__)

#: Seconds a closing TLS connection may take to send its close_notify; then it is cut.
_CLOSE_TIMEOUT: Final = 5.0


class TlsSetupError(Exception):
    """The certificate, key or CA file cannot be used: one line for stderr."""


def _no_password() -> bytes:
    raise TlsSetupError("the private key is encrypted; give gearmand an unencrypted key "
                        "(readable by the server's user only)")


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """The server's ``SSLContext``: TLS 1.2 or later, the certificate chain and key, and,
    with a CA file, client certificates verified against it (required with
    ``verify_client``, else verified when sent). Raises ``TlsSetupError``."""
    for flag, path in (("--ssl-certificate", tls.certificate), ("--ssl-key", tls.key),
                       ("--ssl-ca-file", tls.ca_file)):
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise TlsSetupError(f"{flag} {path}: cannot read it: "
                                f"{exc.strerror or exc}") from None
    if tls.verify_client and tls.ca_file is None:
        raise TlsSetupError("--ssl-verify-client needs --ssl-ca-file (the CA that signs "
                            "the clients' certificates)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Client-initiated renegotiation (TLS 1.2) is a way to make the server work hard.
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    try:
        context.load_cert_chain(tls.certificate, tls.key, password=_no_password)
    except ssl.SSLError as exc:
        raise TlsSetupError(f"--ssl-certificate {tls.certificate} and --ssl-key {tls.key}: "
                            f"not a PEM certificate chain and its private key "
                            f"({exc.reason or exc})") from None
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(cafile=tls.ca_file)
        except ssl.SSLError as exc:
            raise TlsSetupError(f"--ssl-ca-file {tls.ca_file}: no PEM CA certificate in it "
                                f"({exc.reason or exc})") from None
        context.verify_mode = ssl.CERT_REQUIRED if tls.verify_client else ssl.CERT_OPTIONAL
    return context


def identity_of(cert: dict[str, Any] | None) -> str | None:
    """A verified certificate's identity, as ``SSLSocket.getpeercert()`` gives it: the
    subject's (first) commonName, else the first DNS subjectAltName, else the first URI
    subjectAltName; None when it has none of them (or there is no certificate)."""
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and value:
                return str(value)
    for wanted in ("DNS", "URI"):
        for kind, value in cert.get("subjectAltName", ()):
            if kind == wanted and value:
                return str(value)
    return None


class TlsStream(trio.abc.Stream):
    """A server-side TLS connection whose handshake is done: what the front-ends read and
    write instead of a ``trio.SocketStream`` (``socket`` is the TCP socket under it)."""

    def __init__(self, ssl_stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.ssl = ssl_stream
        self.socket = ssl_stream.transport_stream.socket
        cert: dict[str, Any] | None = ssl_stream.getpeercert()
        #: The verified client certificate's identity (None: no certificate).
        self.identity = identity_of(cert)
        version: str | None = ssl_stream.version()
        self.version = version or "TLS"

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.ssl.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.ssl.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """As ``SSLStream.receive_some``; a peer that closes without close_notify (most
        clients do, Python's ``ssl`` sockets among them) has simply closed: b"". Every
        protocol served here delimits its own messages, so no truncation goes unseen."""
        try:
            data = await self.ssl.receive_some(max_bytes)
        except trio.BrokenResourceError as exc:
            if isinstance(exc.__cause__, ssl.SSLEOFError):
                return b""
            raise trio.BrokenResourceError(_reason(exc)) from exc.__cause__
        return data if isinstance(data, bytes) else bytes(data)

    async def aclose(self) -> None:
        """Send close_notify, then close; a peer that takes nothing more (its window is
        full) costs at most ``_CLOSE_TIMEOUT`` seconds, even in a shielded scope."""
        with trio.move_on_after(_CLOSE_TIMEOUT), \
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.ssl.aclose()
        await trio.aclose_forcefully(self.ssl.transport_stream)

    def describe(self) -> str:
        """For the connection's log line."""
        who = f" as {self.identity!r}" if self.identity is not None else ""
        return f" over {self.version}{who}"


class MemoryTls(trio.abc.Stream):
    """A server-side TLS connection whose handshake is done, over an ``ssl.SSLObject``
    and two ``MemoryBIO``s: the Gear front-end's epoll reactor reads and writes the
    socket itself (``os.read``/``os.write``) and feeds these (server/gear_tls.py).
    ``pending`` is ciphertext not yet taken by the kernel."""

    def __init__(self, stream: trio.SocketStream, sslobj: ssl.SSLObject,
                 incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> None:
        self.transport = stream
        self.socket = stream.socket
        self.sslobj = sslobj
        self.incoming = incoming
        self.outgoing = outgoing
        self.pending = bytearray()
        cert: dict[str, Any] | None = sslobj.getpeercert()
        #: The verified client certificate's identity (None: no certificate).
        self.identity = identity_of(cert)
        version: str | None = sslobj.version()
        self.version = version or "TLS"

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError("written by the reactor's peer (server/gear_tls.py)")

    async def wait_send_all_might_not_block(self) -> None:
        raise NotImplementedError("written by the reactor's peer (server/gear_tls.py)")

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        raise NotImplementedError("read by the reactor (server/gear_tls.py)")

    async def aclose(self) -> None:
        """Send close_notify (unless a record is half sent: then the peer could not
        read it anyway), then close; at most ``_CLOSE_TIMEOUT`` seconds."""
        if not self.pending:
            with trio.move_on_after(_CLOSE_TIMEOUT), \
                    contextlib.suppress(ssl.SSLError, OSError, ValueError):
                with contextlib.suppress(ssl.SSLWantReadError):
                    self.sslobj.unwrap()  # (it does not wait for the peer's close_notify)
                await _send(self.socket, self.outgoing.read())
        await trio.aclose_forcefully(self.transport)

    def describe(self) -> str:
        """For the connection's log line."""
        who = f" as {self.identity!r}" if self.identity is not None else ""
        return f" over {self.version}{who}"


async def _send(sock: trio.socket.SocketType, data: bytes) -> None:
    """Write all of ``data`` to a non-blocking socket."""
    view = memoryview(data)
    fd = sock.fileno()
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            await trio.lowlevel.wait_writable(fd)


async def memory_handshake(stream: trio.SocketStream, context: ssl.SSLContext,
                           timeout: float, where: str) -> MemoryTls | None:
    """``handshake`` for the epoll reactor: the server side over an ``SSLObject`` and
    the raw socket; None (closed, one line logged) when it fails. What the client sent
    after its last handshake message may be left in ``incoming``."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    sslobj = context.wrap_bio(incoming, outgoing, server_side=True)
    fd = stream.socket.fileno()
    try:
        with trio.fail_after(timeout):
            done = False
            while not done:
                try:
                    sslobj.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    pass
                await _send(stream.socket, outgoing.read())
                if not done:
                    data = b""
                    with contextlib.suppress(BlockingIOError):
                        await trio.lowlevel.wait_readable(fd)
                        data = os.read(fd, 65536)
                        if data:
                            incoming.write(data)
                        else:
                            incoming.write_eof()
    except trio.Cancelled:  # the server stops: close the socket now, not when collected
        await trio.aclose_forcefully(stream)
        raise
    except trio.TooSlowError:
        log.warning("%s: refused: no TLS handshake within %g s", where, timeout)
    except (ssl.SSLError, OSError) as exc:
        log.warning("%s: refused: TLS handshake failed: %s", where, _reason(exc))
    except Exception:  # a bug costs this connection, never the server
        log.exception("%s: refused after an unexpected error in the TLS handshake", where)
    else:
        return MemoryTls(stream, sslobj, incoming, outgoing)
    await trio.aclose_forcefully(stream)
    return None


def adopt(conn: Conn, stream: object) -> str:
    """Give a new connection its certificate's identity (before any request is read);
    returns what its "accepted" log line adds (nothing for a plaintext connection)."""
    if isinstance(stream, (TlsStream, MemoryTls)):
        conn.identity = stream.identity
        return stream.describe()
    return ""


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"client certificate refused: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        text = cause.reason or str(cause)
        if cause.reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL",
                            "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
            text += " (a plaintext client?)"
        elif cause.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            text = "no client certificate (--ssl-verify-client)"
        return text
    return str(cause) or "connection closed during the handshake"


async def handshake(stream: trio.SocketStream, context: ssl.SSLContext, timeout: float,
                    where: str) -> TlsStream | None:
    """The server side of the handshake, within ``timeout`` seconds; None (the connection
    closed, one line logged) when it fails."""
    ssl_stream = trio.SSLStream(stream, context, server_side=True)
    try:
        with trio.fail_after(timeout):
            await ssl_stream.do_handshake()
    except trio.Cancelled:  # the server stops: close the socket now, not when collected
        await trio.aclose_forcefully(stream)
        raise
    except trio.TooSlowError:
        log.warning("%s: refused: no TLS handshake within %g s", where, timeout)
    except trio.BrokenResourceError as exc:
        log.warning("%s: refused: TLS handshake failed: %s", where, _reason(exc))
    except Exception:  # a bug costs this connection, never the server
        log.exception("%s: refused after an unexpected error in the TLS handshake", where)
    else:
        return TlsStream(ssl_stream)
    await trio.aclose_forcefully(stream)
    return None


def over_tls(handler: Callable[[TlsStream, str, int], Awaitable[None]],
             context: ssl.SSLContext, timeout: float, name: str
             ) -> Callable[[trio.SocketStream, str, int], Awaitable[None]]:
    """An accept loop's handler that runs ``handler`` only once the handshake succeeded."""

    async def tls_handler(stream: trio.SocketStream, address: str, port: int) -> None:
        host = f"[{address}]" if ":" in address else address
        where = f"{name}: connection from {host}:{port}"
        tls_stream = await handshake(stream, context, timeout, where)
        if tls_stream is not None:
            await handler(tls_stream, address, port)

    return tls_handler

"""One blocking TCP connection to a server, for the blocking ``Client`` and ``Admin`` and
the one-shot command-line paths: a plain socket, the sans-IO parser and an output buffer.
No trio, so these paths start fast and work inside programs that run another event loop.
"""

from __future__ import annotations

# ``_socket``, not ``socket``: the wrapper module builds its enums at import, which costs
# a one-off command more than its whole round trip.
import _socket
import itertools

from protocol import ConnectionClosed, Packet, Parser, RemoteProtocolError

from ._log import get_logger
from ._servers import ServerAddress

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl

logger = get_logger("gearman_cli.connection")

#: Bytes asked for per receive (as the trio connection).
RECEIVE_SIZE = 64 * 1024

_ids = itertools.count(1)


class Lost(Exception):
    """The connection ended; the message says why."""


def connect(address: ServerAddress, timeout: float,
            tls: ssl.SSLContext | None = None) -> _socket.socket:
    """A connected socket (``timeout`` set) with TCP_NODELAY; ``OSError`` when that fails
    (``_socket.gaierror`` for a name that does not resolve, ``TimeoutError``). With
    ``tls``, an ``ssl.SSLSocket`` whose handshake is done (the server's certificate
    verified for ``address.host``)."""
    host: str | bytes = address.host
    if isinstance(host, str) and host.isascii():
        host = host.encode()  # no idna codec import for a plain name
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in _socket.getaddrinfo(
        host, address.port, 0, _socket.SOCK_STREAM
    ):
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        if tls is not None:
            return _wrap(sock, tls, address)
        return sock
    raise error or OSError(f"{address}: no address to connect to")


def _wrap(sock: _socket.socket, tls: ssl.SSLContext, address: ServerAddress) -> _socket.socket:
    import socket
    import ssl

    from ._tls import handshake_failure

    # The ``socket.socket`` the ssl module wraps (it takes no bare ``_socket``).
    plain = socket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    try:
        return tls.wrap_socket(plain, server_hostname=address.host)
    except TimeoutError:
        plain.close()
        raise TimeoutError(f"TLS handshake with {address} timed out") from None
    except (ssl.SSLError, OSError) as exc:
        plain.close()
        raise OSError(handshake_failure(exc)) from None


class SyncConnection:
    """A non-blocking socket driven by ``select``: ``send`` queues, ``flush`` writes what
    the kernel takes, ``receive`` returns the packets of one read (``Lost`` at the end)."""

    def __init__(self, address: ServerAddress, timeout: float,
                 tls: ssl.SSLContext | None = None) -> None:
        self.id = next(_ids)
        self.address = address
        self.sock = connect(address, timeout, tls)
        self.sock.setblocking(False)
        #: What a non-blocking send or receive raises when it cannot go on now.
        self._would_block: tuple[type[OSError], ...] = (BlockingIOError,)
        if tls is not None:
            import ssl

            self._would_block = (BlockingIOError, ssl.SSLWantReadError,
                                 ssl.SSLWantWriteError)
        self.parser = Parser()
        self.out: list[bytes] = []
        self.closed = False
        self.reason = ""

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes) -> None:
        if not self.closed:
            self.out.append(data)

    def close(self, reason: str = "closed") -> None:
        if not self.closed:
            self.closed = True
            self.reason = self.reason or reason
            self.out.clear()
            self.sock.close()

    def flush(self) -> None:
        """Write as much of the queued bytes as the socket takes now."""
        if not self.out:
            return
        data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
        try:
            sent = self.sock.send(data)
        except self._would_block:
            sent = 0
        except OSError as exc:
            raise Lost(f"write failed: {exc.strerror or exc}") from None
        self.out = [data[sent:]] if sent < len(data) else []

    def receive(self) -> list[Packet]:
        """The packets of one read; ``Lost`` when the server closed or broke the stream."""
        try:
            data = self.sock.recv(RECEIVE_SIZE)
            if len(self._would_block) > 1:
                # TLS: records already decrypted are invisible to select(): take them now.
                while data and (pending := self.sock.pending()):  # type: ignore[attr-defined]
                    data += self.sock.recv(max(pending, RECEIVE_SIZE))
        except self._would_block:
            return []
        except OSError as exc:
            raise Lost(f"read failed: {exc.strerror or exc}") from None
        self.parser.receive_data(data)
        try:
            events = self.parser.events()
        except RemoteProtocolError as exc:
            raise Lost(f"protocol error: {exc}") from None
        packets: list[Packet] = []
        for event in events:
            if isinstance(event, Packet):
                packets.append(event)
            elif isinstance(event, ConnectionClosed):
                if packets:
                    # Hand over what came before the close first; the next read says EOF.
                    self.parser = _closed_parser()
                    break
                raise Lost("server closed the connection")
            else:
                raise Lost(f"unexpected text from server: {event!r}")
        return packets


def _closed_parser() -> Parser:
    parser = Parser()
    parser.receive_data(b"")
    return parser

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

logger = get_logger("gearman_cli.connection")

#: Bytes asked for per receive (as the trio connection).
RECEIVE_SIZE = 64 * 1024

_ids = itertools.count(1)


class Lost(Exception):
    """The connection ended; the message says why."""


def connect(address: ServerAddress, timeout: float) -> _socket.socket:
    """A connected socket (``timeout`` set) with TCP_NODELAY; ``OSError`` when that fails
    (``_socket.gaierror`` for a name that does not resolve, ``TimeoutError``)."""
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
        return sock
    raise error or OSError(f"{address}: no address to connect to")


class SyncConnection:
    """A non-blocking socket driven by ``select``: ``send`` queues, ``flush`` writes what
    the kernel takes, ``receive`` returns the packets of one read (``Lost`` at the end)."""

    def __init__(self, address: ServerAddress, timeout: float) -> None:
        self.id = next(_ids)
        self.address = address
        self.sock = connect(address, timeout)
        self.sock.setblocking(False)
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
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise Lost(f"write failed: {exc.strerror or exc}") from None
        self.out = [data[sent:]] if sent < len(data) else []

    def receive(self) -> list[Packet]:
        """The packets of one read; ``Lost`` when the server closed or broke the stream."""
        try:
            data = self.sock.recv(RECEIVE_SIZE)
        except BlockingIOError:
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

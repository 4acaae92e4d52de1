"""One TCP connection to a server: batched writes, and every parsed packet of a receive
handed over before the next await. All framing is done by the sans-IO ``protocol`` package.

Writes are appended to a buffer; one writer task sends everything buffered with a single
``send_all`` (pipelining and batching are where Python throughput comes from).
"""

from __future__ import annotations

import itertools
import logging
import socket
from collections.abc import Callable

import trio

from protocol import ConnectionClosed, Packet, Parser, RemoteProtocolError

from ._servers import ServerAddress
from ._tls import handshake_failure

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl

logger = logging.getLogger(__name__)

#: Bytes asked for per receive. Not more than 64 KiB: the receive allocates its buffer
#: first, and one past malloc's mmap threshold (128 KiB) costs an mmap and munmap per
#: receive (measured: 15.7 us per small read with 256 KiB, 2.4 us with 64 KiB).
RECEIVE_SIZE = 64 * 1024
#: Default time allowed for a TCP connect, in seconds.
CONNECT_TIMEOUT = 5.0

_ids = itertools.count(1)


async def open_stream(
    address: ServerAddress, timeout: float = CONNECT_TIMEOUT,
    tls: ssl.SSLContext | None = None,
) -> trio.abc.Stream:
    """Connect to ``address`` with TCP_NODELAY set, and with ``tls`` its TLS handshake
    done (the server's certificate verified for ``address.host``), all within
    ``timeout``; ``OSError`` when that fails or times out."""
    stream: trio.SocketStream | None = None
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(address.host, address.port)
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is None:
                return stream
            # https_compatible: no close_notify is awaited or required at the end (Gear
            # packets delimit themselves), so closing never waits on the server.
            tls_stream = trio.SSLStream(stream, tls, server_hostname=address.host,
                                        https_compatible=True)
            try:
                await tls_stream.do_handshake()
            except trio.BrokenResourceError as exc:
                await trio.aclose_forcefully(stream)
                raise OSError(handshake_failure(exc)) from None
            return tls_stream
    except trio.TooSlowError:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        raise OSError(f"connect to {address} timed out after {timeout}s") from None


class Connection:
    """A connected stream plus its parser and outgoing buffer.

    ``send`` never blocks: it appends to the buffer and wakes the writer. ``run`` drives the
    reader and the writer until the connection ends (EOF, an I/O error, a protocol error or
    ``close``) and returns the reason as text; it never raises for I/O errors.
    """

    def __init__(self, stream: trio.abc.Stream, address: ServerAddress) -> None:
        self.id = next(_ids)
        self.address = address
        self._stream = stream
        self._parser = Parser()
        self._out: list[bytes] = []
        self._wake = trio.Event()
        self._closed = False
        self._sending = False
        self._flushed: trio.Event | None = None
        self._cancel: trio.CancelScope | None = None
        self.reason = ""

    def __repr__(self) -> str:
        return f"<Connection #{self.id} {self.address}>"

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, data: bytes) -> None:
        """Queue encoded packet bytes; dropped (with a debug line) once the connection closed."""
        if self._closed:
            logger.debug("conn %d: dropping %d bytes, connection closed", self.id, len(data))
            return
        self._out.append(data)
        self._wake.set()

    def close(self) -> None:
        """Stop ``run`` (if it runs) and close the socket."""
        self._closed = True
        if self._cancel is not None:
            self._cancel.cancel()

    async def flush(self) -> None:
        """Wait until everything queued so far was handed to the kernel (or the connection
        closed)."""
        while (self._out or self._sending) and not self._closed:
            if self._flushed is None:
                self._flushed = trio.Event()
            await self._flushed.wait()

    def _signal_flushed(self) -> None:
        if self._flushed is not None:
            self._flushed.set()
            self._flushed = None

    async def run(self, on_packet: Callable[[Packet], None]) -> str:
        """Read and write until the connection ends; call ``on_packet`` per packet, in order."""
        reason: str | None = None
        with trio.CancelScope() as scope:
            self._cancel = scope
            if self._closed:
                scope.cancel()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, nursery.cancel_scope)
                reason = await self._reader(on_packet)
                nursery.cancel_scope.cancel()
        if reason is None:
            reason = self.reason or "closed"
        self._closed = True
        self.reason = reason
        self._out.clear()
        self._signal_flushed()
        with trio.CancelScope(shield=True):
            await self._stream.aclose()
        logger.debug("conn %d to %s ended: %s", self.id, self.address, reason)
        return reason

    async def _reader(self, on_packet: Callable[[Packet], None]) -> str:
        parser = self._parser
        receive = self._stream.receive_some
        while True:
            try:
                data = await receive(RECEIVE_SIZE)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                return f"read failed: {exc!r}"
            parser.receive_data(data)
            try:
                events = parser.events()
            except RemoteProtocolError as exc:
                logger.warning("conn %d to %s: protocol error: %s", self.id, self.address, exc)
                return f"protocol error: {exc}"
            for event in events:
                if isinstance(event, Packet):
                    on_packet(event)
                elif isinstance(event, ConnectionClosed):
                    return "server closed the connection"
                else:
                    logger.warning("conn %d: unexpected text from server: %r", self.id, event)
                    return "unexpected text from server"
                if self._closed:
                    return self.reason or "closed"

    async def _writer(self, scope: trio.CancelScope) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                self._sending = True
                while self._out:
                    chunks = self._out
                    self._out = []
                    await self._stream.send_all(
                        chunks[0] if len(chunks) == 1 else b"".join(chunks)
                    )
                self._sending = False
                self._signal_flushed()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.reason = f"write failed: {exc!r}"
            scope.cancel()

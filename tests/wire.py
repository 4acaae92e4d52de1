"""A small synchronous Gearman peer for wire tests: raw packets and admin lines over loopback.

Every read has a timeout; a read that times out fails the test instead of hanging it.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager

from protocol import HEADER_SIZE, NEED_DATA, Packet, PacketType, Parser, encode_req

#: Seconds any single expected reply may take.
DEFAULT_TIMEOUT = 3.0
#: Seconds of silence that count as "no reply" where an ECHO round trip cannot prove it.
QUIET = 0.3


class WireTimeout(AssertionError):
    """The server did not send what we waited for in time."""


class WireClosed(AssertionError):
    """The server closed the connection while we waited for a reply."""


class Wire:
    """One TCP connection to a gearmand on 127.0.0.1, read with timeouts."""

    def __init__(self, port: int, timeout: float = DEFAULT_TIMEOUT,
                 source: str | None = None) -> None:
        self.timeout = timeout
        # ``source``: another loopback address to connect from (127.0.0.2, ...).
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout,
            source_address=(source, 0) if source is not None else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False
        self._sync_tokens = 0

    # ------------------------------------------------------------------ basics

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, ptype: PacketType | int, *args: bytes) -> None:
        """Send one ``\\0REQ`` packet."""
        self.sock.sendall(encode_req(int(ptype), *args))

    def _fill(self, deadline: float) -> bool:
        """Read more bytes into the buffer; False on timeout. Sets ``eof`` on close/reset."""
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            self.eof = True
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    # ------------------------------------------------------------------ packets

    def _take_packet(self) -> Packet | None:
        if len(self.buf) < HEADER_SIZE:
            return None
        assert self.buf[0] == 0, f"expected a binary packet, got {bytes(self.buf[:80])!r}"
        (size,) = struct.unpack_from(">I", self.buf, 8)
        end = HEADER_SIZE + size
        if len(self.buf) < end:
            return None
        parser = Parser()
        parser.receive_data(bytes(self.buf[:end]))
        event = parser.next_event()
        assert isinstance(event, Packet), event
        assert parser.next_event() is NEED_DATA
        del self.buf[:end]
        return event

    def recv(self, timeout: float | None = None) -> Packet:
        """The next packet from the server."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            packet = self._take_packet()
            if packet is not None:
                return packet
            if not self._fill(deadline):
                if self.eof:
                    raise WireClosed(f"connection closed; buffered {bytes(self.buf)!r}")
                raise WireTimeout(f"no complete packet in time; buffered {bytes(self.buf)!r}")

    def recv_raw(self, timeout: float | None = None) -> bytes:
        """The next packet's exact bytes."""
        return self.recv(timeout).encode()

    def expect(self, ptype: PacketType, *args: bytes, timeout: float | None = None) -> Packet:
        """Read one packet and assert it is exactly ``\\0RES`` ``ptype`` ``args``."""
        packet = self.recv(timeout)
        assert packet.encode() == Packet.res(ptype, *args).encode(), (
            f"got {packet!r}, expected {Packet.res(ptype, *args)!r}")
        return packet

    def request(self, ptype: PacketType, *args: bytes) -> Packet:
        """Send a packet and return the reply."""
        self.send(ptype, *args)
        return self.recv()

    def sync(self, token: bytes = b"sync") -> None:
        """An ECHO round trip: once it is back, the server has handled every packet sent
        before on this connection. The echo must be the next packet: anything the server
        had sent first fails the test."""
        self._sync_tokens += 1
        token = b"%s-%d" % (token, self._sync_tokens)
        self.send(PacketType.ECHO_REQ, token)
        self.expect(PacketType.ECHO_RES, token)

    def quiet(self, *after: Wire) -> None:
        """Assert that the server has sent nothing more on this connection, without waiting
        on a clock: first an ECHO round trip on each of ``after`` (connections whose packets
        could make the server send here), then one on this connection. Output to one peer
        keeps its order, so anything already due here would arrive before our echo."""
        for other in after:
            other.sync()
        self.sync(b"quiet")
        assert not self.buf, f"unexpected bytes from the server: {bytes(self.buf)!r}"

    def silent_for(self, wait: float = QUIET) -> None:
        """Assert that nothing arrives within ``wait`` seconds (and the peer stays open).

        Only where an ECHO cannot be used: the server must not read anything more on this
        connection (it is waiting for the rest of a packet), or the point is that a timer
        does not fire."""
        deadline = time.monotonic() + wait
        while self._fill(deadline):
            pass
        assert not self.buf, f"unexpected bytes from the server: {bytes(self.buf)!r}"
        assert not self.eof, "the server closed the connection"

    def closed(self, timeout: float | None = None) -> bytes:
        """Wait for the server to close; return whatever it sent before (may be empty)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.eof:
            if not self._fill(deadline) and not self.eof:
                raise WireTimeout(f"connection still open; buffered {bytes(self.buf)!r}")
        data = bytes(self.buf)
        self.buf.clear()
        return data

    # ------------------------------------------------------------------ admin text

    def read_until(self, terminator: bytes, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            at = self.buf.find(terminator)
            if at >= 0:
                end = at + len(terminator)
                data = bytes(self.buf[:end])
                del self.buf[:end]
                return data
            if not self._fill(deadline):
                what = "closed" if self.eof else "timed out"
                raise (WireClosed if self.eof else WireTimeout)(
                    f"{what} waiting for {terminator!r}; buffered {bytes(self.buf)!r}")

    def admin_reply(self, timeout: float | None = None) -> bytes:
        """One admin reply: an ``OK``/``ERR`` line, or a list up to its ``.`` line."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        first = self.read_until(b"\n", timeout)
        if first.startswith((b"OK", b"ERR")) or first == b".\n":
            return first
        self.buf[:0] = first
        rest = self.read_until(b"\n.\n", max(0.0, deadline - time.monotonic()))
        return rest

    def admin(self, line: str | bytes, end: bytes = b"\n") -> bytes:
        """Send an admin command line and return its whole reply."""
        raw = line.encode() if isinstance(line, str) else line
        self.sock.sendall(raw + end)
        return self.admin_reply()


@contextmanager
def connect(port: int, timeout: float = DEFAULT_TIMEOUT) -> Iterator[Wire]:
    wire = Wire(port, timeout)
    try:
        yield wire
    finally:
        wire.close()


def wait_for(predicate: object, timeout: float = DEFAULT_TIMEOUT, step: float = 0.02) -> None:
    """Poll ``predicate()`` until it is true."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise WireTimeout("condition not reached in time")
        time.sleep(step)

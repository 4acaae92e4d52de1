"""Incremental decoder: bytes in, events out (spec §1.1, §3.1). Sans-IO.

Binary packets and admin text lines are told apart per event by the first
byte: NUL starts a binary packet, anything else an admin line.
"""

from __future__ import annotations

import struct
from typing import Final

from ._admin import AdminCommand, parse_admin_line
from ._errors import RemoteProtocolError
from ._packet import HEADER_SIZE, Packet
from ._types import PACKET_SPECS, Magic, PacketType

#: Default largest payload accepted: well above 16 MiB workloads.
DEFAULT_MAX_PACKET_SIZE: Final = 64 * 1024 * 1024
#: Default longest admin line accepted (bytes, without the newline).
DEFAULT_MAX_LINE_LENGTH: Final = 8192

#: The header without its size: magic and type as one 8-byte key.
_HEAD: Final = struct.Struct(">8sI")
_MAGICS: Final = {b"\0REQ": Magic.REQ, b"\0RES": Magic.RES}
#: Every valid (magic, type) prefix -> (magic, type, arity): one dict lookup per
#: packet on the hot path; a miss is sorted out by ``_header_error``.
_KNOWN: Final[dict[bytes, tuple[Magic, PacketType, int]]] = {
    magic.value + struct.pack(">I", ptype): (magic, ptype, len(PACKET_SPECS[ptype].args))
    for magic in Magic
    for ptype in PacketType
}
_new_packet: Final = tuple.__new__
#: An incomplete event larger than this is gathered in a list of reads (see Parser).
_BIG: Final = 65536


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: Returned by ``next_event`` when more bytes are needed.
NEED_DATA: Final = _Sentinel("NEED_DATA")


class ConnectionClosed:
    """The peer closed its side cleanly, at a packet boundary."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConnectionClosed)

    def __hash__(self) -> int:
        return hash(ConnectionClosed)

    def __repr__(self) -> str:
        return "ConnectionClosed()"


Event = Packet | AdminCommand | ConnectionClosed


class Parser:
    """Turns a byte stream into Packets, AdminCommands and ConnectionClosed.

    Feed bytes with ``receive_data`` (``b""`` means EOF), then call
    ``next_event`` until it returns ``NEED_DATA``, or take every complete event
    at once with ``events``. Bad input raises only ``RemoteProtocolError``;
    once one is raised the parser stays broken and raises it again.

    The buffer is one ``bytes`` object: a read that starts at an event boundary (the
    common case) is used as it is, and each argument is one slice of it. An event that
    stays incomplete past ``_BIG`` bytes is gathered as a list of reads and joined once
    it is complete (or, for a text line, each time it doubles), so a large packet
    arriving in many reads is copied a bounded number of times.
    """

    __slots__ = ("_buf", "_pos", "_eof", "_error", "_chunks", "_have", "_want", "_line",
                 "args", "max_packet_size", "max_line_length")

    def __init__(
        self,
        *,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
    ) -> None:
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._error: RemoteProtocolError | None = None
        #: While a large event is incomplete: the reads so far, their total, and the
        #: total at which to join them.
        self._chunks: list[bytes] | None = None
        self._have = 0
        self._want = 0
        #: The event gathered is a text line: a read with a newline ends the gathering.
        self._line = False
        #: The arguments of the packet ``next_raw`` returned last.
        self.args: tuple[bytes, ...] = ()
        self.max_packet_size = max_packet_size
        self.max_line_length = max_line_length

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events."""
        return len(self._buf) - self._pos + self._have

    @property
    def held(self) -> int:
        """Bytes the parser holds in memory, consumed ones included (at most one read's
        worth once every complete event has been taken)."""
        return len(self._buf) + self._have

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes from the peer; ``b""`` means the peer closed its side."""
        if self._eof and data:
            raise RuntimeError("received data after EOF")
        if not data:
            self._eof = True
            return
        chunks = self._chunks
        if chunks is not None:
            chunks.append(bytes(data))
            self._have += len(data)
            if self._have >= self._want or (self._line and b"\n" in data):
                self._buf = b"".join(chunks)
                self._pos = 0
                self._chunks = None
                self._have = 0
            return
        pos = self._pos
        if pos >= len(self._buf):
            self._buf = bytes(data)  # no copy when it is bytes already
        else:
            # The incomplete rest: under _BIG bytes (next_event sees to that).
            self._buf = self._buf[pos:] + data
        self._pos = 0

    def _fail(self, exc: RemoteProtocolError) -> RemoteProtocolError:
        self._error = exc
        return exc

    def next_event(self) -> Event | _Sentinel:
        """The next complete event, or ``NEED_DATA``."""
        event = self.next_raw()
        if type(event) is tuple:
            args = self.args
            self.args = ()  # not kept alive here until the next packet
            return _new_packet(Packet, (event[0], event[1], args))
        return event  # type: ignore[return-value]

    def next_raw(self) -> tuple[Magic, PacketType, int] | Event | _Sentinel:
        """``next_event`` without building a Packet (the server's hot path): for a
        binary packet, its (magic, type, arity) and its arguments in ``args``."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail == 0:
            if self._chunks is not None:
                return self._need(self._have)
            if pos:
                # Everything was consumed: give the memory back now, not at the next
                # read (a peer that sent one huge packet and stopped would keep it).
                self._buf = b""
                self._pos = 0
            return ConnectionClosed() if self._eof else NEED_DATA
        if buf[pos] == 0:
            if avail < HEADER_SIZE:
                return self._need(avail)
            head, size = _HEAD.unpack_from(buf, pos)
            kind = _KNOWN.get(head)
            if kind is None:
                raise self._fail(_header_error(head))
            if size > self.max_packet_size:
                raise self._fail(
                    RemoteProtocolError(
                        f"packet of {size} bytes exceeds the limit of "
                        f"{self.max_packet_size}",
                        code="ARGUMENT_TOO_LARGE",
                    )
                )
            start = pos + HEADER_SIZE
            end = start + size
            if end > len(buf):
                if end - pos > _BIG:
                    self._gather(end - pos, False)
                return self._need(avail)
            nargs = kind[2]
            if nargs == 1:
                self.args = (buf[start:end],)
            elif nargs == 0:
                self.args = ()
            else:
                args = tuple(buf[start:end].split(b"\0", nargs - 1))
                if len(args) != nargs:
                    raise self._fail(_arity_error(kind[1], nargs, len(args)))
                self.args = args
            self._pos = end
            return kind
        # An admin text line. Its length excludes the line end, so a line that
        # fits with "\n" also fits with "\r\n" (decisions.md, Admin).
        nl = buf.find(b"\n", pos)
        if nl < 0:
            if avail - (buf[-1] == 13) > self.max_line_length:
                raise self._fail(
                    RemoteProtocolError(
                        "admin line too long", code="ARGUMENT_TOO_LARGE", admin=True
                    )
                )
            if avail > _BIG:
                self._gather(2 * avail, True)
            return self._need(avail)
        if nl - pos - (nl > pos and buf[nl - 1] == 13) > self.max_line_length:
            raise self._fail(
                RemoteProtocolError("admin line too long", code="ARGUMENT_TOO_LARGE",
                                    admin=True)
            )
        line = buf[pos:nl]
        self._pos = nl + 1
        return parse_admin_line(line)

    def _gather(self, want: int, line: bool) -> None:
        """Collect the incomplete event's reads in a list until it has ``want`` bytes (or,
        for a text ``line``, until a read brings a newline)."""
        rest = self._buf[self._pos:]
        self._chunks = [rest]
        self._have = len(rest)
        self._want = want
        self._line = line
        self._buf = b""
        self._pos = 0

    def _need(self, avail: int) -> _Sentinel:
        if self._pos > 65536:
            # Keep only the incomplete event, not what was consumed before it.
            self._buf = self._buf[self._pos:]
            self._pos = 0
        if self._eof:
            raise self._fail(
                RemoteProtocolError(
                    f"connection closed with {avail} bytes of an incomplete packet"
                )
            )
        return NEED_DATA

    def events(self) -> list[Event]:
        """Every complete event buffered now (stops after ConnectionClosed)."""
        out: list[Event] = []
        append = out.append
        next_event = self.next_event
        while True:
            event = next_event()
            if isinstance(event, _Sentinel):  # NEED_DATA, the only instance
                return out
            append(event)
            if type(event) is ConnectionClosed:
                return out


def _arity_error(ptype: PacketType, nargs: int, got: int) -> RemoteProtocolError:
    return RemoteProtocolError(f"{ptype.name} needs {nargs} arguments, payload has {got}")


def _header_error(head: bytes) -> RemoteProtocolError:
    """Why an 8-byte magic+type prefix is not a known packet header."""
    if head[:4] not in _MAGICS:
        return RemoteProtocolError("bad magic", code="INVALID_MAGIC")
    ptype_num = int.from_bytes(head[4:], "big")
    return RemoteProtocolError(f"unknown packet type {ptype_num}", code="INVALID_COMMAND")

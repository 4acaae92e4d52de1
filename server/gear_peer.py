"""One Gear connection's output (``GearPeer``): encoded replies appended to a buffer,
written once per batch by the front-end (gear.py), the rest by the peer's writer task;
the output bounds and back-pressure of docs/architecture.md.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Final

import trio

from protocol import PacketType, Parser, res_encoder

from .host import Stream
from .manager import Conn

log = logging.getLogger("server.gear")

#: Unchecked encoders by packet number: the core's arguments hold no NUL but the last.
_ENCODE: Final = [res_encoder(PacketType(n)) if n in PacketType._value2member_map_ else None
                  for n in range(max(PacketType) + 1)]
#: Each ``\0RES`` type's first 8 header bytes: ``deliver`` encodes without a call.
_RES_PREFIX: Final = [b"\0RES" + struct.pack(">I", n) for n in range(max(PacketType) + 1)]
_pack_size: Final = struct.Struct(">I").pack


class Batch:
    """What the front-end is handling now, shared by it and every peer."""

    __slots__ = ("overfull", "sender")

    def __init__(self) -> None:
        #: Peers whose output passed their bound during the current batch.
        self.overfull: list[GearPeer] = []
        #: The peer whose batch of events is being handled; None outside a batch (a
        #: timer, a store commit, the event stream).
        self.sender: GearPeer | None = None


class GearHold:
    """A place in a peer's output reserved for a reply that is not known yet."""

    __slots__ = ("buffered", "done", "reply")

    def __init__(self) -> None:
        self.reply = b""
        self.done = False
        #: What was delivered to the peer after this hold was taken.
        self.buffered = bytearray()


class GearPeer:
    """The ``Peer`` of one Gear connection: an outgoing buffer, written straight to the socket.

    ``deliver`` only encodes, appends and marks the peer dirty; the front-end flushes
    every dirty peer once per batch. What the kernel does not take at once is left to
    the peer's writer task, which waits for the socket to become writable. Past
    ``limit`` pending bytes the front-end stops reading from the peer (``paused``) until
    the writer has drained it.
    """

    __slots__ = ("_holds", "_wake", "_write_scope", "batch", "broken", "cid", "closed",
                 "closing", "conn", "dirty", "fd", "hard_limit", "held", "last_read", "lent",
                 "limit", "listings", "on_drained", "out", "over", "parser", "paused",
                 "reader_scope", "resumed", "stream", "traffic", "waiters", "waiting_on",
                 "write_timeout")

    def __init__(self, stream: Stream, limit: int, dirty: list[GearPeer],
                 parser: Parser, batch: Batch | None = None,
                 write_timeout: float = 0, traffic: list[int] | None = None) -> None:
        self.stream = stream
        self.fd = stream.socket.fileno()
        self.out = bytearray()
        self.limit = limit
        #: Output pending past this when more of its own replies (or output no sender
        #: can be paused for) arrives: the peer does not read, and is dropped (checked
        #: before appending: one large reply is never the reason). Another peer's batch
        #: pauses that sender instead (``over``), so each adds at most one batch; what
        #: they add (``lent``, until the peer drains) does not count against this.
        self.hard_limit = limit * 4
        self.lent = 0
        self._wake = trio.Event()
        self._write_scope: trio.CancelScope | None = None
        self._holds: deque[GearHold] = deque()
        #: Bytes delivered behind holds, not yet in ``out``.
        self.held = 0
        #: The front-end's counters, shared: packets in, bytes in, packets out, bytes out.
        self.traffic = traffic if traffic is not None else [0, 0, 0, 0]
        self.closing = False
        self.broken = False
        #: The connection task has finished with this peer.
        self.closed = False
        self.paused = False
        #: Set when a paused peer may be read again (the streams transport waits on it).
        self.resumed: trio.Event | None = None
        #: The streams transport's reader task for this peer.
        self.reader_scope: trio.CancelScope | None = None
        self.cid = 0
        self.conn: Conn | None = None
        self.parser = parser
        #: The front-end's list of peers with unflushed output (shared by all peers).
        self.dirty = dirty
        #: Past ``limit`` pending: set, and this peer put on the batch's ``overfull``
        #: list, so that whoever sent the batch is paused until this one drains.
        self.over = False
        self.batch = batch if batch is not None else Batch()
        #: Long admin listings this peer asked for, built one at a time by one task (in
        #: order, each into its hold); None while no task builds them.
        self.listings: deque[tuple[GearHold, Iterator[bytes]]] | None = None
        #: Peers paused because their batches filled this one's output.
        self.waiters: list[GearPeer] = []
        #: How many peers this one waits for (it is read again when none is left).
        self.waiting_on = 0
        #: Called once this peer's output is back under ``limit`` (after ``over``/pause).
        self.on_drained: Callable[[GearPeer], None] | None = None
        #: Seconds the writer waits for the socket to take a byte, then drops it (0: ever).
        self.write_timeout = write_timeout
        #: When a read last brought data (the idle timeout's clock).
        self.last_read = time.monotonic()

    def deliver(self, ptype: PacketType, *args: bytes) -> None:
        # The core's arguments hold no NUL but in the last (see _ENCODE), so no checks.
        payload = args[0] if len(args) == 1 else b"\0".join(args)
        data = _RES_PREFIX[ptype] + _pack_size(len(payload)) + payload
        self.traffic[2] += 1
        # ``write``'s common case inline: this runs for every reply.
        out = self.out
        if self.broken or self._holds or len(out) > self.limit:
            self._write_slow(data)
            return
        if not out:
            self.dirty.append(self)
        out += data

    def write(self, data: bytes) -> None:
        """Queue bytes already encoded (admin replies, errors)."""
        out = self.out
        if self.broken or self._holds or len(out) > self.limit:
            self._write_slow(data)
            return
        if not out:
            self.dirty.append(self)
        out += data

    def _write_slow(self, data: bytes) -> None:
        """Broken, behind a hold, or past the bound."""
        if self.broken:
            return
        batch = self.batch
        own = batch.sender is None or batch.sender is self
        if self._holds:
            self.held += len(data)
            if not own:
                self.lent += len(data)
            elif self.held - self.lent > self.hard_limit:
                log.warning("connection %d: %d bytes held behind a store commit; dropping",
                            self.cid, self.held)
                self.drop()
                return
            self._holds[-1].buffered += data
            if not own and len(self.out) + self.held > self.limit:
                # Another peer's batch: it waits until the commit lets these out.
                self.over = True
                if self not in batch.overfull:
                    batch.overfull.append(self)
            return
        out = self.out
        if not own:
            self.lent += len(data)
        elif len(out) - self.lent > self.hard_limit:
            log.warning("connection %d: peer does not read (%d bytes pending); dropping",
                        self.cid, len(out))
            self.drop()
            return
        # Past the bound: whoever sent this batch is paused until this peer drains (not
        # dropped: senders resumed together may each bring a read's worth past it).
        self.over = True
        if self not in batch.overfull:
            batch.overfull.append(self)
        out += data

    def hold(self) -> GearHold:
        hold = GearHold()
        self._holds.append(hold)
        return hold

    def behind(self, hold: GearHold) -> bool:
        """``hold``'s reply is still waiting for an earlier one (not yet in ``out``)."""
        return hold in self._holds

    def release(self, hold: object, ptype: PacketType, *args: bytes) -> None:
        self.traffic[2] += 1
        self.release_raw(hold, _ENCODE[ptype](*args))  # type: ignore[misc]

    def release_raw(self, hold: object, data: bytes) -> None:
        """Fill a reserved place with bytes already encoded (a long admin reply)."""
        assert isinstance(hold, GearHold)
        hold.reply = data
        hold.done = True
        holds = self._holds
        while holds and holds[0].done:
            first = holds.popleft()
            self.held -= len(first.buffered)
            if self.broken:
                continue
            if not self.out:
                self.dirty.append(self)
            self.out += first.reply
            self.out += first.buffered
        if not holds:
            self._wake.set()  # a closing peer's writer waits for its held replies

    def drop(self) -> None:
        """Give up on this peer now: discard its output, end its writer (even one blocked
        waiting for the socket), which ends the connection."""
        self.closing = True
        self.broken = True
        self.out.clear()
        self._wake.set()
        if self._write_scope is not None:
            self._write_scope.cancel()

    def flush(self) -> None:
        """Write what the kernel takes now; leave the rest to the writer task."""
        out = self.out
        if not out or self.broken:
            return
        try:
            written = os.write(self.fd, out)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            log.info("connection %d: write failed: %s", self.cid, exc)
            self.broken = True
            out.clear()
            self._wake.set()
            return
        self.traffic[3] += written
        if written == len(out):
            out.clear()
        else:
            del out[:written]
            self._wake.set()
        self._check_drained()

    def _check_drained(self) -> None:
        if ((self.paused or self.over) and len(self.out) + self.held <= self.limit
                and self.on_drained is not None):
            self.lent = 0
            self.on_drained(self)

    async def writer(self) -> None:
        """Finish writes the kernel could not take at once; end when closing or broken."""
        out = self.out
        with trio.CancelScope() as self._write_scope:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                while out and not self.broken:
                    if self.write_timeout > 0:
                        with trio.move_on_after(self.write_timeout) as waited:
                            await trio.lowlevel.wait_writable(self.fd)
                        if waited.cancelled_caught:
                            log.warning("connection %d: peer took no data for %.0f s "
                                        "(%d bytes pending); dropping", self.cid,
                                        self.write_timeout, len(out))
                            self.broken = True
                            break
                    else:
                        await trio.lowlevel.wait_writable(self.fd)
                    try:
                        written = os.write(self.fd, out)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        log.info("connection %d: write failed: %s", self.cid, exc)
                        self.broken = True
                        break
                    del out[:written]
                    self.traffic[3] += written
                    self._check_drained()
                if self.broken or (self.closing and not self._holds):
                    return

    def close_when_flushed(self) -> None:
        """Stop reading: let the writer send what is buffered, then end."""
        self.closing = True
        self._wake.set()

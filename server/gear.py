"""The Gear front-end: the binary protocol and the text admin protocol on one port.

A codec (``protocol.Parser`` in, ``\\0RES`` packets and admin lines out) plus a translator
onto ``Manager.handle_packet`` and ``admin.handle_admin``. Replies go to each connection's
``GearPeer`` buffer, written once per batch of events (one write per peer per batch);
back-pressure and bounds are in docs/architecture.md. Transports: ``epoll`` (Linux: one
reactor task over an epoll set of every connection's fd; a third less server CPU per job)
and ``streams`` (a task per connection: elsewhere, and by config). ``--ssl``: gear_tls.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import time
from collections import deque
from typing import Final, cast

import trio

from protocol import (
    NEED_DATA,
    AdminCommand,
    ConnectionClosed,
    Magic,
    Packet,
    PacketType,
    Parser,
)
from protocol import RemoteProtocolError as ProtoError
from protocol import admin as admin_text

from .admin import admin_listing, handle_admin
from .gear_peer import Batch, GearPeer
from .host import Address, Host, Stream, bind, serve_listeners
from .loopwait import LoopWait
from .tls import adopt

log = logging.getLogger(__name__)

# 64 KiB, not more: os.read allocates its buffer first; past malloc's mmap threshold (128
# KiB) a read costs an mmap and munmap (15.7 us per small read with 256 KiB, 2.4 with 64).
_RECEIVE_SIZE: Final = 64 * 1024

_PT_ERROR: Final = PacketType.ERROR
#: Lines of a long admin listing built between two yields to other connections.
_LISTING_CHUNK: Final = 1000
#: Long listings one peer may have waiting before it is not read until they are built.
_LISTINGS_QUEUED: Final = 16
#: Seconds to the first look at a peer's output while it reads a long listing (doubled
#: up to a quarter of a second).
_LISTING_DRAIN_POLL: Final = 0.002
#: Epoll events of a socket that broke, reported whatever the peer's event mask.
_BROKEN: Final[int] = getattr(select, "EPOLLERR", 8) | getattr(select, "EPOLLHUP", 16)
#: What a closed peer's parser becomes: its buffers are freed at once.
_CLOSED_PARSER: Final = Parser(max_packet_size=0)


def transport_for(config_value: str) -> str:
    """``epoll`` where the platform has it, else ``streams``; or what the config says."""
    if config_value in ("epoll", "streams"):
        if config_value == "epoll" and not hasattr(select, "epoll"):
            raise ValueError("the epoll transport needs Linux")
        return config_value
    return "epoll" if hasattr(select, "epoll") else "streams"


class GearFrontEnd:
    """The Gear protocol (binary and admin) on ``--port``."""

    name = "gear"

    def __init__(self, host: Host, port: int, peer_class: type[GearPeer] = GearPeer) -> None:
        self.host = host
        self.port = port
        self.config = host.config
        self.manager = host.manager
        self.transport = transport_for("streams" if host.config.tls else host.config.transport)
        self.peer_class = peer_class
        self.addresses: list[Address] = []
        self._dirty: list[GearPeer] = []  # peers with output not written yet
        #: Whose batch is being handled, and which peers it filled past their bound.
        self._batch = Batch()
        self._overfull = self._batch.overfull
        #: Packets in, bytes in, packets out, bytes out (statistics; every Gear peer adds).
        self.traffic = [0, 0, 0, 0]
        self._epoll = select.epoll() if self.transport == "epoll" else None
        self._readers: dict[int, GearPeer] = {}
        self._reading = trio.CancelScope()
        self._stopped = False
        self._debug = log.isEnabledFor(logging.DEBUG)

    # ------------------------------------------------------------------ serving

    async def serve(self, *, task_status: trio.TaskStatus[list[Address]]
                    = trio.TASK_STATUS_IGNORED) -> None:
        listeners, self.addresses = await bind(self.config, self.port)
        for address in self.addresses:
            log.debug("listening on %s:%d (%s transport)", *address, self.transport)
        if self._epoll is not None:
            # In the server's nursery: reading goes on after the accept loop ends (a
            # graceful shutdown lets running work finish) until ``stop_reading``.
            self.host.spawn(self._run_reactor)
        if self.config.idle_timeout > 0:
            self.host.spawn(self._close_idle, self.config.idle_timeout)
        task_status.started(list(self.addresses))
        await serve_listeners(self.host, listeners, self._connection)

    def peers(self) -> list[GearPeer]:
        """The connections being read now."""
        return list(self._readers.values())

    def stop_reading(self) -> None:
        self._stopped = True
        self._reading.cancel()
        for peer in list(self._readers.values()):
            self._stop_reading(peer)

    def flush(self) -> None:
        """Write out every peer that was delivered to since the last flush."""
        events = self.manager.events
        if events is not None and events.queue:
            events.drain()
        dirty = self._dirty
        while dirty:
            batch = dirty[:]
            dirty.clear()
            for peer in batch:
                peer.flush()

    # ------------------------------------------------------------------ connections

    async def _connection(self, stream: Stream, address: str, port: int) -> None:
        """One connection's life: read by the transport, its writer task finishing slow
        writes, and the clean-up when either side ends it."""
        config = self.config
        peer = self.peer_class(stream, config.max_outgoing_buffer, self._dirty,
                               Parser(max_packet_size=config.max_packet_size),
                               self._batch, config.write_timeout, self.traffic)
        conn = self.manager.connect(peer, address, port)
        peer.cid = conn.id
        peer.conn = conn
        peer.on_drained = self._drained
        log.info("connection %d: accepted from %s%s", conn.id, conn.remote, adopt(conn, stream))
        try:
            if self._stopped:
                return
            self._readers[peer.fd] = peer
            if self._epoll is not None:
                self._epoll.register(peer.fd, select.EPOLLIN)
                await peer.writer()
            else:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read_stream, peer)
                    await peer.writer()
                    nursery.cancel_scope.cancel()
        except Exception:
            log.exception("connection %d: dropped after an unexpected error", conn.id)
        finally:
            self._stop_reading(peer)
            # Never write to this fd again: its number may be reused by a new connection.
            peer.broken = True
            peer.closed = True
            peer.out.clear()
            # Only a worker or a waiting client leaves output or deadlines behind.
            left_work = bool(conn.abilities or conn.assigned or conn.attached)
            self.manager.disconnect(conn, time.time())
            # Senders paused for it go on; nothing keeps its buffers alive (no cycle).
            self._release_waiters(peer)
            peer.parser = _CLOSED_PARSER
            peer.conn = None
            peer.on_drained = None
            if left_work:
                self.host.changed()
            with trio.CancelScope(shield=True):
                await stream.aclose()
            log.info("connection %d: closed", conn.id)

    def _stop_reading(self, peer: GearPeer) -> None:
        if self._readers.pop(peer.fd, None) is peer:
            if self._epoll is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._epoll.unregister(peer.fd)
            if peer.resumed is not None:
                peer.resumed.set()
            if peer.reader_scope is not None:
                peer.reader_scope.cancel()

    def _pause(self, peer: GearPeer) -> None:
        """Stop reading from a peer whose replies pile up (it does not read)."""
        if not peer.paused and self._readers.get(peer.fd) is peer:
            peer.paused = True
            peer.resumed = trio.Event()
            if self._epoll is not None:
                self._epoll.modify(peer.fd, 0)

    def _drained(self, peer: GearPeer) -> None:
        """``peer``'s output is back under its bound: read it again (unless a peer it
        filled is still full), and the senders paused for its sake too."""
        peer.over = False
        self._resume(peer)
        self._release_waiters(peer)

    def _release_waiters(self, peer: GearPeer) -> None:
        waiters, peer.waiters = peer.waiters, []
        for waiter in waiters:
            waiter.waiting_on -= 1
            self._resume(waiter)

    def _resume(self, peer: GearPeer) -> None:
        if (not peer.paused or peer.waiting_on > 0 or len(peer.out) + peer.held > peer.limit
                or (peer.listings is not None and len(peer.listings) > _LISTINGS_QUEUED)):
            return  # still behind with its own output or listings, or waiting for a peer
        peer.paused = False
        peer.last_read = time.monotonic()  # the idle clock starts again
        if peer.resumed is not None:
            peer.resumed.set()
        if self._epoll is not None and self._readers.get(peer.fd) is peer:
            self._epoll.modify(peer.fd, select.EPOLLIN)

    def _end(self, peer: GearPeer) -> None:
        """Stop reading from a peer; its task flushes what is pending and cleans up."""
        self._stop_reading(peer)
        peer.close_when_flushed()

    async def _send_listings(self, peer: GearPeer) -> None:
        """Build a peer's long listings one after another, each once the peer has read
        most of the one before: a client asking for many cannot make the server build
        them all at once."""
        listings = peer.listings
        assert listings is not None
        while listings and not peer.broken:
            hold, lines = listings[0]
            out = bytearray()
            for count, line in enumerate(lines, 1):
                out += line
                if count % _LISTING_CHUNK == 0:
                    await trio.sleep(0)
                    if peer.broken:
                        break
            listings.popleft()
            peer.release_raw(hold, bytes(out))
            self.flush()
            # The next one once this one is out (not behind an earlier hold, a store
            # commit) and mostly read: never two built listings held in memory.
            poll = _LISTING_DRAIN_POLL
            while not peer.broken and (peer.behind(hold)
                                       or len(peer.out) + peer.held > peer.limit):
                await trio.sleep(poll)
                poll = min(poll * 2, 0.25)
            self._resume(peer)  # if it was paused with too many waiting
        peer.listings = None
        self._resume(peer)

    async def _close_idle(self, timeout: float) -> None:
        """``--idle-timeout``: close connections that sent nothing for that long."""
        while True:
            await trio.sleep(min(timeout / 4, 5.0))
            cutoff = time.monotonic() - timeout
            # A paused peer is not idle: it is not read (back-pressure).
            for peer in [p for p in self._readers.values()
                         if p.last_read < cutoff and not p.paused]:
                log.info("connection %d: idle for %.0f s; closing", peer.cid, timeout)
                self._end(peer)

    # ------------------------------------------------------------------ transports

    async def _run_reactor(self) -> None:
        try:
            with self._reading:
                await self._reactor()
        finally:
            assert self._epoll is not None
            self._epoll.close()

    async def _reactor(self) -> None:
        """The epoll transport: every connection read from this one task."""
        epoll = self._epoll
        assert epoll is not None
        readers = self._readers
        wait_readable = trio.lowlevel.wait_readable
        read = os.read
        epfd = epoll.fileno()
        receive = self._receive
        loop_wait = LoopWait.create(epfd)  # reads without a trio turn while trio is idle
        ready = False
        while True:
            if not ready:
                await wait_readable(epfd)
            now = time.time()
            clock = time.monotonic()
            # Bounded per round, so a flood of ready peers still lets other tasks run.
            for fd, events in epoll.poll(0, 512):
                peer = readers.get(fd)
                # Paused by a batch earlier this round: not read, unless its socket broke
                # (reported even with no events asked for; skipped, it would spin).
                if peer is None or (peer.paused and not events & _BROKEN):
                    continue
                try:
                    data = read(fd, _RECEIVE_SIZE)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    log.info("connection %d: read failed: %s", peer.cid, exc)
                    self._end(peer)
                    continue
                peer.last_read = clock
                receive(peer, data, now)
            self.flush()
            self.host.deadlines_changed()
            ready = loop_wait is not None and loop_wait.wait()

    async def _read_stream(self, peer: GearPeer) -> None:
        """The streams transport: one connection read by its own task."""
        stream = peer.stream
        with trio.CancelScope() as peer.reader_scope:
            while self._readers.get(peer.fd) is peer:
                if peer.paused:
                    if peer.resumed is not None:
                        await peer.resumed.wait()
                    continue
                try:
                    data = await stream.receive_some(_RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    log.info("connection %d: read failed: %s", peer.cid, exc)
                    self._end(peer)
                    return
                peer.last_read = time.monotonic()
                # Paused while this read waited (filled by other peers' batches): what it
                # brought waits too.
                while peer.paused and peer.resumed is not None:
                    await peer.resumed.wait()
                    if self._readers.get(peer.fd) is not peer:
                        return
                self._receive(peer, data, time.time())
                self.flush()
                self.host.deadlines_changed()

    # ------------------------------------------------------------------ the codec

    def _receive(self, peer: GearPeer, data: bytes, now: float) -> None:
        """Handle every complete event in what a peer sent; a bug costs this connection,
        never the server."""
        self.traffic[1] += len(data)
        batch = self._batch
        batch.sender = peer
        try:
            self._events(peer, data, now)
        except Exception:
            log.exception("connection %d: dropped after an unexpected error", peer.cid)
            peer.drop()
            self._stop_reading(peer)
        finally:
            batch.sender = None

    def _events(self, peer: GearPeer, data: bytes, now: float) -> None:
        self._overfull.clear()  # only what this batch fills counts against this sender
        parser = peer.parser
        conn = peer.conn
        assert conn is not None
        parser.receive_data(data)
        handle_packet = self.manager.handle_packet
        req = Magic.REQ
        traffic = self.traffic
        try:
            while True:
                event = parser.next_raw()
                if event is NEED_DATA:
                    parser.args = ()  # the last packet's payload is not kept alive
                    break
                if type(event) is tuple:
                    traffic[0] += 1
                    magic, ptype, _ = cast("tuple[Magic, PacketType, int]", event)
                    args = parser.args
                    if self._debug:
                        log.debug("connection %d: %s", conn.id, Packet(ptype, args, magic))
                    if magic is req:
                        handle_packet(conn, ptype, args, now)
                    else:
                        peer.deliver(_PT_ERROR, b"INVALID_MAGIC", b"Request magic expected")
                elif isinstance(event, AdminCommand):
                    if self._debug:
                        log.debug("connection %d: admin %r", conn.id, event.line)
                    conn.admin = True
                    listing = admin_listing(self.host.admin, conn, event)
                    if listing is None:
                        peer.write(handle_admin(self.host.admin, conn, event))
                    else:
                        # A long listing is built in a task that lets other connections
                        # run between chunks; this connection's later replies wait.
                        if peer.listings is None:
                            peer.listings = deque()
                            self.host.spawn(self._send_listings, peer)
                        peer.listings.append((peer.hold(), listing))
                elif isinstance(event, ConnectionClosed):
                    self._end(peer)
                    return
        except ProtoError as exc:
            # The parser keeps this error; its traceback would hold the parser (and its
            # buffer) in a reference cycle that only the cyclic GC frees.
            exc.__traceback__ = None
            log.warning("connection %d: protocol error: %s", conn.id, exc.text)
            if exc.admin:
                peer.write(admin_text.err(exc.code, exc.text))
            else:
                peer.deliver(_PT_ERROR, exc.code.encode(), exc.text.encode())
            self._end(peer)
            return
        if peer.closing:
            self._end(peer)
            return
        if (len(peer.out) + peer.held > peer.limit
                or (peer.listings is not None and len(peer.listings) > _LISTINGS_QUEUED)):
            self._pause(peer)
        overfull = self._overfull
        if overfull:
            # This batch filled other peers' output past their bound (a worker streaming to
            # a slow client): stop reading the sender until they drain (not drop them),
            # and them too, as if they had filled it themselves.
            for full in overfull:
                if full is not peer and full.over and not full.broken:
                    self._pause(peer)
                    self._pause(full)
                    if peer not in full.waiters:
                        full.waiters.append(peer)
                        peer.waiting_on += 1
            overfull.clear()

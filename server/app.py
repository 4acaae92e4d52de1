"""The trio server around the job manager: listeners, one nursery per connection, timers.

Each connection's reader parses every complete packet it received before awaiting
again; replies go to the peer's outgoing buffer and one writer task flushes it with a
single ``send_all``. A peer that stops reading is paused, then dropped past a bound.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import select
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from protocol import NEED_DATA, AdminCommand, ConnectionClosed, Magic, Packet, Parser, Priority
from protocol import RemoteProtocolError as ProtoError
from protocol import admin as admin_text

from .admin import AdminContext, handle_admin
from .config import ServerConfig
from .manager import Conn, Job, Manager, error_packet

log = logging.getLogger(__name__)

# 64 KiB, not more: os.read allocates its buffer first, and a buffer past malloc's mmap
# threshold (128 KiB) costs an mmap and munmap per read (measured: 15.7 us per small read
# with 256 KiB against 2.4 us with 64 KiB). Level-triggered epoll reads the rest later.
_RECEIVE_SIZE: Final = 64 * 1024
#: Accept errors that mean "out of resources": wait and retry instead of dying.
_ACCEPT_RETRY_ERRNOS: Final = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
#: Accept errors about one connection that was gone before it was accepted: skip it.
_ACCEPT_SKIP_ERRNOS: Final = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}


def _host(peer: object) -> str:
    """The host part of an address accept(2) returned; "-" when there is none."""
    if isinstance(peer, tuple) and peer and isinstance(peer[0], str) and peer[0]:
        return peer[0]
    return "-"


class Hold:
    """A place in a peer's output reserved for a reply that is not known yet."""

    __slots__ = ("buffered", "done", "reply")

    def __init__(self) -> None:
        self.reply = b""
        self.done = False
        #: What was delivered to the peer after this hold was taken.
        self.buffered = bytearray()


class PeerConnection:
    """The Peer the manager delivers to: an outgoing buffer, written straight to the socket.

    ``deliver`` only appends and marks the peer dirty; the server flushes every dirty
    peer once per batch of events (one write system call per peer per batch). What the
    kernel does not take at once is left to the peer's writer task, which waits for the
    socket to become writable. Past ``limit`` pending bytes the server stops reading from
    the peer (``paused``) until the writer has drained it.
    """

    __slots__ = ("_holds", "_wake", "_write_scope", "broken", "cid", "closed", "closing",
                 "conn", "dirty", "fd", "hard_limit", "limit", "on_drained", "out", "parser",
                 "paused", "stream")

    def __init__(self, stream: trio.SocketStream, limit: int,
                 dirty: list[PeerConnection], hard_limit: int | None = None) -> None:
        self.stream = stream
        self.fd = stream.socket.fileno()
        self.out = bytearray()
        self.limit = limit
        #: Output already pending past this when more arrives: the peer does not read,
        #: and is dropped rather than buffered for. (Checked before appending, so one
        #: large reply to a peer that reads is never the reason.)
        self.hard_limit = hard_limit if hard_limit is not None else limit * 4
        self._wake = trio.Event()
        self._write_scope: trio.CancelScope | None = None
        self._holds: deque[Hold] = deque()
        self.closing = False
        self.broken = False
        #: The connection task has finished with this peer.
        self.closed = False
        self.paused = False
        self.cid = 0
        self.conn: Conn | None = None
        self.parser: Parser | None = None
        #: Called when a paused peer's output has drained below ``limit``.
        self.on_drained: Callable[[PeerConnection], None] | None = None
        #: The server's list of peers with unflushed output (shared by all peers).
        self.dirty = dirty

    def deliver(self, data: bytes) -> None:
        if self.broken:
            return
        if self._holds:
            held = self._holds[-1].buffered
            if len(held) > self.hard_limit:
                log.warning("connection %d: %d bytes held behind a store commit; dropping",
                            self.cid, len(held))
                self.drop()
                return
            held += data
            return
        out = self.out
        if not out:
            self.dirty.append(self)
        elif len(out) > self.hard_limit:
            log.warning("connection %d: peer does not read (%d bytes pending); dropping",
                        self.cid, len(out))
            self.drop()
            return
        out += data

    def drop(self) -> None:
        """Give up on this peer now: discard its output, end its writer (even one blocked
        waiting for the socket), which ends the connection."""
        self.closing = True
        self.broken = True
        self.out.clear()
        self._wake.set()
        if self._write_scope is not None:
            self._write_scope.cancel()

    def hold(self) -> Hold:
        """Reserve the next place in the output; later deliveries wait behind it."""
        hold = Hold()
        self._holds.append(hold)
        return hold

    def release(self, hold: Hold, reply: bytes) -> None:
        """Fill a reserved place; pass on everything no earlier hold still blocks."""
        hold.reply = reply
        hold.done = True
        holds = self._holds
        while holds and holds[0].done:
            first = holds.popleft()
            if not self.out:
                self.dirty.append(self)
            self.out += first.reply
            self.out += first.buffered

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
        if written == len(out):
            out.clear()
        else:
            del out[:written]
            self._wake.set()
        self._check_drained()

    def _check_drained(self) -> None:
        if self.paused and len(self.out) <= self.limit and self.on_drained is not None:
            self.on_drained(self)

    async def writer(self) -> None:
        """Finish writes the kernel could not take at once; end when closing or broken."""
        out = self.out
        with trio.CancelScope() as self._write_scope:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                while out and not self.broken:
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
                    self._check_drained()
                if self.broken or self.closing:
                    return

    def close_when_flushed(self) -> None:
        """Stop reading: let the writer send what is buffered, then end."""
        self.closing = True
        self._wake.set()


class Server:
    """gearmand: ``await Server(config).serve()`` until ``shutdown()``."""

    def __init__(self, config: ServerConfig, *, store: Any = None) -> None:
        self.config = config
        self.manager = Manager(
            handle_prefix=config.job_handle_prefix,
            job_retries=config.job_retries,
            worker_wakeup=config.worker_wakeup,
            exceptions=config.exceptions,
        )
        self.addresses: list[tuple[str, int]] = []
        #: Where the HTTP front-end listens (``-r http``), once serving.
        self.http_addresses: list[tuple[str, int]] = []
        self._shutdown = trio.Event()
        self._graceful = False
        self._accepting: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._timer_wake = trio.Event()
        self._timer_target = math.inf
        self._peers: dict[int, PeerConnection] = {}
        #: Peers with output not yet written; flushed once per batch of events.
        self._dirty: list[PeerConnection] = []
        #: Every connection's fd, for the reactor task (level-triggered EPOLLIN).
        self._epoll = select.epoll()
        self._reactor_scope = trio.CancelScope()
        self._readers: dict[int, PeerConnection] = {}
        self._debug = log.isEnabledFor(logging.DEBUG)
        self._flush_wake = trio.Event()
        self._flush_scheduled = False
        self._store_writer: Any = None
        self._store_prefix = ""
        self._store_seq = 0
        self._store_on_shutdown = False
        self._store_done = trio.Event()
        if store is not None:
            self.attach_store(store)
        self.admin = AdminContext(
            manager=self.manager,
            version=config.version,
            verbose=config.verbose,
            pid=os.getpid(),
            shutdown=self.shutdown,
            admin_from_anywhere=config.admin_from_anywhere,
        )

    # ------------------------------------------------------------------ lifecycle

    def shutdown(self, graceful: bool = False) -> None:
        """Ask the server to stop; graceful lets running work finish within a bound."""
        self._graceful = self._graceful or graceful
        if self._accepting is not None:
            self._accepting.cancel()
        self._shutdown.set()

    async def serve(self, *, task_status: trio.TaskStatus[list[tuple[str, int]]]
                    = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, replay the store, report the bound addresses, serve until shutdown."""
        config = self.config
        if config.queue_type.lower() != "builtin" and self._store_writer is None:
            self._open_store()
        listeners, self.addresses = await self.bind(config.port)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._store_writer is not None:
                    await self._replay()
                    await nursery.start(self._run_store_writer)
                nursery.start_soon(self._timer)
                nursery.start_soon(self._flusher)
                nursery.start_soon(self._run_reactor)
                with trio.CancelScope() as accepting:
                    self._accepting = accepting
                    if self._shutdown.is_set():
                        accepting.cancel()
                    async with trio.open_nursery() as accept_nursery:
                        for listener in listeners:
                            accept_nursery.start_soon(self._accept_loop, listener)
                        if "http" in config.protocols:
                            from . import http
                            # Shielded: started() is a no-op in a cancelled caller.
                            with trio.CancelScope(shield=True):
                                self.http_addresses = await accept_nursery.start(
                                    http.serve_http, self)
                        task_status.started(list(self.addresses))
                        await self._shutdown.wait()
                        accept_nursery.cancel_scope.cancel()
                for listener in listeners:
                    await listener.aclose()
                if self._graceful:
                    await self._drain()
                if self._store_writer is not None:
                    # No more requests from here on: nothing can complete (and ask for
                    # a removal the closing store would miss) after the last snapshot.
                    self._reactor_scope.cancel()
                    await self._close_store()
                nursery.cancel_scope.cancel()
        finally:
            for listener in listeners:
                with trio.CancelScope(shield=True):
                    await listener.aclose()
            self._epoll.close()
            if self._store_writer is not None:
                log.info("store closed")
        log.info("server stopped")

    async def _drain(self) -> None:
        """Graceful shutdown: wait for running and queued foreground work, bounded."""
        manager = self.manager
        with trio.move_on_after(self.config.graceful_timeout) as scope:
            while any(j.worker is not None or (j.clients and j.queued)
                      for j in manager.jobs.values()):
                await trio.sleep(0.05)
        if scope.cancelled_caught:
            log.warning("graceful shutdown: work still running after %.0fs",
                        self.config.graceful_timeout)

    async def _replay(self) -> None:
        writer = self._store_writer
        jobs = await writer.replay()
        now = time.time()
        for stored in jobs:
            job = self.manager.restore(stored.function, stored.unique, stored.data,
                                       Priority(stored.priority), stored.when,
                                       stored.reducer, stored.key, now)
            if self._store_on_shutdown:
                # Emptied after the replay; written again at the next clean stop.
                job.store_key = None
                writer.done(stored.key)
        if jobs:
            log.info("replayed %d background jobs from the store", len(jobs))

    async def _run_store_writer(self, *, task_status: trio.TaskStatus[None]
                                = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._store_writer.run(task_status=task_status)
        finally:
            self._store_done.set()

    async def _close_store(self) -> None:
        """On a clean stop: write what --store-queue-on-shutdown keeps, then let the
        writer commit everything queued and close the store."""
        writer = self._store_writer
        if self._store_on_shutdown:
            from .store import StoredJob

            kept = 0
            for job in self.manager.iter_jobs():
                if not job.background or job.cancelled:
                    continue
                self._store_seq += 1
                writer.add_nowait(StoredJob(
                    key=self._store_prefix + str(self._store_seq),
                    function=job.function.name, unique=job.unique,
                    priority=int(job.priority), data=job.data, when=int(job.when),
                    reducer=job.reducer), lambda error: None)
                kept += 1
            log.info("storing %d background jobs on shutdown", kept)
        writer.close()
        with trio.move_on_after(30):
            await self._store_done.wait()
            return
        log.error("queue store: no answer for 30 s at shutdown; giving up on it "
                  "(jobs not yet committed will not be replayed)")
        writer.abandon()
        with trio.move_on_after(5):
            await self._store_done.wait()

    # ------------------------------------------------------------------ accepting

    async def bind(self, port: int) -> tuple[list[trio.SocketListener], list[tuple[str, int]]]:
        """Listen on ``port`` at every ``-L`` address (all when none); port 0 picks one
        free port shared by every address. Returns the listeners and what they bound."""
        config = self.config
        listeners: list[trio.SocketListener] = []
        hosts: list[str | None] = list(config.listen) or [None]
        try:
            for host in hosts:
                bound = await trio.open_tcp_listeners(port, host=host, backlog=config.backlog)
                listeners.extend(bound)
                if port == 0 and bound:
                    port = bound[0].socket.getsockname()[1]
        except BaseException:
            for listener in listeners:
                with trio.CancelScope(shield=True):
                    await listener.aclose()
            raise
        addresses = [(str(li.socket.getsockname()[0]), int(li.socket.getsockname()[1]))
                     for li in listeners]
        for address in addresses:
            log.debug("listening on %s:%d", *address)
        return listeners, addresses

    async def _accept_loop(
        self, listener: trio.SocketListener,
        handler: Callable[[trio.SocketStream, str], Awaitable[None]] | None = None,
    ) -> None:
        """Accept until cancelled; each connection runs ``handler`` (the Gear protocol by
        default) in the server's nursery, so it outlives the accept loop."""
        nursery = self._nursery
        assert nursery is not None
        handle = handler or self._handle_connection
        sock = listener.socket
        failures = 0
        quiet_until = 0.0
        while True:
            try:
                # The peer's address as accept(2) gives it: asking later (getpeername)
                # fails once the peer has reset, and an unknown address is never trusted.
                raw, peer = await sock.accept()
            except OSError as exc:
                if exc.errno in _ACCEPT_SKIP_ERRNOS:
                    continue
                if exc.errno in _ACCEPT_RETRY_ERRNOS:
                    # Logged once per 10 s with a count, not ten times a second.
                    failures += 1
                    now = time.monotonic()
                    if now >= quiet_until:
                        log.error("accept failed (%s); retrying every 100 ms "
                                  "(%d failures since the last report)", exc, failures)
                        failures = 0
                        quiet_until = now + 10
                    await trio.sleep(0.1)
                    continue
                raise
            stream = trio.SocketStream(raw)
            self._configure(stream)
            nursery.start_soon(handle, stream, _host(peer))

    def _configure(self, stream: trio.SocketStream) -> None:
        sock = stream.socket
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            config = self.config
            if config.keepalive:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                for opt, value in (("TCP_KEEPIDLE", config.keepalive_idle),
                                   ("TCP_KEEPINTVL", config.keepalive_interval),
                                   ("TCP_KEEPCNT", config.keepalive_count)):
                    if value >= 0 and hasattr(socket, opt):
                        sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
        except OSError as exc:  # e.g. the peer already left
            log.debug("setsockopt failed: %s", exc)

    # ------------------------------------------------------------------ connections

    async def _handle_connection(self, stream: trio.SocketStream, address: str) -> None:
        """One connection's life: registered with the reactor for reading, its writer
        task finishing slow writes, and the clean-up when either side ends it."""
        peer = PeerConnection(stream, self.config.max_outgoing_buffer, self._dirty)
        conn = self.manager.connect(peer, address)
        peer.cid = conn.id
        peer.conn = conn
        peer.parser = Parser(max_packet_size=self.config.max_packet_size)
        peer.on_drained = self._resume
        self._peers[conn.id] = peer
        log.info("connection %d: accepted from %s", conn.id, address)
        try:
            self._readers[peer.fd] = peer
            self._epoll.register(peer.fd, select.EPOLLIN)
            await peer.writer()
        except Exception:
            log.exception("connection %d: dropped after an unexpected error", conn.id)
        finally:
            self._stop_reading(peer)
            self._peers.pop(conn.id, None)
            # Never write to this fd again: its number may be reused by a new connection.
            peer.broken = True
            peer.closed = True
            peer.out.clear()
            self.manager.disconnect(conn, time.time())
            self._flush_soon()
            self._poke_timer()
            with trio.CancelScope(shield=True):
                await stream.aclose()
            log.info("connection %d: closed", conn.id)

    def _stop_reading(self, peer: PeerConnection) -> None:
        if self._readers.pop(peer.fd, None) is peer:
            with contextlib.suppress(OSError):
                self._epoll.unregister(peer.fd)

    def _pause(self, peer: PeerConnection) -> None:
        """Stop reading from a peer whose replies pile up (it does not read)."""
        if not peer.paused and self._readers.get(peer.fd) is peer:
            peer.paused = True
            self._epoll.modify(peer.fd, 0)

    def _resume(self, peer: PeerConnection) -> None:
        peer.paused = False
        if self._readers.get(peer.fd) is peer:
            self._epoll.modify(peer.fd, select.EPOLLIN)

    async def _run_reactor(self) -> None:
        with self._reactor_scope:
            await self._reactor()

    async def _reactor(self) -> None:
        """Read every connection from one task: an epoll set holds each connection's fd
        for its whole life, and this task reads whichever are ready, parsing and
        handling every complete event of each read before the next.

        One task instead of a reader task per connection saves, per read, a task
        switch and the two epoll_ctl calls trio makes for each wait (measured with
        bench_server.py: server CPU per job down by a third in round trips).
        """
        epoll = self._epoll
        readers = self._readers
        wait_readable = trio.lowlevel.wait_readable
        read = os.read
        epfd = epoll.fileno()
        while True:
            await wait_readable(epfd)
            now = time.time()
            # Bounded per round, so a flood of ready peers still lets other tasks run.
            for fd, _ in epoll.poll(0, 512):
                peer = readers.get(fd)
                if peer is None:
                    continue
                try:
                    data = read(fd, _RECEIVE_SIZE)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    log.info("connection %d: read failed: %s", peer.cid, exc)
                    self._end(peer)
                    continue
                try:
                    self._receive(peer, data, now)
                except Exception:
                    # A bug must cost one connection, never the server.
                    log.exception("connection %d: dropped after an unexpected error",
                                  peer.cid)
                    peer.drop()
                    self._stop_reading(peer)
            self._flush()
            self._poke_timer()

    def _end(self, peer: PeerConnection) -> None:
        """Stop reading from a peer; its task flushes what is pending and cleans up."""
        self._stop_reading(peer)
        peer.close_when_flushed()

    def _receive(self, peer: PeerConnection, data: bytes, now: float) -> None:
        """Handle every complete event in what a peer sent."""
        parser = peer.parser
        conn = peer.conn
        assert parser is not None and conn is not None
        parser.receive_data(data)
        handle_packet = self.manager.handle_packet
        req = Magic.REQ
        packet_type = Packet
        try:
            while True:
                event = parser.next_event()
                if event is NEED_DATA:
                    break
                if type(event) is packet_type:
                    magic, ptype, args = event
                    if self._debug:
                        log.debug("connection %d: %s", conn.id, event)
                    if magic is req:
                        handle_packet(conn, ptype, args, now)
                    else:
                        peer.deliver(error_packet("INVALID_MAGIC", "Request magic expected"))
                elif isinstance(event, AdminCommand):
                    if self._debug:
                        log.debug("connection %d: admin %r", conn.id, event.line)
                    peer.deliver(handle_admin(self.admin, conn, event))
                elif isinstance(event, ConnectionClosed):
                    self._end(peer)
                    return
        except ProtoError as exc:
            log.warning("connection %d: protocol error: %s", conn.id, exc.text)
            if exc.text.startswith("admin"):
                peer.deliver(admin_text.err(exc.code, exc.text))
            else:
                peer.deliver(error_packet(exc.code, exc.text))
            self._end(peer)
            return
        if peer.closing:
            self._end(peer)
        elif len(peer.out) > peer.limit:
            self._pause(peer)

    def _flush_soon(self) -> None:
        """Flush after every task that is runnable now has run, so that output produced
        for one peer by several connections' batches goes out in one write."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._flush_wake.set()

    async def _flusher(self) -> None:
        while True:
            await self._flush_wake.wait()
            self._flush_wake = trio.Event()
            self._flush_scheduled = False
            self._flush()

    def _flush(self) -> None:
        """Write out every peer that was delivered to since the last flush."""
        dirty = self._dirty
        while dirty:
            batch = dirty[:]
            dirty.clear()
            for peer in batch:
                peer.flush()

    # ------------------------------------------------------------------ time

    def _poke_timer(self) -> None:
        deadline = self.manager.next_deadline()
        if deadline is not None and deadline < self._timer_target:
            self._timer_wake.set()

    async def _timer(self) -> None:
        manager = self.manager
        while True:
            deadline = manager.next_deadline()
            self._timer_target = deadline if deadline is not None else math.inf
            self._timer_wake = trio.Event()
            if deadline is None:
                await self._timer_wake.wait()
                continue
            delay = deadline - time.time()
            if delay > 0:
                with trio.move_on_after(delay):
                    await self._timer_wake.wait()
                    continue
            manager.tick(time.time())
            self._flush_soon()

    # ------------------------------------------------------------------ persistence

    def _open_store(self) -> None:
        # Imported here: the builtin (memory) queue needs none of the store modules.
        from .store import open_store
        from .store.writer import StoreWriter

        options = dict(self.config.queue_options)
        store = open_store(self.config.queue_type, options)
        if store is None:
            return
        log.debug("queue: %s", self.config.queue_type)
        writer = StoreWriter(store)
        flag = options.get("store-queue-on-shutdown", "").lower()
        if flag not in ("", "0", "false", "no", "off"):
            # The reference's experimental mode (spec §5): nothing is written while the
            # server runs; a clean stop writes every background job left, and the next
            # start replays them and empties the store. A crash loses them.
            self._store_writer = writer
            self._store_on_shutdown = True
            self._store_prefix = f"{time.time_ns():x}.{os.getpid()}."
        else:
            self.attach_store(writer)

    def attach_store(self, writer: Any) -> None:
        """Persist background jobs through ``writer`` (add / done / replay)."""
        self._store_writer = writer
        self._store_prefix = f"{time.time_ns():x}.{os.getpid()}."
        self._store_seq = 0
        self.manager.on_store = self._store_job
        self.manager.on_done = self._forget_stored

    def _store_job(self, job: Job, conn: Conn) -> None:
        from .store import StoredJob

        peer = self._peers.get(conn.id)
        hold = peer.hold() if peer is not None else None
        self._store_seq += 1
        key = job.store_key = self._store_prefix + str(self._store_seq)
        stored = StoredJob(key=key, function=job.function.name, unique=job.unique,
                           priority=int(job.priority), data=job.data, when=int(job.when),
                           reducer=job.reducer)

        def committed(error: Exception | None) -> None:
            if error is not None:
                log.error("store: could not persist job %s: %s",
                          job.handle.decode("latin-1"), error)
            reply = self.manager.job_stored(job, error is None, time.time())
            if peer is not None and hold is not None:
                peer.release(hold, reply)
            elif not conn.closed:  # a peer of another front-end (HTTP)
                conn.peer.deliver(reply)
            self._flush_soon()
            self._poke_timer()  # an epoch job just queued may be the next deadline

        # In submit order: the store replays in the order it was given the jobs.
        self._store_writer.add_nowait(stored, committed)

    def _forget_stored(self, job: Job) -> None:
        if job.store_key is not None:
            self._store_writer.done(job.store_key)


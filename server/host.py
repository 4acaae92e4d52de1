"""What a front-end needs of the server, and the listening every front-end shares.

A front-end (Gear, HTTP, memcached) is a codec plus a translator onto ``Manager`` calls.
It gets a ``Host`` and nothing else of the server: no private attributes, no import of
``server.app`` (which imports the front-ends). This module is a leaf for them.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import trio

from protocol import PacketType

from .admin import AdminContext
from .config import ServerConfig
from .manager import Conn, Manager
from .tls import MemoryTls, TlsStream, adopt, over_tls

log = logging.getLogger(__name__)

Address = tuple[str, int]
#: What a front-end reads and writes: a TCP stream, or (``--ssl``) a TLS stream over one
#: whose handshake is done (``MemoryTls``: the Gear reactor's, read and written by it).
#: All have ``socket``.
Stream = trio.SocketStream | TlsStream | MemoryTls
#: A connection's handler: the stream, and the peer's address and port as accept(2) gave
#: them ("-" and 0 when there were none).
Handler = Callable[[Stream, str, int], Awaitable[None]]
#: What an accept loop runs for each connection: the TCP stream, address and port.
AcceptHandler = Callable[[trio.SocketStream, str, int], Awaitable[None]]

#: Accept errors that mean "out of resources": wait and retry instead of dying.
_ACCEPT_RETRY_ERRNOS: Final = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
#: Accept errors about one connection that was gone before it was accepted: skip it.
_ACCEPT_SKIP_ERRNOS: Final = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}
#: Connections accepted per wake-up of an accept loop at most.
_ACCEPT_BATCH: Final = 64


class Host(Protocol):
    """The server as its front-ends see it."""

    @property
    def config(self) -> ServerConfig: ...

    @property
    def manager(self) -> Manager: ...

    @property
    def admin(self) -> AdminContext: ...

    @property
    def tls_context(self) -> ssl.SSLContext | None:
        """``--ssl``: the server's TLS context (every listener speaks TLS); else None."""

    def changed(self) -> None:
        """Something outside a front-end's own read batch changed the core (a submit
        from an HTTP task, say): flush every front-end's output soon, re-arm the timer."""

    def deadlines_changed(self) -> None:
        """The core's next deadline may be sooner: re-arm the timer (after a batch whose
        output the front-end has flushed itself)."""

    def spawn(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        """Run a task in the server's nursery: it outlives the accept loops, so a
        graceful shutdown lets connections finish."""


class FrontEnd(Protocol):
    """One protocol the server speaks on its own listeners."""

    #: For logs and ``-r`` (``gear``, ``http``, ``memcached``).
    name: str

    async def serve(self, *, task_status: trio.TaskStatus[list[Address]]
                    = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report the bound addresses, accept until cancelled."""

    def flush(self) -> None:
        """Write output the core produced outside this front-end's read batches."""

    def stop_reading(self) -> None:
        """Take no more requests (the server is about to write its last snapshot)."""


async def bind(config: ServerConfig, port: int) -> tuple[list[trio.SocketListener],
                                                         list[Address]]:
    """Listen on ``port`` at every ``-L`` address (all when none); port 0 picks one free
    port shared by every address. Returns the listeners and what they bound."""
    listeners: list[trio.SocketListener] = []
    hosts: list[str | None] = list(config.listen) or [None]
    try:
        for host in hosts:
            bound = await trio.open_tcp_listeners(port, host=host, backlog=config.backlog)
            listeners.extend(bound)
            if port == 0 and bound:
                port = bound[0].socket.getsockname()[1]
    except BaseException:
        await close_all(listeners)
        raise
    addresses = [(str(li.socket.getsockname()[0]), int(li.socket.getsockname()[1]))
                 for li in listeners]
    return listeners, addresses


async def close_all(listeners: list[trio.SocketListener]) -> None:
    for listener in listeners:
        with trio.CancelScope(shield=True):
            await listener.aclose()


def peer_host(peer: object) -> str:
    """The host part of an address accept(2) returned; "-" when there is none."""
    if isinstance(peer, tuple) and peer and isinstance(peer[0], str) and peer[0]:
        return peer[0]
    return "-"


def peer_port(peer: object) -> int:
    """The port of an address accept(2) returned; 0 when there is none."""
    if isinstance(peer, tuple) and len(peer) > 1 and isinstance(peer[1], int):
        return peer[1]
    return 0


def configure(config: ServerConfig, sock: trio.socket.SocketType) -> None:
    """Keep-alive as configured (trio's SocketStream sets TCP_NODELAY itself)."""
    try:
        if config.keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for opt, value in (("TCP_KEEPIDLE", config.keepalive_idle),
                               ("TCP_KEEPINTVL", config.keepalive_interval),
                               ("TCP_KEEPCNT", config.keepalive_count)):
                if value >= 0 and hasattr(socket, opt):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
    except OSError as exc:  # e.g. the peer already left
        log.debug("setsockopt failed: %s", exc)


async def accept_loop(host: Host, listener: trio.SocketListener,
                      handler: AcceptHandler) -> None:
    """Accept until cancelled; each connection runs ``handler(stream, address, port)`` via
    ``host.spawn``. The address is the one accept(2) returned: asking later
    (getpeername) fails once the peer has reset, and an unknown address is never trusted.

    Every connection waiting is accepted in one go when the listener becomes readable
    (up to ``_ACCEPT_BATCH``), so a burst of connects drains the kernel's backlog at
    once instead of overflowing it (a dropped SYN costs the client a 1 s retransmit).
    Running out of descriptors is logged once per 10 s with a count, and retried."""
    fd = listener.socket.fileno()
    # The same listening socket as a plain one (a dup of its descriptor), for
    # non-blocking accepts in a loop without a trio checkpoint per connection.
    with socket.socket(fileno=os.dup(fd)) as sock:
        sock.setblocking(False)
        failures = 0
        quiet_until = 0.0
        while True:
            await trio.lowlevel.wait_readable(fd)
            for _ in range(_ACCEPT_BATCH):
                try:
                    raw, peer = sock.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in _ACCEPT_SKIP_ERRNOS:
                        continue
                    if exc.errno not in _ACCEPT_RETRY_ERRNOS:
                        raise
                    failures += 1
                    now = trio.current_time()
                    if now >= quiet_until:
                        log.error("accept failed (%s); retrying every 100 ms "
                                  "(%d failures since the last report)", exc, failures)
                        failures = 0
                        quiet_until = now + 10
                    await trio.sleep(0.1)
                    break
                raw.setblocking(False)
                stream_socket = trio.socket.from_stdlib_socket(raw)
                configure(host.config, stream_socket)
                host.spawn(handler, trio.SocketStream(stream_socket), peer_host(peer),
                           peer_port(peer))


async def serve_listeners(host: Host, listeners: list[trio.SocketListener],
                          handler: Handler, name: str = "gear",
                          tls_accept: AcceptHandler | None = None) -> None:
    """One accept loop per listener until cancelled; the listeners are closed after.
    With ``--ssl`` each connection is handed to ``handler`` only after its TLS handshake
    (server/tls.py); one that fails it is closed and logged under ``name``. A front-end
    that makes the handshake itself gives ``tls_accept``, used instead under ``--ssl``."""
    accept: AcceptHandler = handler
    context = host.tls_context
    tls = host.config.tls
    if tls is not None:
        if context is None:  # fail closed: never plaintext on a port meant for TLS
            raise RuntimeError("--ssl is set but the host has no TLS context")
        accept = tls_accept or over_tls(handler, context, tls.handshake_timeout, name)
    try:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(accept_loop, host, listener, accept)
    finally:
        await close_all(listeners)


class TaskConnection(Protocol):
    """One connection of a ``TaskFrontEnd``: it runs in its own task and writes its own
    answers; the core reaches it through ``peer``."""

    @property
    def peer(self) -> PacketPeer: ...

    @property
    def conn(self) -> Conn: ...

    async def run(self) -> None: ...


class TaskFrontEnd:
    """The listening and stopping of a front-end whose connections each run in a task
    (HTTP, memcached); subclasses say how to ``open`` one connection."""

    name = "tasks"

    def __init__(self, host: Host, port: int) -> None:
        self.host = host
        self.port = port
        self.addresses: list[Address] = []
        self._connections: set[TaskConnection] = set()
        self._stopped = False

    def open(self, stream: Stream, address: str, port: int) -> TaskConnection:
        raise NotImplementedError

    async def serve(self, *, task_status: trio.TaskStatus[list[Address]]
                    = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, report the addresses, accept until cancelled. Connections run in the
        server's nursery, so they outlive the accept loop during a graceful shutdown."""
        listeners, self.addresses = await bind(self.host.config, self.port)
        for address in self.addresses:
            log.info("%s: listening on %s:%d", self.name, *address)
        task_status.started(list(self.addresses))
        await serve_listeners(self.host, listeners, self._connection, self.name)

    def flush(self) -> None:
        """Nothing to do: each connection's task writes its own answers."""

    def stop_reading(self) -> None:
        self._stopped = True
        for connection in list(self._connections):
            connection.peer.scope.cancel()

    async def _connection(self, stream: Stream, address: str, port: int) -> None:
        connection = self.open(stream, address, port)
        log.info("connection %d: %s accepted from %s%s", connection.conn.id, self.name,
                 connection.conn.remote, adopt(connection.conn, stream))
        if self._stopped:
            connection.peer.scope.cancel()
        self._connections.add(connection)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)


class PacketPeer:
    """A ``Peer`` for front-ends with a task per connection (HTTP, memcached): the core's
    packets are queued as they are, and that task takes them with ``next_packet``.

    Never blocks. Past ``limit`` bytes of payload not yet taken, the peer overflows:
    ``scope`` (the connection task's) is cancelled and the connection is dropped.
    """

    __slots__ = ("_holds", "_packets", "_wake", "cid", "limit", "overflowed", "pending",
                 "scope")

    def __init__(self, limit: int) -> None:
        self.cid = 0
        self.limit = limit
        self.pending = 0
        self.overflowed = False
        self._packets: deque[tuple[PacketType, tuple[bytes, ...]]] = deque()
        self._holds: deque[_PacketHold] = deque()
        self._wake = trio.Event()
        #: The connection task's scope, cancelled on overflow.
        self.scope = trio.CancelScope()

    def deliver(self, ptype: PacketType, *args: bytes) -> None:
        if self.overflowed:
            return
        if self._holds:
            self._holds[-1].after.append((ptype, args))
            return
        self._push(ptype, args)

    def _push(self, ptype: PacketType, args: tuple[bytes, ...]) -> None:
        self.pending += sum(map(len, args))
        if self.pending > self.limit:
            log.warning("connection %d: client does not read (%d bytes pending); dropping",
                        self.cid, self.pending)
            self.overflowed = True
            self._packets.clear()
            self._wake.set()
            self.scope.cancel()
            return
        self._packets.append((ptype, args))
        self._wake.set()

    def hold(self) -> _PacketHold:
        hold = _PacketHold()
        self._holds.append(hold)
        return hold

    def release(self, hold: object, ptype: PacketType, *args: bytes) -> None:
        assert isinstance(hold, _PacketHold)
        hold.reply = (ptype, args)
        holds = self._holds
        while holds and holds[0].reply is not None:
            first = holds.popleft()
            assert first.reply is not None
            self._push(*first.reply)
            for packet in first.after:
                self._push(*packet)

    async def next_packet(self) -> tuple[PacketType, tuple[bytes, ...]]:
        """The next packet the core sent; ``trio.Cancelled`` via ``scope`` on overflow."""
        while not self._packets:
            if self.overflowed:
                raise OverflowError("too much output pending")
            await self._wake.wait()
            self._wake = trio.Event()
        ptype, args = self._packets.popleft()
        self.pending -= sum(map(len, args))
        return ptype, args


class _PacketHold:
    __slots__ = ("after", "reply")

    def __init__(self) -> None:
        self.reply: tuple[PacketType, tuple[bytes, ...]] | None = None
        self.after: list[tuple[PacketType, tuple[bytes, ...]]] = []

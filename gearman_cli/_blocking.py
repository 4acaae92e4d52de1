"""The blocking ``Client``: plain sockets and ``select`` around the sans-IO ``ConnCore``.
No trio: it starts fast, and it works inside programs that run another event loop.

Hello world (the tutorial's ``reverse``)::

    from gearman_cli import Client

    client = Client("127.0.0.1:4730")          # or GEARMAN_SERVERS, else localhost:4730
    print(client.do("reverse", b"Hello"))       # b'olleH'

Application data rides along with a task and comes back in every callback::

    client.add_task("resize", image_bytes, app_data={"path": path})
    client.run_tasks(on_complete=lambda t: save(t.app_data["path"], t.result))

A failing worker surfaces as an exception (``WORK_FAIL`` -> ``JobFailedError``,
``WORK_EXCEPTION`` -> ``JobExceptionError`` with the worker's text in ``.data``)::

    try:
        client.do("always_fails", b"x")
    except JobFailedError as exc:
        print("failed:", exc)

Each call opens its connections and closes them before it returns; server health
(back-off) is kept between calls. Ctrl-C raises a plain ``KeyboardInterrupt``.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from protocol import Packet, PacketType, Priority, encode_req

from ._admin_core import JobResult
from ._client_core import ConnCore, give_up_after
from ._errors import ConnectionLostError, GearmanError, NoServerError
from ._log import get_logger
from ._servers import ServerAddress, ServerPool, ServerSpec, to_addresses, why
from ._sync import Lost, SyncConnection
from ._task import (
    BatchSlot,
    Bytesish,
    JobStatus,
    Reply,
    Task,
    TaskCallback,
    TaskCallbacks,
    TaskQueue,
    TaskState,
    status_from,
    to_bytes,
)

logger = get_logger("gearman_cli.client")

if TYPE_CHECKING:
    from ._task import When
    from ._tls import SslArg

__all__ = ["CONNECT_TIMEOUT", "Client", "IdleTimeout"]

#: Default time allowed for a TCP connect, in seconds.
CONNECT_TIMEOUT = 5.0


class IdleTimeout(GearmanError):
    """Nothing arrived for the ``idle_timeout`` given to a call."""


class _Conn:
    __slots__ = ("sock", "core")

    def __init__(self, sock: SyncConnection) -> None:
        self.sock = sock
        self.core = ConnCore(sock.address, sock.id, sock.send, sock.close)


class Client(TaskQueue):
    """A blocking Gearman client for plain scripts (no trio, no event loop).

    ``servers`` is a comma list (``"10.0.0.1,10.0.0.2:7003"``), an address, or a list of
    them; ``None`` uses ``add_server`` calls or else ``GEARMAN_SERVERS`` (else
    ``localhost:4730``, read once). With ``exceptions=True`` every connection sends
    ``OPTION_REQ exceptions`` so WORK_EXCEPTION reaches us.
    ``ssl``: an ``ssl.SSLContext`` (see ``tls_context``), True, False, or None (TLS when
    the ``GEARMAN_SSL*`` variables ask for it); the server's certificate and host name are
    always verified (docs/security.md).
    """

    def __init__(
        self,
        servers: ServerSpec | Iterable[ServerSpec] | None = None,
        *,
        exceptions: bool = True,
        connect_timeout: float = CONNECT_TIMEOUT,
        client_id: str | bytes | None = None,
        ssl: SslArg = None,
    ) -> None:
        from ._tls import resolve

        self._tls = resolve(ssl)
        self._pool = ServerPool()
        if servers is not None:
            for address in to_addresses(servers):
                self._pool.add(address)
        self._exceptions = exceptions
        self._connect_timeout = connect_timeout
        self._client_id = to_bytes(client_id) if client_id is not None else None
        self._queued: list[Task] = []
        self._conns: dict[ServerAddress, _Conn] = {}
        self._why: dict[ServerAddress, str] = {}

    def add_server(self, host: str, port: int = 4730) -> None:
        """Add one server to the list."""
        self._pool.add(ServerAddress(host, port))

    def add_servers(self, servers: str) -> None:
        """Add servers from a comma list such as ``"10.0.0.1,10.0.0.2:7003"``."""
        for address in to_addresses(servers):
            self._pool.add(address)

    @property
    def servers(self) -> list[ServerAddress]:
        return self._pool.servers

    # -- connections --

    def _connect(self, server: ServerAddress) -> _Conn:
        conn = self._conns.get(server)
        if conn is not None and not conn.sock.closed:
            return conn
        try:
            sock = SyncConnection(server, self._connect_timeout, self._tls)
        except OSError:
            self._pool.mark_down(server)
            raise
        conn = self._conns[server] = _Conn(sock)
        self._pool.mark_up(server)
        conn.core.hello(self._client_id, self._exceptions)
        return conn

    def _route(
        self, key: bytes, failed: set[ServerAddress], order: list[ServerAddress] | None = None
    ) -> _Conn:
        tried: list[str] = []
        for server in order if order is not None else self._pool.order(key):
            if server in failed:
                tried.append(f"{server}: {self._why.get(server, 'failed before')}")
                continue
            try:
                return self._connect(server)
            except OSError as exc:
                logger.info("cannot use %s: %s", server, exc)
                failed.add(server)
                self._why[server] = why(exc)
                tried.append(f"{server}: {self._why[server]}")
        raise NoServerError(f"no server reachable ({'; '.join(tried) or 'no server given'})")

    def _close_all(self) -> None:
        for conn in self._conns.values():
            conn.sock.close()
        self._conns.clear()

    def _lost(self, conn: _Conn, reason: str) -> None:
        address = conn.sock.address
        conn.sock.close(reason)
        if self._conns.get(address) is conn:
            del self._conns[address]
        logger.warning("conn %d to %s lost: %s", conn.sock.id, address, reason)
        self._pool.mark_down(address)
        self._why[address] = reason
        orphans, batches = conn.core.lost()
        failed = {address}
        for slot in batches:
            self._submit_batch(slot, failed)
        for task in orphans:
            task._reset()
            self._submit(task, failed)

    # -- the loop --

    def _pump(self, until: Callable[[], bool], idle_timeout: float | None = None) -> None:
        """Send and receive until ``until()``; ``IdleTimeout`` after ``idle_timeout``
        seconds with nothing received; returns early when no connection is left."""
        while not until():
            conns = [c for c in self._conns.values() if not c.sock.closed]
            if not conns:
                return
            writers = [c.sock for c in conns if c.sock.out]
            readable, writable, _ = select.select(
                [c.sock for c in conns], writers, [], idle_timeout
            )
            if not readable and not writable:
                raise IdleTimeout(f"nothing from the server for {idle_timeout:g}s")
            by_sock = {c.sock: c for c in conns}
            for sock in writable:
                try:
                    sock.flush()
                except Lost as exc:
                    self._lost(by_sock[sock], str(exc))
            for sock in readable:
                conn = by_sock[sock]
                if sock.closed:
                    continue
                try:
                    packets = sock.receive()
                except Lost as exc:
                    self._lost(conn, str(exc))
                    continue
                for packet in packets:
                    conn.core.on_packet(packet)
                    if sock.closed:
                        self._lost(conn, sock.reason)
                        break

    # -- submitting --

    def _submit(self, task: Task, failed: set[ServerAddress] | None = None) -> None:
        task._attempts += 1
        try:
            if task._attempts > give_up_after(len(self._pool.servers)):
                raise NoServerError(f"gave up on {task!r} after {task._attempts - 1} attempts")
            conn = self._route(task.unique, failed if failed is not None else set())
        except NoServerError as exc:
            task._fail_with(exc)
            return
        conn.core.submit(task)

    def _submit_batch(self, slot: BatchSlot, failed: set[ServerAddress]) -> None:
        batch = slot.batch
        batch._attempts += 1
        try:
            if batch._attempts > give_up_after(len(self._pool.servers)):
                raise NoServerError(f"gave up on {batch!r} after {batch._attempts - 1} attempts")
            conn = self._route(batch.unique, failed)
        except NoServerError as exc:
            batch._fail_rest(slot.next, slot.end, exc)
            return
        conn.core.submit_batch(batch, slot.next, slot.end)

    def _run(self, tasks: list[Task], idle_timeout: float | None = None) -> list[Task]:
        """Submit ``tasks`` (status tasks are asked in turn) and wait for all of them."""
        try:
            failed: set[ServerAddress] = set()
            for task in tasks:
                if not task.done and task.status_handle is None:
                    self._submit(task, failed)
            for task in tasks:
                if task.status_handle is not None and not task.done:
                    self._status_task(task)
            self._pump(lambda: all(t.done for t in tasks), idle_timeout)
            for task in tasks:
                if not task.done:  # every connection ended and nothing could take it
                    task._fail_with(NoServerError("no server left for the task"))
            return tasks
        finally:
            self._close_all()

    def _status_task(self, task: Task) -> None:
        assert task.status_handle is not None
        try:
            status = self._poll_status(
                encode_req(PacketType.GET_STATUS, task.status_handle), self._pool.order(),
                unique=False, close=False)
        except GearmanError as exc:
            task._fail_with(exc)
            return
        task.known, task.running = status.known, status.running
        task.numerator, task.denominator = status.numerator, status.denominator
        task._callback("on_status")
        task._finish(TaskState.COMPLETE, None)

    # -- the calls --

    def run_tasks(
        self,
        tasks: Iterable[Task] | None = None,
        *,
        on_created: TaskCallback | None = None,
        on_data: TaskCallback | None = None,
        on_warning: TaskCallback | None = None,
        on_status: TaskCallback | None = None,
        on_complete: TaskCallback | None = None,
        on_fail: TaskCallback | None = None,
        on_exception: TaskCallback | None = None,
    ) -> list[Task]:
        """Submit ``tasks`` (default: every queued ``add_task*``), pipelined, and return
        when every one is done. Callbacks given here apply to tasks that have none.

        Failed tasks do not raise: look at each task's ``state`` (or call ``outcome()``).
        """
        todo = list(tasks) if tasks is not None else self._queued
        if tasks is None:
            self._queued = []
        callbacks = TaskCallbacks(
            on_created, on_data, on_warning, on_status, on_complete, on_fail, on_exception
        )
        for task in todo:
            if task.callbacks is None:
                task.callbacks = callbacks
        return self._run(todo)

    def _one(self, task: Task) -> bytes:
        self._run([task])
        return task.outcome()

    def do(
        self, function: str | bytes, data: Bytesish = b"", *, unique: str | bytes | None = None
    ) -> bytes:
        """Run a job at NORMAL priority and return its result.

        Raises ``JobFailedError`` (WORK_FAIL), ``JobExceptionError`` (WORK_EXCEPTION),
        ``NoServerError`` or ``ServerError``.
        """
        return self._one(Task(function, data, unique=unique))

    def do_high(
        self, function: str | bytes, data: Bytesish = b"", *, unique: str | bytes | None = None
    ) -> bytes:
        """``do`` at HIGH priority."""
        return self._one(Task(function, data, unique=unique, priority=Priority.HIGH))

    def do_low(
        self, function: str | bytes, data: Bytesish = b"", *, unique: str | bytes | None = None
    ) -> bytes:
        """``do`` at LOW priority."""
        return self._one(Task(function, data, unique=unique, priority=Priority.LOW))

    def do_background(
        self,
        function: str | bytes,
        data: Bytesish = b"",
        *,
        unique: str | bytes | None = None,
        when: When | None = None,
    ) -> bytes:
        """Queue a background job and return its handle. ``when`` (Unix time or datetime)
        sends SUBMIT_JOB_EPOCH: the server holds the job until then."""
        return self._one(Task(function, data, unique=unique, background=True, when=when))

    def do_high_background(
        self, function: str | bytes, data: Bytesish = b"", *, unique: str | bytes | None = None
    ) -> bytes:
        """``do_background`` at HIGH priority."""
        return self._one(
            Task(function, data, unique=unique, priority=Priority.HIGH, background=True))

    def do_low_background(
        self, function: str | bytes, data: Bytesish = b"", *, unique: str | bytes | None = None
    ) -> bytes:
        """``do_background`` at LOW priority."""
        return self._one(
            Task(function, data, unique=unique, priority=Priority.LOW, background=True))

    def _ask(self, server: ServerAddress, request: bytes) -> Packet:
        conn = self._connect(server)
        reply: Reply = conn.core.ask(request)
        self._pump(lambda: reply.done)
        if not reply.done:
            raise ConnectionLostError(f"connection to {server} lost")
        return reply.result()

    def _poll_status(
        self, request: bytes, servers: list[ServerAddress], *, unique: bool, close: bool = True
    ) -> JobStatus:
        answer: JobStatus | None = None
        try:
            for server in servers:
                try:
                    packet = self._ask(server, request)
                except (OSError, ConnectionLostError) as exc:
                    logger.info("status from %s failed: %s", server, exc)
                    continue
                answer = status_from(packet, unique)
                if answer.known:
                    return answer
        finally:
            if close:
                self._close_all()
        if answer is None:
            raise NoServerError("no server reachable for a status request")
        return answer

    def job_status(
        self, handle: str | bytes | Task, *, server: ServerAddress | None = None
    ) -> JobStatus:
        """GET_STATUS for a handle (or a Task). Handles are opaque, so without a known
        server every reachable server is asked until one knows the job."""
        if isinstance(handle, Task):
            server = server or handle.server
            if handle.handle is None:
                raise ValueError("the task has no handle yet")
            handle = handle.handle
        request = encode_req(PacketType.GET_STATUS, to_bytes(handle))
        servers = [server] if server is not None else self._pool.order()
        return self._poll_status(request, servers, unique=False)

    def job_status_unique(self, unique: str | bytes) -> JobStatus:
        """GET_STATUS_UNIQUE: status of the job with this unique key (any function)."""
        key = to_bytes(unique)
        request = encode_req(PacketType.GET_STATUS_UNIQUE, key)
        return self._poll_status(request, self._pool.order(key), unique=True)

    def result(self, handle: str | bytes | Task, *, unique: str | bytes | None = None,
               server: ServerAddress | None = None) -> JobResult:
        """A background job's state and result, from our gearmand's result cache
        (``--result-ttl``), by handle (or a Task), or by function and unique key
        (``result(FUNCTION, unique=KEY)``). Each server is asked in turn until one knows
        the job; ``state`` is ``unknown`` when none does (or the result expired)."""
        from ._admin_sync import Admin

        if isinstance(handle, Task):
            server = server or handle.server
            if handle.handle is None:
                raise ValueError("the task has no handle yet")
            handle = handle.handle
        answer: JobResult | None = None
        for address in [server] if server is not None else self._pool.order():
            try:
                with Admin(address, connect_timeout=self._connect_timeout,
                           timeout=10.0, ssl=self._tls or False) as admin:
                    answer = (admin.result(function=handle, unique=unique)
                              if unique is not None else admin.result(handle))
            except (OSError, ConnectionLostError) as exc:
                logger.info("result from %s failed: %s", address, exc)
                continue
            if answer.state != "unknown":
                return answer
        if answer is None:
            raise NoServerError("no server reachable for a result request")
        return answer

    def echo(self, data: Bytesish = b"", *, server: ServerAddress | None = None) -> bytes:
        """ECHO_REQ to a server (the first reachable one by default); returns the echo."""
        request = encode_req(PacketType.ECHO_REQ, to_bytes(data))
        try:
            for address in [server] if server is not None else self._pool.order():
                try:
                    return self._ask(address, request).args[0]
                except (OSError, ConnectionLostError) as exc:
                    logger.info("echo to %s failed: %s", address, exc)
        finally:
            self._close_all()
        raise NoServerError("no server reachable for echo")

    def ping(self, server: ServerAddress | None = None) -> float:
        """Round-trip time of an ECHO to a server, in seconds."""
        start = time.perf_counter()
        self.echo(b"ping", server=server)
        return time.perf_counter() - start

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._close_all()

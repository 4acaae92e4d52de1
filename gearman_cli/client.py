"""The trio Gearman client, ``AsyncClient``: submit jobs one at a time or pipeline many.
Rule: every byte goes through the sans-IO ``protocol`` package, and every packet through
the sans-IO ``ConnCore`` (shared with the blocking ``Client``, which needs no trio).

With trio::

    import trio
    from gearman_cli import AsyncClient

    async def main() -> None:
        async with AsyncClient("127.0.0.1:4730") as client:
            print(await client.do("reverse", b"Hello"))

    trio.run(main)

Concurrent tasks with callbacks (pipelined on the connection, matched by handle)::

    async with AsyncClient() as client:
        for word in (b"one", b"two", b"three"):
            client.add_task("reverse", word)
        tasks = await client.run_tasks(
            on_data=lambda t: print("partial", t.data_chunks[-1]),
            on_complete=lambda t: print(t.data, "->", t.result),
            on_fail=lambda t: print(t.data, "failed"),
        )

Background job, then poll its status::

    handle = await client.do_background("long_job", b"payload")
    status = await client.job_status(handle)

A failing worker surfaces as an exception (``WORK_FAIL`` -> ``JobFailedError``,
``WORK_EXCEPTION`` -> ``JobExceptionError`` with the worker's text in ``.data``).

Several servers: jobs with a ``unique`` key go to the server picked by a consistent hash
of the key (so coalescing works across servers); jobs without one are spread round-robin;
a server that is down is skipped and retried after an exponential back-off, and jobs it
held are resubmitted to another server (WORK_DATA already received is not shown twice).

Cancellation: like any trio code, Ctrl-C reaches the caller of ``trio.run`` as
``KeyboardInterrupt`` (trio may wrap it in a ``BaseExceptionGroup`` when it arrives while
several tasks run; ``except* KeyboardInterrupt`` catches both forms).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

import trio

from protocol import Packet, PacketType, Priority, encode_req

from ._admin_core import JobResult
from ._blocking import Client
from ._client_core import ConnCore, give_up_after
from ._connection import CONNECT_TIMEOUT, Connection, open_stream
from ._tls import resolve as resolve_tls

if TYPE_CHECKING:
    from ._tls import SslArg
from ._errors import ConnectionLostError, GearmanError, NoServerError
from ._servers import ServerAddress, ServerPool, ServerSpec, to_addresses, why
from ._task import (
    BackgroundBatch,
    BatchCallback,
    Bytesish,
    JobStatus,
    Task,
    TaskCallback,
    TaskCallbacks,
    TaskQueue,
    TaskState,
    status_from,
    to_bytes,
)

logger = logging.getLogger(__name__)

__all__ = [
    "AsyncClient",
    "BackgroundBatch",
    "Client",
    "JobStatus",
    "Task",
    "TaskCallback",
    "TaskCallbacks",
    "TaskState",
]

#: Yield to the writer after this many pipelined submissions, so sending overlaps encoding.
_SUBMIT_BATCH = 512


class _ClientConn:
    """A trio connection and its protocol state."""

    __slots__ = ("conn", "core")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.core = ConnCore(conn.address, conn.id, conn.send, self._close)

    def _close(self, reason: str) -> None:
        self.conn.reason = reason
        self.conn.close()


class _Group:
    """Counts the tasks of one ``run_tasks`` call down to zero."""

    __slots__ = ("left", "event")

    def __init__(self, count: int) -> None:
        self.left = count
        self.event = trio.Event()
        if count == 0:
            self.event.set()

    def one_done(self, _task: Task) -> None:
        self.left -= 1
        if self.left <= 0:
            self.event.set()


class AsyncClient(TaskQueue):
    """A trio Gearman client. Use as ``async with AsyncClient(servers) as client:``.

    ``servers`` is a comma list (``"10.0.0.1,10.0.0.2:7003"``), an address, or a list of
    them; ``None`` uses ``add_server`` calls or else ``GEARMAN_SERVERS`` (else
    ``localhost:4730``). With ``exceptions=True`` every connection sends
    ``OPTION_REQ exceptions`` so WORK_EXCEPTION reaches us (§1.3).
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
        pool: ServerPool | None = None,
        ssl: SslArg = None,
    ) -> None:
        self._tls = resolve_tls(ssl)
        self._pool = pool if pool is not None else ServerPool()
        if servers is not None:
            for address in to_addresses(servers):
                self._pool.add(address)
        self._exceptions = exceptions
        self._connect_timeout = connect_timeout
        self._client_id = to_bytes(client_id) if client_id is not None else None
        self._conns: dict[ServerAddress, _ClientConn] = {}
        self._connecting: dict[ServerAddress, trio.Event] = {}
        #: Why the last connect to each server failed, for NoServerError's message.
        self._why: dict[ServerAddress, str] = {}
        self._queued: list[Task] = []
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: Any = None
        self._closing = False

    # -- servers --

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

    # -- lifetime --

    async def __aenter__(self) -> AsyncClient:
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        self._closing = False
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._close_all()  # synchronous: this may run while cancelled
        cm, self._nursery_cm, nursery = self._nursery_cm, None, self._nursery
        self._nursery = None
        assert nursery is not None
        nursery.cancel_scope.cancel()
        # The connection tasks never raise; the body's own exception is not handed to the
        # nursery, so it propagates as itself rather than wrapped in an ExceptionGroup.
        await cm.__aexit__(None, None, None)
        return None

    async def aclose(self) -> None:
        """Close every connection; tasks still in flight are left unfinished."""
        self._close_all()
        await trio.lowlevel.checkpoint()

    def _close_all(self) -> None:
        self._closing = True
        for cc in list(self._conns.values()):
            cc.conn.close()
        self._conns.clear()

    def _require_nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError("use the client as 'async with AsyncClient(...) as client:'")
        return self._nursery

    # -- connections --

    async def _connect(self, server: ServerAddress) -> _ClientConn:
        cc = self._conns.get(server)
        if cc is not None and not cc.conn.closed:
            return cc
        nursery = self._require_nursery()
        waiting = self._connecting.get(server)
        if waiting is not None:
            await waiting.wait()
            cc = self._conns.get(server)
            if cc is not None and not cc.conn.closed:
                return cc
            raise OSError(f"connect to {server} failed")
        event = self._connecting[server] = trio.Event()
        try:
            try:
                stream = await open_stream(server, self._connect_timeout, self._tls)
            except OSError:
                self._pool.mark_down(server)
                raise
            conn = Connection(stream, server)
            cc = _ClientConn(conn)
            self._conns[server] = cc
            self._pool.mark_up(server)
            logger.debug("conn %d: connected to %s", conn.id, server)
            cc.core.hello(self._client_id, self._exceptions)
            nursery.start_soon(self._run_conn, cc)
            return cc
        finally:
            del self._connecting[server]
            event.set()

    async def _run_conn(self, cc: _ClientConn) -> None:
        reason = await cc.conn.run(cc.core.on_packet)
        if self._conns.get(cc.conn.address) is cc:
            del self._conns[cc.conn.address]
        if self._closing:
            return
        logger.warning("conn %d to %s lost: %s", cc.conn.id, cc.conn.address, reason)
        self._pool.mark_down(cc.conn.address)
        orphans, batches = cc.core.lost()
        for slot in batches:
            logger.info(
                "resubmitting %d job(s) of %r from %s",
                slot.end - slot.next, slot.batch, cc.conn.address,
            )
            await self._submit_batch(slot.batch, slot.next, slot.end, {cc.conn.address})
        if orphans:
            logger.info("resubmitting %d task(s) from %s", len(orphans), cc.conn.address)
            failed = {cc.conn.address}
            for i, task in enumerate(orphans):
                task._reset()
                await self._submit(task, failed)
                if i % _SUBMIT_BATCH == _SUBMIT_BATCH - 1:
                    await trio.lowlevel.checkpoint()

    async def _route(
        self,
        key: bytes,
        failed: set[ServerAddress],
        order: list[ServerAddress] | None = None,
    ) -> _ClientConn:
        tried: list[str] = []
        for server in order if order is not None else self._pool.order(key):
            if server in failed:
                tried.append(f"{server}: {self._why.get(server, 'failed before')}")
                continue
            try:
                return await self._connect(server)
            except OSError as exc:
                logger.info("cannot use %s: %s", server, exc)
                failed.add(server)
                self._why[server] = why(exc)
                tried.append(f"{server}: {self._why[server]}")
        raise NoServerError(f"no server reachable ({'; '.join(tried) or 'no server given'})")

    # -- submitting --

    async def _submit(self, task: Task, failed: set[ServerAddress] | None = None) -> None:
        task._attempts += 1
        order = self._pool.order(task.unique)
        cc = self._conns.get(order[0])
        if cc is None or cc.conn.closed or task._attempts > 1 or failed:
            # Not the plain case (first try, the best server connected): route it.
            try:
                if task._attempts > give_up_after(len(self._pool.servers)):
                    raise NoServerError(
                        f"gave up on {task!r} after {task._attempts - 1} attempts"
                    )
                cc = await self._route(
                    task.unique, failed if failed is not None else set(), order
                )
            except NoServerError as exc:
                task._fail_with(exc)
                return
        cc.core.submit(task)

    async def submit(self, task: Task) -> Task:
        """Send one task now (no waiting for the result); ``await task.wait()`` for it.

        If no server is reachable the task ends in ``TaskState.ERROR``.
        """
        if task.status_handle is not None:
            self._require_nursery().start_soon(self._run_status_task, task)
            return task
        await self._submit(task)
        return task

    async def submit_background_batch(
        self,
        function: str | bytes,
        payloads: Iterable[Bytesish],
        *,
        unique: str | bytes | None = None,
        priority: Priority = Priority.NORMAL,
        on_created: BatchCallback | None = None,
    ) -> BackgroundBatch:
        """Queue one background job per payload, all sent at once as one write, and return
        the ``BackgroundBatch`` (``await batch.wait()`` for every answer). Much cheaper per
        job than tasks; ``on_created(batch, index, handle)`` runs per accepted job.

        If no server is reachable the remaining jobs end in ``batch.errors``.
        """
        data = [p if type(p) is bytes else to_bytes(p) for p in payloads]
        batch = BackgroundBatch(
            function, data, unique=unique, priority=priority, on_created=on_created
        )
        await self._submit_batch(batch, 0, len(data), set())
        return batch

    async def _submit_batch(
        self, batch: BackgroundBatch, start: int, end: int, failed: set[ServerAddress]
    ) -> None:
        if start >= end:
            if batch.done:
                batch._wake()
            return
        batch._attempts += 1
        try:
            if batch._attempts > give_up_after(len(self._pool.servers)):
                raise NoServerError(f"gave up on {batch!r} after {batch._attempts - 1} attempts")
            cc = await self._route(batch.unique, failed)
        except NoServerError as exc:
            batch._fail_rest(start, end, exc)
            return
        cc.core.submit_batch(batch, start, end)

    async def _run_status_task(self, task: Task) -> None:
        assert task.status_handle is not None
        try:
            status = await self.job_status(task.status_handle)
        except GearmanError as exc:
            task._fail_with(exc)
            return
        task.known, task.running = status.known, status.running
        task.numerator, task.denominator = status.numerator, status.denominator
        task._callback("on_status")
        task._finish(TaskState.COMPLETE, None)

    async def run_tasks(
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
        group = _Group(len(todo))
        failed: set[ServerAddress] = set()
        nursery = self._require_nursery()
        for i, task in enumerate(todo):
            if task.callbacks is None:
                task.callbacks = callbacks
            task._hooks.append(group.one_done)
            if task.done:
                group.one_done(task)
            elif task.status_handle is not None:
                nursery.start_soon(self._run_status_task, task)
            else:
                await self._submit(task, failed)
                if i % _SUBMIT_BATCH == _SUBMIT_BATCH - 1:
                    await trio.lowlevel.checkpoint()
        await group.event.wait()
        for task in todo:
            task._hooks.remove(group.one_done)
        return todo

    # -- one job at a time --

    async def _do(
        self, function: str | bytes, data: Bytesish, unique: str | bytes | None, prio: Priority
    ) -> bytes:
        task = Task(function, data, unique=unique, priority=prio)
        await self._submit(task)
        return await task.wait()

    async def do(
        self, function: str | bytes, data: Bytesish = b"", *, unique: str | bytes | None = None
    ) -> bytes:
        """Run a job at NORMAL priority and return its result.

        Raises ``JobFailedError`` (WORK_FAIL), ``JobExceptionError`` (WORK_EXCEPTION),
        ``NoServerError`` or ``ServerError``.
        """
        return await self._do(function, data, unique, Priority.NORMAL)

    async def do_high(
        self, function: str | bytes, data: Bytesish = b"", *, unique: str | bytes | None = None
    ) -> bytes:
        """``do`` at HIGH priority."""
        return await self._do(function, data, unique, Priority.HIGH)

    async def do_low(
        self, function: str | bytes, data: Bytesish = b"", *, unique: str | bytes | None = None
    ) -> bytes:
        """``do`` at LOW priority."""
        return await self._do(function, data, unique, Priority.LOW)

    async def _bg(
        self,
        function: str | bytes,
        data: Bytesish,
        unique: str | bytes | None,
        prio: Priority,
        when: float | int | datetime | None = None,
    ) -> bytes:
        task = Task(function, data, unique=unique, priority=prio, background=True, when=when)
        await self._submit(task)
        return await task.wait()

    async def do_background(
        self,
        function: str | bytes,
        data: Bytesish = b"",
        *,
        unique: str | bytes | None = None,
        when: float | int | datetime | None = None,
    ) -> bytes:
        """Queue a background job and return its handle. ``when`` (Unix time or datetime)
        sends SUBMIT_JOB_EPOCH: the server holds the job until then."""
        return await self._bg(function, data, unique, Priority.NORMAL, when)

    async def do_high_background(
        self, function: str | bytes, data: Bytesish = b"", *, unique: str | bytes | None = None
    ) -> bytes:
        """``do_background`` at HIGH priority."""
        return await self._bg(function, data, unique, Priority.HIGH)

    async def do_low_background(
        self, function: str | bytes, data: Bytesish = b"", *, unique: str | bytes | None = None
    ) -> bytes:
        """``do_background`` at LOW priority."""
        return await self._bg(function, data, unique, Priority.LOW)

    # -- status, echo --

    async def _ask(self, cc: _ClientConn, request: bytes) -> Packet:
        return await cc.core.ask(request).wait()

    def _status_servers(self, server: ServerAddress | None) -> list[ServerAddress]:
        return [server] if server is not None else self._pool.order()

    async def job_status(
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
        return await self._poll_status(request, self._status_servers(server), unique=False)

    async def job_status_unique(self, unique: str | bytes) -> JobStatus:
        """GET_STATUS_UNIQUE: status of the job with this unique key (any function)."""
        request = encode_req(PacketType.GET_STATUS_UNIQUE, to_bytes(unique))
        return await self._poll_status(request, self._pool.order(to_bytes(unique)), unique=True)

    async def _poll_status(
        self, request: bytes, servers: list[ServerAddress], *, unique: bool
    ) -> JobStatus:
        answer: JobStatus | None = None
        for server in servers:
            try:
                cc = await self._connect(server)
                packet = await self._ask(cc, request)
            except (OSError, ConnectionLostError) as exc:
                logger.info("status from %s failed: %s", server, exc)
                continue
            answer = status_from(packet, unique)
            if answer.known:
                return answer
        if answer is None:
            raise NoServerError("no server reachable for a status request")
        return answer

    async def result(self, handle: str | bytes | Task, *, unique: str | bytes | None = None,
                     server: ServerAddress | None = None) -> JobResult:
        """A background job's state and result from our gearmand's result cache (see
        ``Client.result``): by handle (or a Task), or ``result(FUNCTION, unique=KEY)``."""
        from .admin import AsyncAdmin

        if isinstance(handle, Task):
            server = server or handle.server
            if handle.handle is None:
                raise ValueError("the task has no handle yet")
            handle = handle.handle
        answer: JobResult | None = None
        for address in self._status_servers(server):
            try:
                async with AsyncAdmin(address, connect_timeout=self._connect_timeout,
                                      ssl=self._tls or False) as admin:
                    answer = await (admin.result(function=handle, unique=unique)
                                    if unique is not None else admin.result(handle))
            except (OSError, ConnectionLostError) as exc:
                logger.info("result from %s failed: %s", address, exc)
                continue
            if answer.state != "unknown":
                return answer
        if answer is None:
            raise NoServerError("no server reachable for a result request")
        return answer

    async def echo(self, data: Bytesish = b"", *, server: ServerAddress | None = None) -> bytes:
        """ECHO_REQ to a server (the first reachable one by default); returns the echo."""
        servers = self._status_servers(server)
        for address in servers:
            try:
                cc = await self._connect(address)
                packet = await self._ask(cc, encode_req(PacketType.ECHO_REQ, to_bytes(data)))
            except (OSError, ConnectionLostError) as exc:
                logger.info("echo to %s failed: %s", address, exc)
                continue
            return packet.args[0]
        raise NoServerError("no server reachable for echo")

    async def ping(self, server: ServerAddress | None = None) -> float:
        """Round-trip time of an ECHO to a server, in seconds."""
        start = time.perf_counter()
        await self.echo(b"ping", server=server)
        return time.perf_counter() - start



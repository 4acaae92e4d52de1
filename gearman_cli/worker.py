"""The Gearman worker: register functions, grab jobs, run them, report back. trio-native,
with a blocking facade. Rule: it sleeps with PRE_SLEEP and wakes on NOOP; it never polls.

Hello world (the tutorial's ``reverse``), blocking::

    from gearman_cli import Worker

    def reverse(job):
        return job.data[::-1]            # the return value is the result

    worker = Worker("127.0.0.1:4730")    # or GEARMAN_SERVERS, else localhost:4730
    worker.add_function("reverse", reverse)
    worker.work_forever()

With trio and an async callback, up to 8 jobs at once::

    async def reverse(job):
        return job.data[::-1]

    worker = AsyncWorker(concurrency=8)
    worker.add_function("reverse", reverse)
    await worker.work_forever()

Data, warnings and status along the way (background jobs can be polled for the status)::

    def long_job(job):
        for i in range(10):
            job.send_status(i, 10)        # WORK_STATUS i/10
            job.send_data(b"chunk")       # WORK_DATA to waiting clients
        return b"done"

Application data given at registration is on every job::

    worker.add_function("resize", resize, app_data={"quality": 80})
    # inside resize(job): job.app_data["quality"]

A failing worker::

    def fails(job):
        job.send_fail()                   # WORK_FAIL; the return value is then ignored

    def raises(job):
        raise ValueError("bad input")     # WORK_EXCEPTION "ValueError: bad input"

Blocking callbacks run in threads (``trio.to_thread``), so a slow one never stalls the
connection; async callbacks run as trio tasks. ``job.send_*`` work from either.

An exception becomes ``WORK_EXCEPTION`` alone (``exception_packet="exception"``, the
default): gearmand forwards it to clients that asked for exceptions and turns it into
``WORK_FAIL`` for the others, deleting the job either way (reference §1.3), so nothing
follows it. ``exception_packet="fail"`` sends ``WORK_FAIL`` instead, for old libgearman
clients that hang on the reference server's converted ``WORK_FAIL``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

import trio

from protocol import Packet, PacketType, encode_req

from ._connection import CONNECT_TIMEOUT, Connection, open_stream
from ._servers import ServerAddress, ServerPool, ServerSpec, to_addresses

logger = logging.getLogger(__name__)

__all__ = ["AsyncWorker", "Job", "JobCallback", "Worker"]

Result = bytes | bytearray | memoryview | str | None
JobCallback = Callable[["Job"], Result] | Callable[["Job"], Awaitable[Result]]

_ASSIGN = (PacketType.JOB_ASSIGN, PacketType.JOB_ASSIGN_UNIQ, PacketType.JOB_ASSIGN_ALL)
_NOOP = Packet.res(PacketType.NOOP)


def _b(value: Result) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode()
    return bytes(value)


class Job:
    """One assigned job, given to the function's callback.

    ``data`` (also ``workload``), ``function``, ``unique``, ``handle``, ``reducer`` are the
    assignment's fields; ``app_data`` is what ``add_function`` was given. The ``send_*``
    methods never block and work from async callbacks and from threads alike.
    """

    __slots__ = (
        "handle",
        "function",
        "unique",
        "data",
        "reducer",
        "app_data",
        "_conn",
        "_in_thread",
        "_finished",
    )

    def __init__(
        self,
        conn: Connection,
        handle: bytes,
        function: bytes,
        unique: bytes,
        data: bytes,
        reducer: bytes = b"",
        app_data: Any = None,
    ) -> None:
        self.handle = handle
        self.function = function
        self.unique = unique
        self.data = data
        self.reducer = reducer
        self.app_data = app_data
        self._conn = conn
        self._in_thread = False
        self._finished = False

    def __repr__(self) -> str:
        return f"<Job {self.handle.decode('latin-1')} {self.function.decode('latin-1')}>"

    @property
    def workload(self) -> bytes:
        return self.data

    @property
    def finished(self) -> bool:
        """True once a final packet (complete, fail or exception) was sent."""
        return self._finished

    def _send(self, data: bytes) -> None:
        if self._in_thread:
            trio.from_thread.run_sync(self._conn.send, data)
        else:
            self._conn.send(data)

    def _final(self, data: bytes) -> None:
        if self._finished:
            raise RuntimeError(f"{self!r} already finished")
        self._finished = True
        self._send(data)

    def send_data(self, data: Result) -> None:
        """WORK_DATA: a chunk of output for the waiting clients."""
        self._send(encode_req(PacketType.WORK_DATA, self.handle, _b(data)))

    def send_warning(self, data: Result) -> None:
        """WORK_WARNING: a warning for the waiting clients."""
        self._send(encode_req(PacketType.WORK_WARNING, self.handle, _b(data)))

    def send_status(self, numerator: int, denominator: int) -> None:
        """WORK_STATUS: progress ``numerator``/``denominator`` (also seen by GET_STATUS)."""
        self._send(
            encode_req(
                PacketType.WORK_STATUS,
                self.handle,
                str(int(numerator)).encode(),
                str(int(denominator)).encode(),
            )
        )

    def send_complete(self, result: Result = b"") -> None:
        """WORK_COMPLETE now; the callback's return value is then ignored."""
        self._final(encode_req(PacketType.WORK_COMPLETE, self.handle, _b(result)))

    def send_fail(self) -> None:
        """WORK_FAIL: the job failed; the callback's return value is then ignored."""
        self._final(encode_req(PacketType.WORK_FAIL, self.handle))

    def send_exception(self, data: Result) -> None:
        """WORK_EXCEPTION: ends the job (the server deletes it; nothing may follow)."""
        self._final(encode_req(PacketType.WORK_EXCEPTION, self.handle, _b(data)))


@dataclass(slots=True)
class _Function:
    name: bytes
    callback: JobCallback
    timeout: float | None
    app_data: Any
    is_async: bool

    def register_packet(self) -> bytes:
        if self.timeout is None:
            return encode_req(PacketType.CAN_DO, self.name)
        ms = max(1, math.ceil(self.timeout * 1000))
        return encode_req(PacketType.CAN_DO_TIMEOUT, self.name, str(ms).encode())


class _Session:
    """One live, registered connection and its packet channel."""

    __slots__ = ("conn", "send", "receive", "sleeping")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.send, self.receive = trio.open_memory_channel[Packet](math.inf)
        self.sleeping = False

    def poke(self) -> None:
        """Wake the grab loop as a NOOP would (after a new function was registered)."""
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            self.send.send_nowait(_NOOP)


class AsyncWorker:
    """A trio Gearman worker connected to every server of its list.

    ``concurrency`` jobs run at once at most (across all servers). Lost connections are
    re-established with exponential back-off (``reconnect_delay`` .. ``reconnect_max``
    seconds, with jitter) and the functions are registered again. An idle worker sleeps
    (PRE_SLEEP) until the server sends NOOP; with ``idle_poll`` seconds it also grabs again
    after that long without a NOOP (off by default: no polling).
    """

    def __init__(
        self,
        servers: ServerSpec | Iterable[ServerSpec] | None = None,
        *,
        client_id: str | bytes | None = None,
        concurrency: int = 1,
        connect_timeout: float = CONNECT_TIMEOUT,
        reconnect_delay: float = 0.25,
        reconnect_max: float = 10.0,
        exception_packet: Literal["exception", "fail"] = "exception",
        idle_poll: float | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._pool = ServerPool()
        if servers is not None:
            for address in to_addresses(servers):
                self._pool.add(address)
        self._client_id = client_id.encode() if isinstance(client_id, str) else client_id
        self._concurrency = concurrency
        self._connect_timeout = connect_timeout
        self._reconnect_delay = reconnect_delay
        self._reconnect_max = reconnect_max
        self._exception_packet = exception_packet
        self._idle_poll = idle_poll
        self._functions: dict[bytes, _Function] = {}
        self._sessions: set[_Session] = set()
        self._running = False
        # Per-run state (set by _work).
        self._slots = trio.Semaphore(concurrency)
        self._budget: int | None = None
        self._budget_returned = trio.Event()
        self._stopping = False
        self._stop_pending = False
        self._inflight = 0
        self._active = 0
        self._completed = 0
        self._all_done: trio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    # -- configuration --

    def add_server(self, host: str, port: int = 4730) -> None:
        self._pool.add(ServerAddress(host, port))

    def add_servers(self, servers: str) -> None:
        for address in to_addresses(servers):
            self._pool.add(address)

    @property
    def servers(self) -> list[ServerAddress]:
        return self._pool.servers

    def add_function(
        self,
        name: str | bytes,
        callback: JobCallback,
        timeout: float | None = None,
        app_data: Any = None,
    ) -> None:
        """Register ``callback`` for ``name`` (CAN_DO, or CAN_DO_TIMEOUT when ``timeout``
        seconds are given: the server requeues a job that runs longer)."""
        key = name.encode() if isinstance(name, str) else bytes(name)
        if b"\0" in key:
            raise ValueError("function names cannot contain NUL bytes")
        function = _Function(
            key, callback, timeout, app_data, inspect.iscoroutinefunction(callback)
        )
        self._functions[key] = function
        for session in self._sessions:
            session.conn.send(function.register_packet())
            session.poke()

    def remove_function(self, name: str | bytes) -> None:
        """Unregister ``name`` (CANT_DO)."""
        key = name.encode() if isinstance(name, str) else bytes(name)
        if self._functions.pop(key, None) is not None:
            for session in self._sessions:
                session.conn.send(encode_req(PacketType.CANT_DO, key))

    @property
    def functions(self) -> list[bytes]:
        return list(self._functions)

    # -- running --

    async def work(self, count: int = 1) -> int:
        """Grab and run ``count`` jobs, then return how many finished."""
        if count < 1:
            raise ValueError("count must be at least 1")
        return await self._work(count)

    async def work_forever(self) -> NoReturn:
        """Grab and run jobs until cancelled."""
        await self._work(None)
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self) -> None:
        """Stop grabbing; ``work``/``work_forever`` return once running jobs finish.

        Safe to call from the worker's trio task, another trio task, or another thread.
        """
        self._stop_pending = True  # seen by a run that is just starting
        token = self._token
        if token is None:
            return
        try:
            here = trio.lowlevel.current_trio_token()
        except RuntimeError:
            here = None
        if here is token:
            self._stop_now()
        else:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop_now, trio_token=token)

    def _stop_now(self) -> None:
        self._stopping = True
        self._check_done()

    def _check_done(self) -> None:
        if self._all_done is None or self._active:
            return
        if self._stopping or (self._budget == 0 and self._inflight == 0):
            self._all_done.set()

    async def _work(self, count: int | None) -> int:
        if self._running:
            raise RuntimeError("this worker is already running")
        self._running = True
        self._slots = trio.Semaphore(self._concurrency)
        self._budget = count
        self._budget_returned = trio.Event()
        self._stopping = False
        self._inflight = 0
        self._active = 0
        self._completed = 0
        self._all_done = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        if self._stop_pending:
            self._stop_now()
        try:
            async with trio.open_nursery() as jobs, trio.open_nursery() as conns:
                for server in self._pool.servers:
                    conns.start_soon(self._serve, server, jobs)
                await self._all_done.wait()
                with trio.move_on_after(5):
                    for session in list(self._sessions):
                        await session.conn.flush()
                conns.cancel_scope.cancel()
        finally:
            self._running = False
            self._token = None
            self._stop_pending = False
            self._sessions.clear()
        return self._completed

    async def _serve(self, server: ServerAddress, jobs: trio.Nursery) -> None:
        delay = self._reconnect_delay
        last_warning = -math.inf
        while True:
            try:
                stream = await open_stream(server, self._connect_timeout)
            except OSError as exc:
                # One warning per second at most; the other attempts log at DEBUG.
                now = trio.current_time()
                level = logging.WARNING if now - last_warning >= 1.0 else logging.DEBUG
                if level == logging.WARNING:
                    last_warning = now
                logger.log(
                    level, "cannot connect to %s: %s (retry in %.2fs)", server, exc, delay
                )
            else:
                conn = Connection(stream, server)
                logger.info("conn %d: worker connected to %s", conn.id, server)
                started = trio.current_time()
                reason = await self._session(conn, jobs)
                logger.warning("conn %d to %s lost: %s", conn.id, server, reason)
                if trio.current_time() - started > 10 * self._reconnect_delay:
                    delay = self._reconnect_delay
            await trio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(self._reconnect_max, delay * 2)

    async def _session(self, conn: Connection, jobs: trio.Nursery) -> str:
        session = _Session(conn)
        if self._client_id is not None:
            conn.send(encode_req(PacketType.SET_CLIENT_ID, self._client_id))
        for function in self._functions.values():
            conn.send(function.register_packet())
        self._sessions.add(session)
        try:
            async with trio.open_nursery() as nursery:

                async def pump() -> None:
                    await conn.run(session.send.send_nowait)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(pump)
                nursery.start_soon(self._grab_loop, session, jobs)
        finally:
            self._sessions.discard(session)
            session.send.close()
            conn.close()
        return conn.reason or "closed"

    async def _next(self, session: _Session, *, noop: bool) -> Packet:
        """The next packet that is not a NOOP (``noop=False``) or the next NOOP."""
        while True:
            packet = await session.receive.receive()
            if packet.type is PacketType.ERROR and packet.args[0] == b"JOB_NOT_FOUND":
                # The answer to one of our WORK_* packets, not to a GRAB: the server took the
                # job back (CAN_DO_TIMEOUT, cancel), so our result was discarded (§1.3, §2.7).
                logger.info("conn %d: server dropped a result: %r", session.conn.id, packet)
                continue
            if (packet.type is PacketType.NOOP) == noop:
                return packet
            if packet.type is PacketType.ERROR:
                logger.warning("conn %d: server error %r", session.conn.id, packet.args)
            elif packet.type is not PacketType.NOOP:
                logger.debug("conn %d: ignoring %r", session.conn.id, packet)

    async def _grab_loop(self, session: _Session, jobs: trio.Nursery) -> None:
        conn = session.conn
        grab = encode_req(PacketType.GRAB_JOB_UNIQ)
        pre_sleep = encode_req(PacketType.PRE_SLEEP)
        while True:
            await self._slots.acquire()
            if self._stopping or self._budget == 0:
                self._slots.release()
                await self._budget_returned.wait()
                continue
            if not self._functions:
                self._slots.release()
                conn.send(pre_sleep)
                await self._next(session, noop=True)
                continue
            # Pipeline: one GRAB per free slot (within the budget), sent in one batch and
            # answered in order.
            want = 1
            while self._slots.value > 0 and (self._budget is None or want < self._budget):
                self._slots.acquire_nowait()
                want += 1
            if self._budget is not None:
                self._budget -= want
            self._inflight += want
            conn.send(grab * want)
            idle = False
            for _ in range(want):
                reply = await self._next(session, noop=False)
                self._inflight -= 1
                if reply.type in _ASSIGN:
                    self._active += 1
                    jobs.start_soon(self._run_job, self._job_from(conn, reply))
                    continue
                self._slots.release()
                if self._budget is not None:
                    self._budget += 1
                    self._budget_returned.set()
                    self._budget_returned = trio.Event()
                self._check_done()
                if reply.type is PacketType.NO_JOB:
                    idle = True
                else:
                    logger.warning("conn %d: unexpected reply to GRAB: %r", conn.id, reply)
                    if reply.type is PacketType.ERROR:
                        await trio.sleep(1)  # never busy-loop on a server that refuses us
            if idle:
                conn.send(pre_sleep)
                session.sleeping = True
                # ``idle_poll`` is a safety net for servers that lose wake-ups (the 1.1.20
                # reference sends no NOOP when an epoch job falls due, §2.5, and was seen
                # not to wake sleepers after a CAN_DO_TIMEOUT requeue).
                with trio.move_on_after(self._idle_poll or math.inf):
                    await self._next(session, noop=True)
                session.sleeping = False

    def _job_from(self, conn: Connection, packet: Packet) -> Job:
        args = packet.args
        if packet.type is PacketType.JOB_ASSIGN:
            handle, function, data = args
            unique = reducer = b""
        elif packet.type is PacketType.JOB_ASSIGN_UNIQ:
            handle, function, unique, data = args
            reducer = b""
        else:
            handle, function, unique, reducer, data = args
        registered = self._functions.get(function)
        app_data = registered.app_data if registered is not None else None
        return Job(conn, handle, function, unique, data, reducer, app_data)

    async def _run_job(self, job: Job) -> None:
        try:
            function = self._functions.get(job.function)
            if function is None:
                logger.warning("%r: function no longer registered; failing it", job)
                job.send_fail()
                return
            try:
                if function.is_async:
                    result = await function.callback(job)  # type: ignore[misc]
                else:
                    job._in_thread = True
                    try:
                        result = await trio.to_thread.run_sync(function.callback, job)
                    finally:
                        job._in_thread = False
                if inspect.isawaitable(result):
                    result = await result
                if not job.finished:
                    job.send_complete(result)
            except Exception as exc:
                logger.info("%r raised %r", job, exc, exc_info=True)
                if not job.finished:
                    if self._exception_packet == "fail":
                        job.send_fail()
                    else:
                        job.send_exception(f"{type(exc).__name__}: {exc}")
        finally:
            self._active -= 1
            self._completed += 1
            self._slots.release()
            self._check_done()


class Worker:
    """Blocking facade over ``AsyncWorker`` for plain scripts.

    ``work``/``work_forever`` each run their own ``trio.run`` (do not call them from inside
    a trio loop); callbacks may be plain functions (run in threads) or async functions.
    ``stop`` may be called from any thread or from a callback.
    """

    def __init__(
        self,
        servers: ServerSpec | Iterable[ServerSpec] | None = None,
        **options: Any,
    ) -> None:
        self._worker = AsyncWorker(servers, **options)

    def add_server(self, host: str, port: int = 4730) -> None:
        self._worker.add_server(host, port)

    def add_servers(self, servers: str) -> None:
        self._worker.add_servers(servers)

    def add_function(
        self,
        name: str | bytes,
        callback: JobCallback,
        timeout: float | None = None,
        app_data: Any = None,
    ) -> None:
        self._worker.add_function(name, callback, timeout, app_data)

    def remove_function(self, name: str | bytes) -> None:
        self._worker.remove_function(name)

    def work(self, count: int = 1) -> int:
        """Run ``count`` jobs, then return how many finished."""
        return trio.run(self._worker.work, count)

    def work_forever(self) -> None:
        """Run jobs until ``stop`` is called (from another thread or a callback)."""
        trio.run(self._worker._work, None)

    def stop(self) -> None:
        self._worker.stop()

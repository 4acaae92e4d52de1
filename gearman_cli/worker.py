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
connection; async callbacks run as trio tasks. ``job.send_*`` work from either. A plain
callback that returns at once can run inline, with no thread or task (the fastest path,
in assignment order)::

    worker.add_function("log", lambda job: sink.append(job.data), inline=True)

``job.sequence`` numbers jobs in the order the server assigned them, for callbacks that
run concurrently but must write in that order.

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
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import trio

from protocol import Packet, PacketType, encode_req

from ._connection import CONNECT_TIMEOUT, Connection, open_stream
from ._tls import resolve as resolve_tls

if TYPE_CHECKING:
    from ._tls import SslArg
from ._job import _ASSIGN, _GRAB, _PRE_SLEEP, Job, JobCallback, _Function, _Session
from ._servers import ServerAddress, ServerPool, ServerSpec, to_addresses

logger = logging.getLogger(__name__)

__all__ = ["AsyncWorker", "Job", "JobCallback", "Worker"]


class AsyncWorker:
    """A trio Gearman worker connected to every server of its list.

    ``concurrency`` jobs run at once at most (across all servers); a free slot is a GRAB
    kept outstanding, so up to ``concurrency`` grabs are pipelined. Lost connections are
    re-established with exponential back-off (``reconnect_delay`` .. ``reconnect_max``
    seconds, with jitter) and the functions are registered again. An idle worker sleeps
    (PRE_SLEEP, once every outstanding grab came back empty) until the server sends NOOP;
    with ``idle_poll`` seconds it also grabs again after that long without a NOOP (off by
    default: no polling). With ``attempts=True`` it asks the server (our gearmand) for
    each job's attempt number (``Job.attempt``; gearmand(8), RETRIES AND DEAD LETTERS),
    which a job retried under a ``--retry-policy`` may want to know.
    ``ssl``: an ``ssl.SSLContext`` (see ``tls_context``), True, False, or None (TLS when
    the ``GEARMAN_SSL*`` variables ask for it); the server's certificate and host name are
    always verified (docs/security.md).
    """

    def __init__(
        self,
        servers: ServerSpec | Iterable[ServerSpec] | None = None,
        *,
        client_id: str | bytes | None = None,
        concurrency: int = 1,
        connect_timeout: float = CONNECT_TIMEOUT,
        reconnect_delay: float = 0.05,
        reconnect_max: float = 5.0,
        exception_packet: Literal["exception", "fail"] = "exception",
        idle_poll: float | None = None,
        ssl: SslArg = None,
        attempts: bool = False,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._tls = resolve_tls(ssl)
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
        self._attempts = attempts
        self._functions: dict[bytes, _Function] = {}
        #: Live sessions, in the order free slots are offered to them (rotated on use).
        self._sessions: dict[_Session, None] = {}
        self._running = False
        self._sequence = 0
        # Per-run state (set by _work).
        self._free = concurrency  # slots neither running a job nor held by a GRAB
        self._budget: int | None = None
        self._stopping = False
        self._stop_pending = False
        self._inflight = 0
        self._active = 0
        self._completed = 0
        self._all_done: trio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._jobs: trio.Nursery | None = None

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
        *,
        inline: bool = False,
    ) -> None:
        """Register ``callback`` for ``name`` (CAN_DO, or CAN_DO_TIMEOUT when ``timeout``
        seconds are given: the server requeues a job that runs longer).

        ``inline=True`` calls a plain (not async) callback right where the assignment is
        read: no thread and no task, the fastest path. Only for a callback that returns at
        once — while it runs, the worker does nothing else.
        """
        key = name.encode() if isinstance(name, str) else bytes(name)
        if b"\0" in key:
            raise ValueError("function names cannot contain NUL bytes")
        is_async = inspect.iscoroutinefunction(callback)
        if inline and is_async:
            raise ValueError("inline=True needs a plain function, not an async one")
        function = _Function(key, callback, timeout, app_data, is_async, inline)
        self._functions[key] = function
        for session in list(self._sessions):
            session.conn.send(function.register_packet())
            self._wake(session)  # as a NOOP would: there may be work for it now

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

    async def work_forever(self) -> None:
        """Grab and run jobs until cancelled, or until ``stop()`` (then return once the
        running jobs finished)."""
        await self._work(None)

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
        self._free = self._concurrency
        self._budget = count
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
                self._jobs = jobs
                for server in self._pool.servers:
                    conns.start_soon(self._serve, server)
                await self._all_done.wait()
                with trio.move_on_after(5):
                    for session in list(self._sessions):
                        await session.conn.flush()
                conns.cancel_scope.cancel()
        finally:
            self._running = False
            self._token = None
            self._jobs = None
            self._stop_pending = False
            self._sessions.clear()
        return self._completed

    async def _serve(self, server: ServerAddress) -> None:
        delay = self._reconnect_delay
        last_warning = -math.inf
        lost = False
        while True:
            try:
                stream = await open_stream(server, self._connect_timeout, self._tls)
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
                if lost:
                    logger.warning("conn %d: reconnected to %s", conn.id, server)
                else:
                    logger.info("conn %d: worker connected to %s", conn.id, server)
                lost = True
                started = trio.current_time()
                reason = await self._session(conn)
                logger.warning("conn %d to %s lost: %s", conn.id, server, reason)
                if trio.current_time() - started > 10 * self._reconnect_delay:
                    delay = self._reconnect_delay
            await trio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(self._reconnect_max, delay * 2)

    async def _session(self, conn: Connection) -> str:
        session = _Session(conn)
        if self._client_id is not None:
            conn.send(encode_req(PacketType.SET_CLIENT_ID, self._client_id))
        if self._attempts:
            # Our gearmand then precedes each assignment with OPTION_RES "attempt=N"
            # (Job.attempt); other servers answer ERROR UNKNOWN_OPTION, ignored.
            conn.send(_ATTEMPTS)
        for function in self._functions.values():
            conn.send(function.register_packet())
        self._sessions[session] = None
        try:
            async with trio.open_nursery() as nursery:

                async def pump() -> None:
                    await conn.run(lambda packet: self._on_packet(session, packet))
                    nursery.cancel_scope.cancel()

                nursery.start_soon(pump)
                nursery.start_soon(self._timer, session)
                self._dispatch()
        finally:
            session.closed = True
            self._sessions.pop(session, None)
            conn.close()
            # GRABs that will never be answered give their slots (and budget) back.
            lost, session.outstanding = session.outstanding, 0
            if lost:
                self._inflight -= lost
                self._free += lost
                if self._budget is not None:
                    self._budget += lost
                self._dispatch()
                self._check_done()
        return conn.reason or "closed"

    async def _timer(self, session: _Session) -> None:
        """The session's clocks: a second's pause after a refused GRAB, and ``idle_poll``."""
        while True:
            changed = session.changed = trio.Event()
            if session.paused:
                await trio.sleep(1)  # never busy-loop on a server that refuses us
                session.paused = False
                self._dispatch()
            elif session.sleeping and self._idle_poll:
                # ``idle_poll`` is a safety net for servers that lose wake-ups (the 1.1.20
                # reference sends no NOOP when an epoch job falls due, §2.5, and was seen
                # not to wake sleepers after a CAN_DO_TIMEOUT requeue).
                with trio.move_on_after(self._idle_poll):
                    await changed.wait()
                if session.sleeping and not changed.is_set():
                    self._wake(session)
            else:
                await changed.wait()

    # -- grabbing: a synchronous state machine fed by the connection's reader --

    def _wake(self, session: _Session) -> None:
        """The server said (NOOP) there may be work, or we decided to look again."""
        if session.sleeping and self._idle_poll:
            session.notify()
        session.sleeping = False
        session.empty = False
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to sessions that want jobs, as pipelined GRABs (one write)."""
        if self._stopping or self._free <= 0 or self._budget == 0:
            return
        sessions = self._sessions
        for session in list(sessions) if len(sessions) > 1 else sessions:
            if not session.wants_jobs:
                continue
            if not self._functions:
                self._sleep(session)
                continue
            want = self._free if self._budget is None else min(self._free, self._budget)
            self._free -= want
            if self._budget is not None:
                self._budget -= want
            self._inflight += want
            session.outstanding += want
            session.conn.send(_GRAB if want == 1 else _GRAB * want)
            if len(sessions) > 1:
                # Rotate: the next free slot is offered to the other servers first.
                del sessions[session]
                sessions[session] = None
            return

    def _sleep(self, session: _Session) -> None:
        session.conn.send(_PRE_SLEEP)
        session.sleeping = True
        if self._idle_poll:
            session.notify()

    def _grab_answered(self, session: _Session) -> None:
        """A GRAB came back without a job: its slot (and budget) is free again."""
        session.outstanding -= 1
        self._inflight -= 1
        self._free += 1
        if self._budget is not None:
            self._budget += 1

    def _on_packet(self, session: _Session, packet: Packet) -> None:
        ptype = packet.type
        if ptype in _ASSIGN:
            if session.outstanding <= 0:
                logger.warning("conn %d: %r answers no GRAB", session.conn.id, packet)
                return
            session.outstanding -= 1
            self._inflight -= 1
            self._active += 1
            session.empty = False  # a job came after all: keep grabbing
            job = self._job_from(session.conn, packet)
            job.attempt, session.attempt = session.attempt, None
            function = self._functions.get(job.function)
            if function is not None and function.inline:
                self._run_inline(job, function)
            else:
                assert self._jobs is not None
                self._jobs.start_soon(self._run_job, job, function)
            # A slot an earlier NO_JOB freed (while "empty", nothing grabbed with it; and
            # the server sends no NOOP to a worker that did not sleep): grab with it now.
            self._dispatch()
            return
        if ptype is PacketType.NOOP:
            self._wake(session)
            return
        if ptype is PacketType.OPTION_RES:
            option = packet.args[0]
            if option.startswith(b"attempt="):
                session.attempt = int(option[8:]) if option[8:].isdigit() else None
            return
        if ptype is PacketType.ERROR and packet.args[0].upper() == b"UNKNOWN_OPTION":
            return  # our OPTION_REQ attempts, to a server without it
        if ptype is PacketType.ERROR and packet.args[0] == b"JOB_NOT_FOUND":
            # The answer to one of our WORK_* packets, not to a GRAB: the server took the
            # job back (CAN_DO_TIMEOUT, cancel), so our result was discarded (§1.3, §2.7).
            logger.info("conn %d: server dropped a result: %r", session.conn.id, packet)
            return
        if session.outstanding <= 0:
            if ptype is PacketType.ERROR:
                logger.warning("conn %d: server error %r", session.conn.id, packet.args)
            else:
                logger.debug("conn %d: ignoring %r", session.conn.id, packet)
            return
        self._grab_answered(session)
        if ptype is PacketType.NO_JOB:
            session.empty = True
        else:
            logger.warning("conn %d: unexpected reply to GRAB: %r", session.conn.id, packet)
            if ptype is PacketType.ERROR:
                session.paused = True
                session.notify()
        if session.outstanding == 0 and session.empty and not session.sleeping:
            self._sleep(session)  # every grab came back empty
        self._check_done()
        self._dispatch()

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
        sequence = self._sequence
        self._sequence = sequence + 1
        return Job(conn, handle, function, unique, data, reducer, app_data, sequence)

    # -- running jobs --

    def _job_done(self) -> None:
        self._active -= 1
        self._completed += 1
        self._free += 1
        self._check_done()
        self._dispatch()

    def _job_raised(self, job: Job, exc: Exception) -> None:
        # The client hears WORK_EXCEPTION (or WORK_FAIL); the traceback is only here.
        logger.error("%r raised %r", job, exc, exc_info=exc)
        if not job.finished:
            if self._exception_packet == "fail":
                job.send_fail()
            else:
                job.send_exception(f"{type(exc).__name__}: {exc}")

    def _run_inline(self, job: Job, function: _Function) -> None:
        try:
            result = function.callback(job)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise TypeError("an inline callback returned an awaitable")
            if not job._finished:
                job.send_complete(result)
        except Exception as exc:
            self._job_raised(job, exc)
        finally:
            self._job_done()

    async def _run_job(self, job: Job, function: _Function | None) -> None:
        try:
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
                self._job_raised(job, exc)
        finally:
            self._job_done()


class Worker:
    """Blocking facade over ``AsyncWorker`` for plain scripts.

    ``work``/``work_forever`` each run their own ``trio.run`` (do not call them from inside
    a trio loop); callbacks may be plain functions (run in threads) or async functions.
    ``stop`` may be called from any thread or from a callback. Ctrl-C raises a plain
    ``KeyboardInterrupt`` (running jobs are abandoned; the server gives them to another
    worker).
    """

    def __init__(
        self,
        servers: ServerSpec | Iterable[ServerSpec] | None = None,
        *,
        client_id: str | bytes | None = None,
        concurrency: int = 1,
        connect_timeout: float = CONNECT_TIMEOUT,
        reconnect_delay: float = 0.05,
        reconnect_max: float = 5.0,
        exception_packet: Literal["exception", "fail"] = "exception",
        idle_poll: float | None = None,
        ssl: SslArg = None,
        attempts: bool = False,
    ) -> None:
        self._worker = AsyncWorker(
            servers,
            client_id=client_id,
            concurrency=concurrency,
            connect_timeout=connect_timeout,
            reconnect_delay=reconnect_delay,
            reconnect_max=reconnect_max,
            exception_packet=exception_packet,
            idle_poll=idle_poll,
            ssl=ssl,
            attempts=attempts,
        )

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
        *,
        inline: bool = False,
    ) -> None:
        self._worker.add_function(name, callback, timeout, app_data, inline=inline)

    def remove_function(self, name: str | bytes) -> None:
        self._worker.remove_function(name)

    def work(self, count: int = 1) -> int:
        """Run ``count`` jobs, then return how many finished."""
        return run_plain(self._worker.work, count)

    def work_forever(self) -> None:
        """Run jobs until ``stop`` is called (from another thread or a callback)."""
        run_plain(self._worker._work, None)

    def stop(self) -> None:
        self._worker.stop()


_ATTEMPTS = encode_req(PacketType.OPTION_REQ, b"attempts")
T = TypeVar("T")


def run_plain(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``trio.run``, but Ctrl-C comes out as a plain ``KeyboardInterrupt`` (trio wraps it
    in a ``BaseExceptionGroup`` when it arrives while several tasks run)."""
    try:
        return trio.run(fn, *args)
    except BaseExceptionGroup as group:
        interrupted, rest = group.split(KeyboardInterrupt)
        if interrupted is not None and rest is None:
            raise KeyboardInterrupt from None
        raise

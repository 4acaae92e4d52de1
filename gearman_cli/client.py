"""The Gearman client: submit jobs one at a time or pipeline many, trio-native, with a
blocking facade. Rule: every byte goes through the sans-IO ``protocol`` package.

Hello world (the tutorial's ``reverse``), blocking — no trio knowledge needed::

    from gearman_cli import Client

    client = Client("127.0.0.1:4730")          # or GEARMAN_SERVERS, else localhost:4730
    print(client.do("reverse", b"Hello"))       # b'olleH'

The same with trio::

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
            on_status=lambda t: print(f"{t.numerator}/{t.denominator}"),
            on_complete=lambda t: print(t.data, "->", t.result),
            on_fail=lambda t: print(t.data, "failed"),
        )

Application data rides along with a task and comes back in every callback::

    client.add_task("resize", image_bytes, app_data={"path": path})
    await client.run_tasks(on_complete=lambda t: save(t.app_data["path"], t.result))

Background job, then poll its status::

    handle = await client.do_background("long_job", b"payload")
    status = await client.job_status(handle)
    print(status.known, status.running, status.numerator, status.denominator)

A failing worker surfaces as an exception (``WORK_FAIL`` -> ``JobFailedError``,
``WORK_EXCEPTION`` -> ``JobExceptionError`` with the worker's text in ``.data``)::

    try:
        client.do("always_fails", b"x")
    except JobFailedError as exc:
        print("failed:", exc)

Several servers: jobs with a ``unique`` key go to the server picked by a consistent hash
of the key (so coalescing works across servers); jobs without one are spread round-robin;
a server that is down is skipped and retried after an exponential back-off, and jobs it
held are resubmitted to another server.
"""

from __future__ import annotations

import enum
import logging
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

import trio

from protocol import SUBMIT_TYPE_FOR, Packet, PacketType, Priority, encode_req

from ._connection import CONNECT_TIMEOUT, Connection, open_stream
from ._errors import (
    ConnectionLostError,
    GearmanError,
    JobExceptionError,
    JobFailedError,
    NoServerError,
    ServerError,
)
from ._servers import ServerAddress, ServerPool, ServerSpec, to_addresses

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

T = TypeVar("T")
Bytesish = bytes | bytearray | memoryview | str

#: Yield to the writer after this many pipelined submissions, so sending overlaps encoding.
_SUBMIT_BATCH = 512

_pack_size = struct.Struct(">I").pack
#: ``\0REQ`` + the packet type of each (priority, background) submit, for ``Task._encode``.
_SUBMIT_HEAD = {key: b"\0REQ" + _pack_size(ptype) for key, ptype in SUBMIT_TYPE_FOR.items()}


def _b(value: Bytesish) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, str):
        return value.encode()
    return bytes(value)


class TaskState(enum.Enum):
    """Where a task is in its life."""

    NEW = "new"  #: not sent yet
    SUBMITTED = "submitted"  #: sent, waiting for JOB_CREATED
    CREATED = "created"  #: the server has it (final for background tasks)
    COMPLETE = "complete"  #: WORK_COMPLETE arrived; ``result`` holds the data
    FAILED = "failed"  #: WORK_FAIL arrived
    EXCEPTION = "exception"  #: WORK_EXCEPTION arrived; ``exception`` holds the data
    ERROR = "error"  #: never ran: no server reachable, or the server sent ERROR; see ``error``


class JobStatus(NamedTuple):
    """A job's status as the server reports it (``STATUS_RES`` / ``STATUS_RES_UNIQUE``)."""

    known: bool
    running: bool
    numerator: int
    denominator: int
    #: Foreground clients waiting on the job (only from ``job_status_unique``).
    waiting: int | None = None


TaskCallback = Callable[["Task"], object]


@dataclass(slots=True)
class TaskCallbacks:
    """Callbacks for a task's events. Each gets the Task and runs in the reader task, so it
    must not block (in the blocking facade it runs inside ``run_tasks``)."""

    on_created: TaskCallback | None = None
    on_data: TaskCallback | None = None
    on_warning: TaskCallback | None = None
    on_status: TaskCallback | None = None
    on_complete: TaskCallback | None = None
    on_fail: TaskCallback | None = None
    on_exception: TaskCallback | None = None


def _epoch(when: float | int | datetime) -> int:
    if isinstance(when, datetime):
        return int(when.timestamp())
    return int(when)


class Task:
    """One job submission and everything the server told us about it.

    Build one with ``add_task*`` (or directly) and run it with ``run_tasks`` or
    ``AsyncClient.submit`` + ``await task.wait()``.
    """

    __slots__ = (
        "function",
        "data",
        "unique",
        "priority",
        "background",
        "when",
        "app_data",
        "callbacks",
        "state",
        "handle",
        "server",
        "result",
        "exception",
        "error",
        "data_chunks",
        "warnings",
        "numerator",
        "denominator",
        "known",
        "running",
        "status_handle",
        "_done",
        "_event",
        "_hooks",
        "_attempts",
    )

    def __init__(
        self,
        function: str | bytes,
        data: Bytesish = b"",
        *,
        unique: str | bytes | None = None,
        priority: Priority = Priority.NORMAL,
        background: bool = False,
        when: float | int | datetime | None = None,
        app_data: Any = None,
        callbacks: TaskCallbacks | None = None,
    ) -> None:
        self.function: bytes = _b(function)
        self.data: bytes = _b(data)
        self.unique: bytes = _b(unique) if unique is not None else b""
        if b"\0" in self.function or b"\0" in self.unique:
            raise ValueError("function names and unique keys cannot contain NUL bytes")
        self.priority = priority if type(priority) is Priority else Priority(priority)
        self.when: int | None = _epoch(when) if when is not None else None
        if self.when is not None and not background:
            raise ValueError("a scheduled (epoch) job must be a background job")
        if self.when is not None and self.priority != Priority.NORMAL:
            raise ValueError("a scheduled (epoch) job always runs at NORMAL priority")
        self.background = background
        self.app_data = app_data
        self.callbacks = callbacks
        self.state = TaskState.NEW
        #: The job handle from JOB_CREATED, and the server that issued it.
        self.handle: bytes | None = None
        self.server: ServerAddress | None = None
        #: The WORK_COMPLETE payload.
        self.result: bytes | None = None
        #: The WORK_EXCEPTION payload.
        self.exception: bytes | None = None
        #: Why the task never ran (``NoServerError``, ``ServerError``, ...).
        self.error: GearmanError | None = None
        #: Every WORK_DATA / WORK_WARNING payload, in order.
        self.data_chunks: list[bytes] = []
        self.warnings: list[bytes] = []
        #: The last WORK_STATUS (or STATUS_RES, for a status task).
        self.numerator = 0
        self.denominator = 0
        self.known: bool | None = None
        self.running: bool | None = None
        #: Set for a status task (``add_task_status``): the handle asked about.
        self.status_handle: bytes | None = None
        self._done = False
        self._event: trio.Event | None = None
        self._hooks: list[Callable[[Task], None]] = []
        self._attempts = 0

    @classmethod
    def status_of(cls, handle: str | bytes, *, app_data: Any = None) -> Task:
        """A status task: running it asks the servers for ``handle``'s status."""
        task = cls(b"", app_data=app_data)
        task.status_handle = _b(handle)
        return task

    def __repr__(self) -> str:
        return (
            f"<Task {self.function_name} {self.state.value}"
            f"{' ' + self.handle.decode('latin-1') if self.handle else ''}>"
        )

    @property
    def function_name(self) -> str:
        return self.function.decode("utf-8", "replace")

    @property
    def attempts(self) -> int:
        """How many times the task was sent (more than once after a failover)."""
        return self._attempts

    @property
    def done(self) -> bool:
        """True once nothing more will happen to the task."""
        return self._done

    @property
    def successful(self) -> bool:
        """Completed (or, for a background task, accepted by the server)."""
        return self.state is TaskState.COMPLETE or (
            self.background and self.state is TaskState.CREATED
        )

    @property
    def status(self) -> JobStatus:
        """Known / running / numerator / denominator as last reported."""
        return JobStatus(bool(self.known), bool(self.running), self.numerator, self.denominator)

    def outcome(self) -> bytes:
        """The result (the handle for a background task), or raise why there is none."""
        if self.state is TaskState.COMPLETE:
            return self.result or b""
        if self.background and self.state is TaskState.CREATED:
            return self.handle or b""
        if self.state is TaskState.EXCEPTION:
            raise JobExceptionError(self)
        if self.state is TaskState.FAILED:
            raise JobFailedError(self)
        if self.error is not None:
            raise self.error
        raise GearmanError(f"task {self!r} has not finished")

    async def wait(self) -> bytes:
        """Wait until the task is done; return ``outcome()`` (or raise its error)."""
        if not self._done:
            if self._event is None:
                self._event = trio.Event()
            await self._event.wait()
        return self.outcome()

    # -- internal transitions, driven by the client --

    def _callback(self, name: str) -> None:
        callbacks = self.callbacks
        if callbacks is None:
            return
        fn: TaskCallback | None = getattr(callbacks, name)
        if fn is not None:
            try:
                fn(self)
            except Exception:
                logger.exception("task callback %s raised", name)

    def _finish(self, state: TaskState, callback: str | None) -> None:
        if self._done:
            return
        self.state = state
        self._done = True
        if callback:
            self._callback(callback)
        if self._event is not None:
            self._event.set()
        for hook in self._hooks:
            hook(self)

    def _fail_with(self, error: GearmanError) -> None:
        self.error = error
        self._finish(TaskState.ERROR, "on_fail")

    def _reset(self) -> None:
        self.state = TaskState.NEW
        self.handle = None
        self.server = None
        self.numerator = self.denominator = 0

    def _encode(self) -> bytes:
        if self.when is not None:
            return encode_req(
                PacketType.SUBMIT_JOB_EPOCH,
                self.function,
                self.unique,
                str(self.when).encode(),
                self.data,
            )
        # The header is precomputed; __init__ checked the NUL rule for function and unique.
        payload = self.function + b"\0" + self.unique + b"\0" + self.data
        return _SUBMIT_HEAD[(self.priority, self.background)] + _pack_size(len(payload)) + payload


#: Called per accepted job of a batch: (batch, index of the payload, job handle).
BatchCallback = Callable[["BackgroundBatch", int, bytes], object]


class BackgroundBatch:
    """Many background jobs of one function, sent as one pre-encoded write: the cheap way to
    queue a lot of work (no Task per job). ``submit_background_batch`` builds one.

    Every payload gets a JOB_CREATED (its handle lands in ``handles[i]``) or an error
    (``errors``: index and ``ServerError``/``NoServerError``, handle ``None``). A batch goes
    to one server (by ``unique``, else round-robin per batch); the jobs a lost connection
    left unanswered are resubmitted to another server, like tasks.
    """

    __slots__ = (
        "function",
        "unique",
        "priority",
        "payloads",
        "handles",
        "errors",
        "answered",
        "on_created",
        "_head",
        "_event",
        "_attempts",
    )

    def __init__(
        self,
        function: str | bytes,
        payloads: list[bytes],
        *,
        unique: str | bytes | None = None,
        priority: Priority = Priority.NORMAL,
        on_created: BatchCallback | None = None,
    ) -> None:
        self.function: bytes = _b(function)
        self.unique: bytes = _b(unique) if unique is not None else b""
        if b"\0" in self.function or b"\0" in self.unique:
            raise ValueError("function names and unique keys cannot contain NUL bytes")
        self.priority = Priority(priority)
        self.payloads = payloads
        self.handles: list[bytes | None] = [None] * len(payloads)
        self.errors: list[tuple[int, GearmanError]] = []
        #: How many payloads got their answer (JOB_CREATED or an error).
        self.answered = 0
        self.on_created = on_created
        ptype = SUBMIT_TYPE_FOR[(self.priority, True)]
        self._head = b"\0REQ" + _pack_size(ptype)
        self._event: trio.Event | None = None
        self._attempts = 0

    def __len__(self) -> int:
        return len(self.payloads)

    def __repr__(self) -> str:
        return (
            f"<BackgroundBatch {self.function.decode('utf-8', 'replace')} "
            f"{self.answered}/{len(self.payloads)}>"
        )

    @property
    def done(self) -> bool:
        return self.answered >= len(self.payloads)

    @property
    def successful(self) -> bool:
        return self.done and not self.errors

    async def wait(self) -> BackgroundBatch:
        """Wait until every payload has its answer; the batch itself (errors do not raise:
        look at ``errors``)."""
        if not self.done:
            if self._event is None:
                self._event = trio.Event()
            await self._event.wait()
        return self

    def _encode(self, start: int, end: int) -> bytes:
        head = self._head
        mid = self.function + b"\0" + self.unique + b"\0"
        fixed = len(mid)
        pack = _pack_size
        return b"".join(
            [head + pack(fixed + len(p)) + mid + p for p in self.payloads[start:end]]
        )

    def _answer(self, index: int, handle: bytes | None, error: GearmanError | None) -> None:
        if error is not None:
            self.errors.append((index, error))
        else:
            self.handles[index] = handle
            if self.on_created is not None:
                try:
                    self.on_created(self, index, handle or b"")
                except Exception:
                    logger.exception("batch callback on_created raised")
        self.answered += 1
        if self.answered >= len(self.payloads) and self._event is not None:
            self._event.set()

    def _fail_rest(self, start: int, end: int, error: GearmanError) -> None:
        for index in range(start, end):
            self._answer(index, None, error)


class _BatchSlot:
    """The FIFO entry of a batch's jobs ``next .. end`` on one connection: the next
    ``end - next`` request replies belong to it."""

    __slots__ = ("batch", "next", "end")

    def __init__(self, batch: BackgroundBatch, start: int, end: int) -> None:
        self.batch = batch
        self.next = start
        self.end = end


class _Reply:
    """A one-shot slot for the reply to GET_STATUS, ECHO_REQ or OPTION_REQ."""

    __slots__ = ("_event", "packet", "error")

    def __init__(self) -> None:
        self._event = trio.Event()
        self.packet: Packet | None = None
        self.error: GearmanError | None = None

    def set(self, packet: Packet) -> None:
        self.packet = packet
        self._event.set()

    def fail(self, error: GearmanError) -> None:
        self.error = error
        self._event.set()

    async def wait(self) -> Packet:
        await self._event.wait()
        if self.error is not None:
            raise self.error
        assert self.packet is not None
        return self.packet


class _ClientConn:
    """Per-connection client state. Replies that answer a request (JOB_CREATED, STATUS_RES,
    ECHO_RES, OPTION_RES, ERROR) come back in request order, so they are matched FIFO;
    WORK_* packets are matched by handle."""

    __slots__ = ("conn", "pending", "jobs")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.pending: deque[Task | _Reply | _BatchSlot] = deque()
        self.jobs: dict[bytes, list[Task]] = {}


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


class _TaskQueue:
    """``add_task`` and its variants, shared by the async client and the blocking facade."""

    _queued: list[Task]

    def add_task(
        self,
        function: str | bytes,
        data: Bytesish = b"",
        *,
        unique: str | bytes | None = None,
        priority: Priority = Priority.NORMAL,
        background: bool = False,
        when: float | int | datetime | None = None,
        app_data: Any = None,
        callbacks: TaskCallbacks | None = None,
    ) -> Task:
        """Queue a task for the next ``run_tasks``; ``when`` (epoch) makes it scheduled."""
        task = Task(
            function,
            data,
            unique=unique,
            priority=priority,
            background=background,
            when=when,
            app_data=app_data,
            callbacks=callbacks,
        )
        self._queued.append(task)
        return task

    def add_task_high(self, function: str | bytes, data: Bytesish = b"", **kw: Any) -> Task:
        return self.add_task(function, data, priority=Priority.HIGH, **kw)

    def add_task_low(self, function: str | bytes, data: Bytesish = b"", **kw: Any) -> Task:
        return self.add_task(function, data, priority=Priority.LOW, **kw)

    def add_task_background(
        self, function: str | bytes, data: Bytesish = b"", **kw: Any
    ) -> Task:
        return self.add_task(function, data, background=True, **kw)

    def add_task_high_background(
        self, function: str | bytes, data: Bytesish = b"", **kw: Any
    ) -> Task:
        return self.add_task(function, data, priority=Priority.HIGH, background=True, **kw)

    def add_task_low_background(
        self, function: str | bytes, data: Bytesish = b"", **kw: Any
    ) -> Task:
        return self.add_task(function, data, priority=Priority.LOW, background=True, **kw)

    def add_task_status(self, handle: str | bytes, *, app_data: Any = None) -> Task:
        """Queue a status task: ``run_tasks`` fills its ``known``/``running``/num/den."""
        task = Task.status_of(handle, app_data=app_data)
        self._queued.append(task)
        return task


def _status(packet: Packet, unique: bool = False) -> JobStatus:
    args = packet.args
    return JobStatus(
        args[1] == b"1",
        args[2] == b"1",
        int(args[3] or 0),
        int(args[4] or 0),
        int(args[5] or 0) if unique else None,
    )


class AsyncClient(_TaskQueue):
    """A trio Gearman client. Use as ``async with AsyncClient(servers) as client:``.

    ``servers`` is a comma list (``"10.0.0.1,10.0.0.2:7003"``), an address, or a list of
    them; ``None`` uses ``add_server`` calls or else ``GEARMAN_SERVERS`` (else
    ``localhost:4730``). With ``exceptions=True`` every connection sends
    ``OPTION_REQ exceptions`` so WORK_EXCEPTION reaches us (§1.3).
    """

    def __init__(
        self,
        servers: ServerSpec | Iterable[ServerSpec] | None = None,
        *,
        exceptions: bool = True,
        connect_timeout: float = CONNECT_TIMEOUT,
        client_id: str | bytes | None = None,
        pool: ServerPool | None = None,
    ) -> None:
        self._pool = pool if pool is not None else ServerPool()
        if servers is not None:
            for address in to_addresses(servers):
                self._pool.add(address)
        self._exceptions = exceptions
        self._connect_timeout = connect_timeout
        self._client_id = _b(client_id) if client_id is not None else None
        self._conns: dict[ServerAddress, _ClientConn] = {}
        self._connecting: dict[ServerAddress, trio.Event] = {}
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
                stream = await open_stream(server, self._connect_timeout)
            except OSError:
                self._pool.mark_down(server)
                raise
            conn = Connection(stream, server)
            cc = _ClientConn(conn)
            self._conns[server] = cc
            self._pool.mark_up(server)
            logger.debug("conn %d: connected to %s", conn.id, server)
            if self._client_id is not None:
                conn.send(encode_req(PacketType.SET_CLIENT_ID, self._client_id))
            if self._exceptions:
                cc.pending.append(_Reply())
                conn.send(encode_req(PacketType.OPTION_REQ, b"exceptions"))
            nursery.start_soon(self._run_conn, cc)
            return cc
        finally:
            del self._connecting[server]
            event.set()

    async def _run_conn(self, cc: _ClientConn) -> None:
        reason = await cc.conn.run(lambda packet: self._on_packet(cc, packet))
        if self._conns.get(cc.conn.address) is cc:
            del self._conns[cc.conn.address]
        if self._closing:
            return
        logger.warning("conn %d to %s lost: %s", cc.conn.id, cc.conn.address, reason)
        self._pool.mark_down(cc.conn.address)
        orphans: list[Task] = []
        batches: list[_BatchSlot] = []
        for entry in cc.pending:
            if isinstance(entry, Task):
                orphans.append(entry)
            elif isinstance(entry, _BatchSlot):
                batches.append(entry)
            else:
                entry.fail(ConnectionLostError(f"connection to {cc.conn.address} lost"))
        cc.pending.clear()
        for tasks in cc.jobs.values():
            orphans.extend(t for t in tasks if not t.done)
        cc.jobs.clear()
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
                tried.append(str(server))
                continue
            try:
                return await self._connect(server)
            except OSError as exc:
                logger.info("cannot use %s: %s", server, exc)
                failed.add(server)
                tried.append(str(server))
        raise NoServerError(f"no server reachable (tried {', '.join(tried) or 'none'})")

    # -- packets from the server --

    def _on_packet(self, cc: _ClientConn, packet: Packet) -> None:
        ptype = packet.type
        args = packet.args
        if ptype is PacketType.JOB_CREATED and cc.pending:
            slot = cc.pending[0]
            if type(slot) is _BatchSlot:
                index = slot.next
                slot.next = index + 1
                if slot.next >= slot.end:
                    cc.pending.popleft()
                slot.batch._answer(index, args[0], None)
                return
        if ptype is PacketType.WORK_COMPLETE or ptype is PacketType.WORK_FAIL or (
            ptype is PacketType.WORK_EXCEPTION
        ):
            handle = args[0]
            tasks = cc.jobs.pop(handle, None)
            if tasks is None and ptype is PacketType.WORK_FAIL and handle.endswith(b"\0"):
                # gearmand turns WORK_EXCEPTION into WORK_FAIL with a trailing NUL (§1.3).
                tasks = cc.jobs.pop(handle.rstrip(b"\0"), None)
            if tasks is None:
                logger.debug("conn %d: %s for unknown handle %r", cc.conn.id, ptype.name, handle)
                return
            for task in tasks:
                if ptype is PacketType.WORK_COMPLETE:
                    task.result = args[1]
                    task._finish(TaskState.COMPLETE, "on_complete")
                elif ptype is PacketType.WORK_FAIL:
                    task._finish(TaskState.FAILED, "on_fail")
                else:
                    task.exception = args[1]
                    task._finish(TaskState.EXCEPTION, "on_exception")
        elif ptype is PacketType.JOB_CREATED:
            entry = cc.pending.popleft() if cc.pending else None
            if not isinstance(entry, Task):
                self._confused(cc, packet)
                return
            handle = args[0]
            entry.handle = handle
            entry.server = cc.conn.address
            entry.state = TaskState.CREATED
            entry._callback("on_created")
            if entry.background:
                entry._finish(TaskState.CREATED, None)
            else:
                cc.jobs.setdefault(handle, []).append(entry)
        elif ptype in (PacketType.WORK_DATA, PacketType.WORK_WARNING, PacketType.WORK_STATUS):
            for task in cc.jobs.get(args[0], ()):
                if ptype is PacketType.WORK_DATA:
                    task.data_chunks.append(args[1])
                    task._callback("on_data")
                elif ptype is PacketType.WORK_WARNING:
                    task.warnings.append(args[1])
                    task._callback("on_warning")
                else:
                    task.numerator = _int(args[1])
                    task.denominator = _int(args[2])
                    task._callback("on_status")
        elif ptype in (
            PacketType.STATUS_RES,
            PacketType.STATUS_RES_UNIQUE,
            PacketType.ECHO_RES,
            PacketType.OPTION_RES,
        ):
            entry = cc.pending.popleft() if cc.pending else None
            if not isinstance(entry, _Reply):
                self._confused(cc, packet)
                return
            entry.set(packet)
        elif ptype is PacketType.ERROR:
            error = ServerError(
                args[0].decode("latin-1"), args[1].decode("utf-8", "replace")
            )
            entry = cc.pending.popleft() if cc.pending else None
            logger.info("conn %d: server error %s", cc.conn.id, error)
            if isinstance(entry, _BatchSlot):
                index = entry.next
                entry.next = index + 1
                if entry.next < entry.end:
                    cc.pending.appendleft(entry)
                entry.batch._answer(index, None, error)
            elif isinstance(entry, Task):
                entry._fail_with(error)
            elif entry is not None:
                entry.fail(error)
        else:
            logger.debug("conn %d: ignoring %s", cc.conn.id, ptype.name)

    def _confused(self, cc: _ClientConn, packet: Packet) -> None:
        logger.error("conn %d: %r does not answer any request; closing", cc.conn.id, packet)
        cc.conn.reason = f"unexpected {packet.type.name}"
        cc.conn.close()

    # -- submitting --

    async def _submit(self, task: Task, failed: set[ServerAddress] | None = None) -> None:
        task._attempts += 1
        order = self._pool.order(task.unique)
        cc = self._conns.get(order[0])
        if cc is None or cc.conn.closed or task._attempts > 1 or failed:
            # Not the plain case (first try, the best server connected): route it.
            try:
                if task._attempts > 2 * len(self._pool.servers) + 2:
                    raise NoServerError(
                        f"gave up on {task!r} after {task._attempts - 1} attempts"
                    )
                cc = await self._route(
                    task.unique, failed if failed is not None else set(), order
                )
            except NoServerError as exc:
                task._fail_with(exc)
                return
        task.state = TaskState.SUBMITTED
        cc.pending.append(task)
        cc.conn.send(task._encode())

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
        data = [p if type(p) is bytes else _b(p) for p in payloads]
        batch = BackgroundBatch(
            function, data, unique=unique, priority=priority, on_created=on_created
        )
        await self._submit_batch(batch, 0, len(data), set())
        return batch

    async def _submit_batch(
        self, batch: BackgroundBatch, start: int, end: int, failed: set[ServerAddress]
    ) -> None:
        if start >= end:
            if batch._event is not None and batch.done:
                batch._event.set()
            return
        batch._attempts += 1
        try:
            if batch._attempts > 2 * len(self._pool.servers) + 2:
                raise NoServerError(f"gave up on {batch!r} after {batch._attempts - 1} attempts")
            cc = await self._route(batch.unique, failed)
        except NoServerError as exc:
            batch._fail_rest(start, end, exc)
            return
        cc.pending.append(_BatchSlot(batch, start, end))
        cc.conn.send(batch._encode(start, end))

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
        reply = _Reply()
        cc.pending.append(reply)
        cc.conn.send(request)
        return await reply.wait()

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
        request = encode_req(PacketType.GET_STATUS, _b(handle))
        return await self._poll_status(request, self._status_servers(server), unique=False)

    async def job_status_unique(self, unique: str | bytes) -> JobStatus:
        """GET_STATUS_UNIQUE: status of the job with this unique key (any function)."""
        request = encode_req(PacketType.GET_STATUS_UNIQUE, _b(unique))
        return await self._poll_status(request, self._pool.order(_b(unique)), unique=True)

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
            answer = _status(packet, unique)
            if answer.known:
                return answer
        if answer is None:
            raise NoServerError("no server reachable for a status request")
        return answer

    async def echo(self, data: Bytesish = b"", *, server: ServerAddress | None = None) -> bytes:
        """ECHO_REQ to a server (the first reachable one by default); returns the echo."""
        servers = self._status_servers(server)
        for address in servers:
            try:
                cc = await self._connect(address)
                packet = await self._ask(cc, encode_req(PacketType.ECHO_REQ, _b(data)))
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


def _int(value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


class Client(_TaskQueue):
    """Blocking facade over ``AsyncClient`` for plain scripts.

    Each call runs its own ``trio.run`` with a fresh connection, so it must not be called
    from inside a running trio loop (use ``AsyncClient`` there). Server health (back-off)
    is kept between calls. Callbacks of ``run_tasks`` run in that call's trio loop.
    """

    def __init__(
        self,
        servers: ServerSpec | Iterable[ServerSpec] | None = None,
        *,
        exceptions: bool = True,
        connect_timeout: float = CONNECT_TIMEOUT,
        client_id: str | bytes | None = None,
    ) -> None:
        self._pool = ServerPool()
        if servers is not None:
            for address in to_addresses(servers):
                self._pool.add(address)
        self._options: dict[str, Any] = {
            "exceptions": exceptions,
            "connect_timeout": connect_timeout,
            "client_id": client_id,
        }
        self._queued: list[Task] = []

    def add_server(self, host: str, port: int = 4730) -> None:
        self._pool.add(ServerAddress(host, port))

    def add_servers(self, servers: str) -> None:
        for address in to_addresses(servers):
            self._pool.add(address)

    @property
    def servers(self) -> list[ServerAddress]:
        return self._pool.servers

    def _run(self, call: Callable[[AsyncClient], Awaitable[T]]) -> T:
        async def main() -> T:
            async with AsyncClient(pool=self._pool, **self._options) as client:
                return await call(client)

        return trio.run(main)

    def do(self, function: str | bytes, data: Bytesish = b"", **kw: Any) -> bytes:
        return self._run(lambda c: c.do(function, data, **kw))

    def do_high(self, function: str | bytes, data: Bytesish = b"", **kw: Any) -> bytes:
        return self._run(lambda c: c.do_high(function, data, **kw))

    def do_low(self, function: str | bytes, data: Bytesish = b"", **kw: Any) -> bytes:
        return self._run(lambda c: c.do_low(function, data, **kw))

    def do_background(self, function: str | bytes, data: Bytesish = b"", **kw: Any) -> bytes:
        return self._run(lambda c: c.do_background(function, data, **kw))

    def do_high_background(
        self, function: str | bytes, data: Bytesish = b"", **kw: Any
    ) -> bytes:
        return self._run(lambda c: c.do_high_background(function, data, **kw))

    def do_low_background(
        self, function: str | bytes, data: Bytesish = b"", **kw: Any
    ) -> bytes:
        return self._run(lambda c: c.do_low_background(function, data, **kw))

    def job_status(self, handle: str | bytes | Task) -> JobStatus:
        return self._run(lambda c: c.job_status(handle))

    def job_status_unique(self, unique: str | bytes) -> JobStatus:
        return self._run(lambda c: c.job_status_unique(unique))

    def echo(self, data: Bytesish = b"") -> bytes:
        return self._run(lambda c: c.echo(data))

    def ping(self) -> float:
        """Round-trip time of an ECHO to the first reachable server, in seconds."""
        return self._run(lambda c: c.ping())

    def run_tasks(self, tasks: Iterable[Task] | None = None, **callbacks: Any) -> list[Task]:
        """Run the queued tasks (or ``tasks``); same callbacks as ``AsyncClient.run_tasks``."""
        todo = list(tasks) if tasks is not None else self._queued
        if tasks is None:
            self._queued = []
        return self._run(lambda c: c.run_tasks(todo, **callbacks))

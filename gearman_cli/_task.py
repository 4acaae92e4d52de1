"""What a client submits and what it learns back: ``Task``, ``BackgroundBatch`` and the
one-shot ``Reply``. Sans-IO: plain state and transitions, no sockets and no trio (an async
``wait`` imports trio when it is called).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

from protocol import SUBMIT_TYPE_FOR, Packet, PacketType, Priority, encode_req, req_encoder

from ._errors import GearmanError, JobExceptionError, JobFailedError
from ._log import get_logger
from ._servers import ServerAddress

logger = get_logger("gearman_cli.client")

if TYPE_CHECKING:
    from datetime import datetime

    When: TypeAlias = float | int | datetime

Bytesish = bytes | bytearray | memoryview | str

#: Fast encoders of each (priority, background) submit; Task checks the NUL rule itself.
_SUBMIT = {key: req_encoder(ptype) for key, ptype in SUBMIT_TYPE_FOR.items()}


def to_bytes(value: Bytesish) -> bytes:
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


def status_from(packet: Packet, unique: bool = False) -> JobStatus:
    """The JobStatus a STATUS_RES (or STATUS_RES_UNIQUE) packet carries."""
    args = packet.args
    return JobStatus(
        args[1] == b"1",
        args[2] == b"1",
        to_int(args[3]),
        to_int(args[4]),
        to_int(args[5]) if unique else None,
    )


def to_int(value: bytes) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


TaskCallback = Callable[["Task"], object]


class TaskCallbacks:
    """Callbacks for a task's events. Each gets the Task and runs where the packet is read,
    so it must not block (in the blocking ``Client`` it runs inside the call)."""

    __slots__ = ("on_created", "on_data", "on_warning", "on_status", "on_complete",
                 "on_fail", "on_exception")

    def __init__(
        self,
        on_created: TaskCallback | None = None,
        on_data: TaskCallback | None = None,
        on_warning: TaskCallback | None = None,
        on_status: TaskCallback | None = None,
        on_complete: TaskCallback | None = None,
        on_fail: TaskCallback | None = None,
        on_exception: TaskCallback | None = None,
    ) -> None:
        self.on_created = on_created
        self.on_data = on_data
        self.on_warning = on_warning
        self.on_status = on_status
        self.on_complete = on_complete
        self.on_fail = on_fail
        self.on_exception = on_exception

    def __repr__(self) -> str:
        given = [name for name in self.__slots__ if getattr(self, name) is not None]
        return f"TaskCallbacks({', '.join(given)})"


def _epoch(when: float | int | datetime) -> int:
    timestamp = getattr(when, "timestamp", None)  # a datetime (not imported: start-up)
    if timestamp is not None:
        return int(timestamp())
    return int(when)  # type: ignore[arg-type]


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
        "_hooks",
        "_attempts",
        "_shown",
        "_skip",
    )

    def __init__(
        self,
        function: str | bytes,
        data: Bytesish = b"",
        *,
        unique: str | bytes | None = None,
        priority: Priority = Priority.NORMAL,
        background: bool = False,
        when: When | None = None,
        app_data: Any = None,
        callbacks: TaskCallbacks | None = None,
    ) -> None:
        self.function: bytes = to_bytes(function)
        self.data: bytes = to_bytes(data)
        self.unique: bytes = to_bytes(unique) if unique is not None else b""
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
        #: Every WORK_DATA / WORK_WARNING payload, in order (each byte once, even when a
        #: failover ran the job again).
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
        self._hooks: list[Callable[[Task], None]] = []
        self._attempts = 0
        #: WORK_DATA bytes handed to ``data_chunks`` so far, and how many bytes of the
        #: current attempt's WORK_DATA repeat them (after a failover) and are dropped.
        self._shown = 0
        self._skip = 0

    @classmethod
    def status_of(cls, handle: str | bytes, *, app_data: Any = None) -> Task:
        """A status task: running it asks the servers for ``handle``'s status."""
        task = cls(b"", app_data=app_data)
        task.status_handle = to_bytes(handle)
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
            raise JobExceptionError(self.handle, self.function, self.exception or b"",
                                    task=self)
        if self.state is TaskState.FAILED:
            raise JobFailedError(self.handle, self.function, task=self)
        if self.error is not None:
            raise self.error
        raise GearmanError(f"task {self!r} has not finished")

    async def wait(self) -> bytes:
        """Wait until the task is done (in a trio task); return ``outcome()``."""
        if not self._done:
            import trio

            event = trio.Event()
            self._hooks.append(lambda _task: event.set())
            await event.wait()
        return self.outcome()

    # -- transitions, driven by a connection's packets --

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
        for hook in list(self._hooks):
            hook(self)

    def _fail_with(self, error: GearmanError) -> None:
        self.error = error
        self._finish(TaskState.ERROR, "on_fail")

    def _data(self, chunk: bytes) -> None:
        """A WORK_DATA payload; after a failover, the bytes already shown are dropped."""
        skip = self._skip
        if skip:
            if len(chunk) <= skip:
                self._skip = skip - len(chunk)
                return
            chunk = chunk[skip:]
            self._skip = 0
        self._shown += len(chunk)
        self.data_chunks.append(chunk)
        self._callback("on_data")

    def _reset(self) -> None:
        """Before a resubmission: the new run's first ``_shown`` data bytes repeat ours."""
        self.state = TaskState.NEW
        self.handle = None
        self.server = None
        self.numerator = self.denominator = 0
        self._skip = self._shown

    def _encode(self) -> bytes:
        if self.when is not None:
            return encode_req(
                PacketType.SUBMIT_JOB_EPOCH,
                self.function,
                self.unique,
                str(self.when).encode(),
                self.data,
            )
        # __init__ checked the NUL rule for function and unique.
        return _SUBMIT[(self.priority, self.background)](self.function, self.unique, self.data)


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
        "_hooks",
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
        self.function: bytes = to_bytes(function)
        self.unique: bytes = to_bytes(unique) if unique is not None else b""
        if b"\0" in self.function or b"\0" in self.unique:
            raise ValueError("function names and unique keys cannot contain NUL bytes")
        self.priority = Priority(priority)
        self.payloads = payloads
        self.handles: list[bytes | None] = [None] * len(payloads)
        self.errors: list[tuple[int, GearmanError]] = []
        #: How many payloads got their answer (JOB_CREATED or an error).
        self.answered = 0
        self.on_created = on_created
        self._hooks: list[Callable[[], None]] = []
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
        """Wait until every payload has its answer (in a trio task); the batch itself
        (errors do not raise: look at ``errors``)."""
        if not self.done:
            import trio

            event = trio.Event()
            self._hooks.append(event.set)
            await event.wait()
        return self

    def _encode(self, start: int, end: int) -> bytes:
        ptype = SUBMIT_TYPE_FOR[(self.priority, True)]
        submit = req_encoder(ptype, fixed=(self.function, self.unique))
        return b"".join([submit(p) for p in self.payloads[start:end]])

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
        if self.answered >= len(self.payloads):
            self._wake()

    def _wake(self) -> None:
        hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook()

    def _fail_rest(self, start: int, end: int, error: GearmanError) -> None:
        for index in range(start, end):
            self._answer(index, None, error)


class BatchSlot:
    """The FIFO entry of a batch's jobs ``next .. end`` on one connection: the next
    ``end - next`` request replies belong to it."""

    __slots__ = ("batch", "next", "end")

    def __init__(self, batch: BackgroundBatch, start: int, end: int) -> None:
        self.batch = batch
        self.next = start
        self.end = end


class Reply:
    """A one-shot slot for the reply to GET_STATUS, ECHO_REQ or OPTION_REQ."""

    __slots__ = ("packet", "error", "done", "_hooks")

    def __init__(self) -> None:
        self.packet: Packet | None = None
        self.error: GearmanError | None = None
        self.done = False
        self._hooks: list[Callable[[], None]] = []

    def set(self, packet: Packet) -> None:
        self.packet = packet
        self._end()

    def fail(self, error: GearmanError) -> None:
        self.error = error
        self._end()

    def _end(self) -> None:
        self.done = True
        hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook()

    def result(self) -> Packet:
        """The reply packet, or raise why there is none."""
        if self.error is not None:
            raise self.error
        assert self.packet is not None
        return self.packet

    async def wait(self) -> Packet:
        if not self.done:
            import trio

            event = trio.Event()
            self._hooks.append(event.set)
            await event.wait()
        return self.result()


class TaskQueue:
    """``add_task`` and its variants, shared by the async client and the blocking one."""

    _queued: list[Task]

    def add_task(
        self,
        function: str | bytes,
        data: Bytesish = b"",
        *,
        unique: str | bytes | None = None,
        priority: Priority = Priority.NORMAL,
        background: bool = False,
        when: When | None = None,
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

    def add_task_high(
        self,
        function: str | bytes,
        data: Bytesish = b"",
        *,
        unique: str | bytes | None = None,
        app_data: Any = None,
        callbacks: TaskCallbacks | None = None,
    ) -> Task:
        return self.add_task(function, data, unique=unique, priority=Priority.HIGH,
                             app_data=app_data, callbacks=callbacks)

    def add_task_low(
        self,
        function: str | bytes,
        data: Bytesish = b"",
        *,
        unique: str | bytes | None = None,
        app_data: Any = None,
        callbacks: TaskCallbacks | None = None,
    ) -> Task:
        return self.add_task(function, data, unique=unique, priority=Priority.LOW,
                             app_data=app_data, callbacks=callbacks)

    def add_task_background(
        self,
        function: str | bytes,
        data: Bytesish = b"",
        *,
        unique: str | bytes | None = None,
        when: When | None = None,
        app_data: Any = None,
        callbacks: TaskCallbacks | None = None,
    ) -> Task:
        return self.add_task(function, data, unique=unique, background=True, when=when,
                             app_data=app_data, callbacks=callbacks)

    def add_task_high_background(
        self,
        function: str | bytes,
        data: Bytesish = b"",
        *,
        unique: str | bytes | None = None,
        app_data: Any = None,
        callbacks: TaskCallbacks | None = None,
    ) -> Task:
        return self.add_task(function, data, unique=unique, priority=Priority.HIGH,
                             background=True, app_data=app_data, callbacks=callbacks)

    def add_task_low_background(
        self,
        function: str | bytes,
        data: Bytesish = b"",
        *,
        unique: str | bytes | None = None,
        app_data: Any = None,
        callbacks: TaskCallbacks | None = None,
    ) -> Task:
        return self.add_task(function, data, unique=unique, priority=Priority.LOW,
                             background=True, app_data=app_data, callbacks=callbacks)

    def add_task_status(self, handle: str | bytes, *, app_data: Any = None) -> Task:
        """Queue a status task: ``run_tasks`` fills its ``known``/``running``/num/den."""
        task = Task.status_of(handle, app_data=app_data)
        self._queued.append(task)
        return task

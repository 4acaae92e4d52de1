"""The worker's small parts: ``Job`` (one assigned job as a callback sees it, with the
``send_*`` methods that report back from a trio task or a thread alike), a registered
function, and one connection's grab state."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from protocol import PacketType, encode_req, req_encoder

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["Job", "Result"]

Result = bytes | bytearray | memoryview | str | None
JobCallback = Callable[["Job"], Result] | Callable[["Job"], Awaitable[Result]]

_ASSIGN = (PacketType.JOB_ASSIGN, PacketType.JOB_ASSIGN_UNIQ, PacketType.JOB_ASSIGN_ALL)


_work_complete = req_encoder(PacketType.WORK_COMPLETE)


def _b(value: Result) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode()
    return bytes(value)


class Job:
    """One assigned job, given to the function's callback.

    ``data`` (also ``workload``), ``function``, ``unique``, ``handle``, ``reducer`` are the
    assignment's fields; ``app_data`` is what ``add_function`` was given; ``sequence`` is
    the job's place in the order of assignment. The ``send_*``
    methods never block and work from async callbacks and from threads alike.
    """

    __slots__ = (
        "handle",
        "function",
        "unique",
        "data",
        "reducer",
        "app_data",
        "sequence",
        "attempt",
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
        sequence: int = 0,
    ) -> None:
        self.handle = handle
        self.function = function
        self.unique = unique
        self.data = data
        self.reducer = reducer
        self.app_data = app_data
        #: The order the server assigned the job in: 0, 1, 2, ... over the worker's life
        #: (all servers). Callbacks of concurrent jobs may start in any order; this does not.
        self.sequence = sequence
        #: Which attempt at this job this is (1 = the first run): our gearmand says so
        #: to workers that ask (``AsyncWorker(attempts=True)`` sends ``OPTION_REQ
        #: attempts``); None otherwise, or from a server that does not.
        self.attempt: int | None = None
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
        handle = self.handle
        if b"\0" in handle:  # only a hand-made Job; let the checked encoder refuse it
            self._final(encode_req(PacketType.WORK_COMPLETE, handle, _b(result)))
            return
        self._final(_work_complete(handle, result if type(result) is bytes else _b(result)))

    def send_fail(self) -> None:
        """WORK_FAIL: the job failed; the callback's return value is then ignored."""
        self._final(encode_req(PacketType.WORK_FAIL, self.handle))

    def send_exception(self, data: Result) -> None:
        """WORK_EXCEPTION: ends the job (the server deletes it; nothing may follow)."""
        self._final(encode_req(PacketType.WORK_EXCEPTION, self.handle, _b(data)))


class _Function:
    __slots__ = ("name", "callback", "timeout", "app_data", "is_async", "inline")

    def __init__(
        self,
        name: bytes,
        callback: JobCallback,
        timeout: float | None,
        app_data: Any,
        is_async: bool,
        inline: bool = False,
    ) -> None:
        self.name = name
        self.callback = callback
        self.timeout = timeout
        self.app_data = app_data
        self.is_async = is_async
        self.inline = inline

    def register_packet(self) -> bytes:
        if self.timeout is None:
            return encode_req(PacketType.CAN_DO, self.name)
        ms = max(1, math.ceil(self.timeout * 1000))
        return encode_req(PacketType.CAN_DO_TIMEOUT, self.name, str(ms).encode())


class _Session:
    """One live, registered connection and where its grabs stand.

    ``outstanding`` GRABs were sent and are not answered yet (replies come in order).
    ``empty``: a GRAB came back NO_JOB since the last wake-up, so no new GRAB is sent until
    a NOOP; once every outstanding GRAB is answered the session sends PRE_SLEEP and is
    ``sleeping`` until the server's NOOP. ``paused``: the server refused a GRAB (ERROR), so
    the session waits a second before grabbing again.
    """

    __slots__ = ("conn", "outstanding", "sleeping", "empty", "paused", "closed", "changed",
                 "attempt")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        #: The attempt number announced for the next assignment (OPTION_RES attempt=N).
        self.attempt: int | None = None
        self.outstanding = 0
        self.sleeping = False
        self.empty = False
        self.paused = False
        self.closed = False
        #: Set when the session's timer (idle poll, pause after ERROR) must look again.
        self.changed = trio.Event()

    @property
    def wants_jobs(self) -> bool:
        return not (self.sleeping or self.empty or self.paused or self.closed)

    def notify(self) -> None:
        self.changed.set()


_GRAB = encode_req(PacketType.GRAB_JOB_UNIQ)
_PRE_SLEEP = encode_req(PacketType.PRE_SLEEP)

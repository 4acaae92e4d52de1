"""One assigned job as a worker's callback sees it: its fields and the ``send_*`` methods
that report back to the server (from a trio task or from a thread alike)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from protocol import PacketType, encode_req, req_encoder

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["Job", "Result"]

Result = bytes | bytearray | memoryview | str | None

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



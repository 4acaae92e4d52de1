"""The client's protocol state for one connection, without I/O: what was sent and is not
answered yet, which handles belong to which tasks, and what each packet from the server
does to them. Driven by ``AsyncClient`` (trio) and by the blocking ``Client`` (sockets).

Replies that answer a request (JOB_CREATED, STATUS_RES, ECHO_RES, OPTION_RES, ERROR) come
back in request order, so they are matched FIFO; WORK_* packets are matched by handle.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from protocol import Packet, PacketType, encode_req

from ._errors import ConnectionLostError, ServerError
from ._log import get_logger
from ._servers import ServerAddress
from ._task import BackgroundBatch, BatchSlot, Reply, Task, TaskState, to_int

logger = get_logger("gearman_cli.client")

Pending = Task | Reply | BatchSlot

_OPTION_EXCEPTIONS = encode_req(PacketType.OPTION_REQ, b"exceptions")


class ConnCore:
    """One connection's client state. ``send`` queues bytes for the server; ``close`` is
    called (with a reason) when the server says something that answers nothing."""

    __slots__ = ("address", "id", "pending", "jobs", "send", "close")

    def __init__(
        self,
        address: ServerAddress,
        conn_id: int,
        send: Callable[[bytes], None],
        close: Callable[[str], None],
    ) -> None:
        self.address = address
        self.id = conn_id
        self.pending: deque[Pending] = deque()
        self.jobs: dict[bytes, list[Task]] = {}
        self.send = send
        self.close = close

    # -- requests --

    def hello(self, client_id: bytes | None, exceptions: bool) -> None:
        """What a fresh connection sends first."""
        if client_id is not None:
            self.send(encode_req(PacketType.SET_CLIENT_ID, client_id))
        if exceptions:
            self.pending.append(Reply())
            self.send(_OPTION_EXCEPTIONS)

    def submit(self, task: Task) -> None:
        task.state = TaskState.SUBMITTED
        self.pending.append(task)
        self.send(task._encode())

    def submit_batch(self, batch: BackgroundBatch, start: int, end: int) -> None:
        self.pending.append(BatchSlot(batch, start, end))
        self.send(batch._encode(start, end))

    def ask(self, request: bytes) -> Reply:
        reply = Reply()
        self.pending.append(reply)
        self.send(request)
        return reply

    @property
    def busy(self) -> bool:
        """Something sent here still waits for an answer."""
        return bool(self.pending or self.jobs)

    def lost(self) -> tuple[list[Task], list[BatchSlot]]:
        """The connection ended: fail the replies awaited; return the tasks and batch
        slots to resubmit elsewhere."""
        orphans: list[Task] = []
        batches: list[BatchSlot] = []
        for entry in self.pending:
            if isinstance(entry, Task):
                orphans.append(entry)
            elif isinstance(entry, BatchSlot):
                batches.append(entry)
            else:
                entry.fail(ConnectionLostError(f"connection to {self.address} lost"))
        self.pending.clear()
        for tasks in self.jobs.values():
            orphans.extend(t for t in tasks if not t.done)
        self.jobs.clear()
        return orphans, batches

    # -- packets from the server --

    def on_packet(self, packet: Packet) -> None:
        handler = _HANDLERS.get(packet.type)
        if handler is None:
            logger.debug("conn %d: ignoring %s", self.id, packet.type.name)
        else:
            handler(self, packet)

    def _confused(self, packet: Packet) -> None:
        logger.error("conn %d: %r does not answer any request; closing", self.id, packet)
        self.close(f"unexpected {packet.type.name}")

    def _job_created(self, packet: Packet) -> None:
        entry = self.pending[0] if self.pending else None
        if type(entry) is BatchSlot:
            index = entry.next
            entry.next = index + 1
            if entry.next >= entry.end:
                self.pending.popleft()
            entry.batch._answer(index, packet.args[0], None)
            return
        if not isinstance(entry, Task):
            self._confused(packet)
            return
        self.pending.popleft()
        handle = packet.args[0]
        entry.handle = handle
        entry.server = self.address
        entry.state = TaskState.CREATED
        entry._callback("on_created")
        if entry.background:
            entry._finish(TaskState.CREATED, None)
        else:
            self.jobs.setdefault(handle, []).append(entry)

    def _final(self, packet: Packet) -> list[Task] | None:
        handle = packet.args[0]
        tasks = self.jobs.pop(handle, None)
        if tasks is None and packet.type is PacketType.WORK_FAIL and handle.endswith(b"\0"):
            # gearmand turns WORK_EXCEPTION into WORK_FAIL with a trailing NUL.
            tasks = self.jobs.pop(handle.rstrip(b"\0"), None)
        if tasks is None:
            logger.debug("conn %d: %s for unknown handle %r", self.id, packet.type.name, handle)
        return tasks

    def _work_complete(self, packet: Packet) -> None:
        for task in self._final(packet) or ():
            task.result = packet.args[1]
            task._finish(TaskState.COMPLETE, "on_complete")

    def _work_fail(self, packet: Packet) -> None:
        for task in self._final(packet) or ():
            task._finish(TaskState.FAILED, "on_fail")

    def _work_exception(self, packet: Packet) -> None:
        for task in self._final(packet) or ():
            task.exception = packet.args[1]
            task._finish(TaskState.EXCEPTION, "on_exception")

    def _work_data(self, packet: Packet) -> None:
        for task in self.jobs.get(packet.args[0], ()):
            task._data(packet.args[1])

    def _work_warning(self, packet: Packet) -> None:
        for task in self.jobs.get(packet.args[0], ()):
            task.warnings.append(packet.args[1])
            task._callback("on_warning")

    def _work_status(self, packet: Packet) -> None:
        args = packet.args
        for task in self.jobs.get(args[0], ()):
            task.numerator = to_int(args[1])
            task.denominator = to_int(args[2])
            task._callback("on_status")

    def _reply(self, packet: Packet) -> None:
        entry = self.pending.popleft() if self.pending else None
        if not isinstance(entry, Reply):
            self._confused(packet)
            return
        entry.set(packet)

    def _error(self, packet: Packet) -> None:
        args = packet.args
        error = ServerError(args[0].decode("latin-1"), args[1].decode("utf-8", "replace"))
        entry = self.pending.popleft() if self.pending else None
        logger.info("conn %d: server error %s", self.id, error)
        if isinstance(entry, BatchSlot):
            index = entry.next
            entry.next = index + 1
            if entry.next < entry.end:
                self.pending.appendleft(entry)
            entry.batch._answer(index, None, error)
        elif isinstance(entry, Task):
            entry._fail_with(error)
        elif entry is not None:
            entry.fail(error)


_HANDLERS: dict[PacketType, Callable[[ConnCore, Packet], None]] = {
    PacketType.JOB_CREATED: ConnCore._job_created,
    PacketType.WORK_COMPLETE: ConnCore._work_complete,
    PacketType.WORK_FAIL: ConnCore._work_fail,
    PacketType.WORK_EXCEPTION: ConnCore._work_exception,
    PacketType.WORK_DATA: ConnCore._work_data,
    PacketType.WORK_WARNING: ConnCore._work_warning,
    PacketType.WORK_STATUS: ConnCore._work_status,
    PacketType.STATUS_RES: ConnCore._reply,
    PacketType.STATUS_RES_UNIQUE: ConnCore._reply,
    PacketType.ECHO_RES: ConnCore._reply,
    PacketType.OPTION_RES: ConnCore._reply,
    PacketType.ERROR: ConnCore._error,
}


def give_up_after(servers: int) -> int:
    """Attempts allowed for one task or batch before it fails with NoServerError."""
    return 2 * servers + 2

"""The admin text protocol, client side, without I/O: reply types, the rule that ends a
reply, and the parsing of list replies. Driven by ``AsyncAdmin`` (trio) and by the
blocking ``Admin`` (plain socket, also used by ``gearadmin``).

Rule: a reply ends at its ``.`` line (lists) or its one ``OK``/``ERR`` line, never at a
silence.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from ._errors import AdminError, ConnectionLostError

#: Commands whose reply is a list ending with a ``.`` line (first word).
LIST_COMMANDS = frozenset({"status", "workers", "prioritystatus", "show"})

#: Admin lines can be long (``workers`` lists every function of a connection).
MAX_LINE = 16 * 1024 * 1024


class AdminReply(NamedTuple):
    """A reply: ``kind`` is ``"list"`` (``lines`` without the final ``.``), ``"ok"`` or
    ``"err"`` (``lines`` is the one line). Lines have no line end."""

    kind: Literal["list", "ok", "err"]
    lines: tuple[bytes, ...]

    @property
    def ok(self) -> bool:
        return self.kind != "err"

    @property
    def value(self) -> bytes:
        """The text after ``OK ``/``ERR `` for one-line replies (``b""`` for a bare ``OK``)."""
        if self.kind == "list" or not self.lines:
            return b""
        _, _, rest = self.lines[0].partition(b" ")
        return rest


class FunctionStatus(NamedTuple):
    """One ``status`` line."""

    function: bytes
    total: int
    running: int
    workers: int


class PriorityStatus(NamedTuple):
    """One ``prioritystatus`` line: queued (not running) jobs per level."""

    function: bytes
    high: int
    normal: int
    low: int
    workers: int


class WorkerInfo(NamedTuple):
    """One ``workers`` line (every connection, not only workers)."""

    fd: bytes
    address: bytes
    client_id: bytes
    functions: tuple[bytes, ...]


class JobInfo(NamedTuple):
    """One ``show jobs`` line."""

    handle: bytes
    retries: int
    ignore: bool
    queued: bool


class DeadLetterInfo(NamedTuple):
    """One ``show dead`` line (our gearmand): a job that used up its retries."""

    function: bytes
    handle: bytes
    unique: bytes
    attempts: int
    first_failed: float
    last_failed: float
    error: str


class JobResult(NamedTuple):
    """The ``result`` reply (our gearmand): ``state`` is ``queued``, ``running``,
    ``done``, ``failed`` or ``unknown``; ``data`` is WORK_COMPLETE's data (done) or the
    failure's text (failed), else None."""

    state: str
    attempts: int
    data: bytes | None


def ints(fields: list[bytes], n: int) -> list[int]:
    out = []
    for field in fields[:n]:
        try:
            out.append(int(field))
        except ValueError:
            out.append(0)
    return out + [0] * (n - len(out))


def is_list_command(line: bytes) -> bool:
    words = line.split()
    return bool(words) and words[0].decode("latin-1").lower() in LIST_COMMANDS


def command_line(command: str | bytes) -> bytes:
    """The command as one line without its line end (``ValueError`` for several)."""
    line = command.encode() if isinstance(command, str) else bytes(command)
    line = line.rstrip(b"\r\n")
    if b"\n" in line:
        raise ValueError("an admin command is one line")
    return line


def word(value: str | bytes) -> bytes:
    """One admin argument (``ValueError`` for a space, line end or NUL)."""
    out = value.encode() if isinstance(value, str) else bytes(value)
    if not out or any(c in out for c in b" \r\n\0"):
        raise ValueError(f"{out!r} cannot be sent as one admin word")
    return out


class ReplyReader:
    """Collects the lines of one reply: ``feed`` each line (``None`` at EOF) until it
    returns the AdminReply."""

    __slots__ = ("is_list", "lines")

    def __init__(self, is_list: bool) -> None:
        self.is_list = is_list
        self.lines: list[bytes] | None = None

    def feed(self, line: bytes | None) -> AdminReply | None:
        if self.lines is None:
            if line is None:
                raise ConnectionLostError("the server closed the connection without a reply")
            if line.startswith(b"ERR") and (not self.is_list or b"\t" not in line):
                return AdminReply("err", (line,))
            if not self.is_list:
                return AdminReply("ok", (line,))
            self.lines = []
        if line is None:
            raise ConnectionLostError("the server closed the connection mid-list")
        if line == b".":
            return AdminReply("list", tuple(self.lines))
        self.lines.append(line)
        return None


def checked(reply: AdminReply) -> AdminReply:
    """``reply``, or ``AdminError`` for an ``ERR`` reply."""
    if reply.kind == "err":
        raise AdminError(reply.lines[0].decode("utf-8", "replace"))
    return reply


def parse_status(reply: AdminReply) -> list[FunctionStatus]:
    out = []
    for line in reply.lines:
        fields = line.split(b"\t")
        total, running, workers = ints(fields[1:], 3)
        out.append(FunctionStatus(fields[0], total, running, workers))
    return out


def parse_prioritystatus(reply: AdminReply) -> list[PriorityStatus]:
    out = []
    for line in reply.lines:
        fields = line.split(b"\t")
        high, normal, low, workers = ints(fields[1:], 4)
        out.append(PriorityStatus(fields[0], high, normal, low, workers))
    return out


def parse_workers(reply: AdminReply) -> list[WorkerInfo]:
    out = []
    for line in reply.lines:
        fd, _, rest = line.partition(b" ")
        address, _, rest = rest.partition(b" ")
        client_id, _, functions = rest.partition(b" :")
        out.append(WorkerInfo(fd, address, client_id, tuple(functions.split())))
    return out


def parse_show_jobs(reply: AdminReply) -> list[JobInfo]:
    out = []
    for line in reply.lines:
        fields = line.split(b"\t")
        retries, ignore, queued = ints(fields[1:], 3)
        out.append(JobInfo(fields[0], retries, bool(ignore), bool(queued)))
    return out


def maxqueue_line(function: str | bytes, sizes: tuple[int, ...]) -> bytes:
    if len(sizes) > 3:
        raise ValueError("maxqueue takes at most three sizes")
    return b" ".join([b"maxqueue", word(function), *(str(int(n)).encode() for n in sizes)])


def parse_show_dead(reply: AdminReply) -> list[DeadLetterInfo]:
    out = []
    for line in reply.lines:
        fields = line.split(b"\t")
        if len(fields) < 7:
            continue
        (attempts,) = ints(fields[3:4], 1)
        try:
            first, last = float(fields[4]), float(fields[5])
        except ValueError:
            first = last = 0.0
        out.append(DeadLetterInfo(fields[0], fields[1], fields[2], attempts, first, last,
                                  b"\t".join(fields[6:]).decode("utf-8", "replace")))
    return out


def dead_line(command: str, function: str | bytes, handle: str | bytes | None) -> bytes:
    """``retry|drop dead FUNCTION HANDLE|all``."""
    target = word(handle) if handle is not None else b"all"
    return b" ".join([command.encode(), b"dead", word(function), target])


def result_line(handle: str | bytes | None, function: str | bytes | None,
                unique: str | bytes | None) -> bytes:
    """``result HANDLE`` or ``result unique FUNCTION KEY``."""
    if handle is not None:
        return b"result " + word(handle)
    if function is None or unique is None:
        raise ValueError("give a handle, or a function and a unique key")
    return b"result unique " + word(function) + b" " + word(unique)


def parse_result(reply: AdminReply) -> JobResult:
    import base64
    import binascii

    fields = reply.value.split()
    state = fields[0].decode("latin-1") if fields else "unknown"
    if len(fields) < 2:
        return JobResult(state, 0, None)
    (attempts,) = ints(fields[1:2], 1)
    try:
        data = base64.b64decode(fields[2], validate=True) if len(fields) > 2 else b""
    except binascii.Error:
        data = b""
    return JobResult(state, attempts, data)

"""The admin text protocol, client side (spec §3): send a command, read its reply to the
terminator. Rule: a reply ends at its ``.`` line (lists) or its one ``OK``/``ERR`` line,
never at a silence.

Example::

    from gearman_cli import Admin

    admin = Admin("127.0.0.1:4730")
    for row in admin.status():
        print(row.function, row.total, row.running, row.workers)
    print(admin.version(), admin.getpid())

With trio, several commands on one connection::

    async with AsyncAdmin("127.0.0.1:4730") as admin:
        await admin.create_function("reverse")
        reply = await admin.raw("workers")      # AdminReply: kind + raw lines
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, TypeVar

import trio

from protocol import NEED_DATA, AdminCommand, ConnectionClosed, Parser, RemoteProtocolError

from ._connection import CONNECT_TIMEOUT, RECEIVE_SIZE, open_stream
from ._errors import AdminError, ConnectionLostError
from ._servers import ServerAddress, ServerSpec, default_servers, to_addresses

__all__ = [
    "Admin",
    "AdminReply",
    "AsyncAdmin",
    "FunctionStatus",
    "JobInfo",
    "LIST_COMMANDS",
    "PriorityStatus",
    "WorkerInfo",
]

T = TypeVar("T")

#: Commands whose reply is a list ending with a ``.`` line (first word, or first two).
LIST_COMMANDS = frozenset({"status", "workers", "prioritystatus", "show"})

#: Admin lines can be long (``workers`` lists every function of a connection).
_MAX_LINE = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class AdminReply:
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


@dataclass(frozen=True, slots=True)
class FunctionStatus:
    """One ``status`` line."""

    function: bytes
    total: int
    running: int
    workers: int


@dataclass(frozen=True, slots=True)
class PriorityStatus:
    """One ``prioritystatus`` line: queued (not running) jobs per level."""

    function: bytes
    high: int
    normal: int
    low: int
    workers: int


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One ``workers`` line (every connection, not only workers)."""

    fd: bytes
    address: bytes
    client_id: bytes
    functions: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class JobInfo:
    """One ``show jobs`` line."""

    handle: bytes
    retries: int
    ignore: bool
    queued: bool


def _ints(fields: list[bytes], n: int) -> list[int]:
    out = []
    for field in fields[:n]:
        try:
            out.append(int(field))
        except ValueError:
            out.append(0)
    return out + [0] * (n - len(out))


def _is_list_command(line: bytes) -> bool:
    words = line.split()
    return bool(words) and words[0].decode("latin-1").lower() in LIST_COMMANDS


class AsyncAdmin:
    """One admin connection to one server. Use as ``async with AsyncAdmin(server):``.

    ``server`` defaults to the first of ``GEARMAN_SERVERS`` (else ``localhost:4730``).
    Commands are sent and answered one at a time, in order.
    """

    def __init__(
        self, server: ServerSpec | None = None, *, connect_timeout: float = CONNECT_TIMEOUT
    ) -> None:
        self.server: ServerAddress = (
            to_addresses(server)[0] if server is not None else default_servers()[0]
        )
        self._connect_timeout = connect_timeout
        self._stream: trio.SocketStream | None = None
        self._parser = Parser(max_line_length=_MAX_LINE)
        self._lock = trio.Lock()

    async def __aenter__(self) -> AsyncAdmin:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def connect(self) -> None:
        """Open the connection (``OSError`` when the server cannot be reached)."""
        if self._stream is None:
            self._stream = await open_stream(self.server, self._connect_timeout)
            self._parser = Parser(max_line_length=_MAX_LINE)

    async def aclose(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.aclose()

    async def _line(self) -> bytes | None:
        """The next reply line without its line end; None at EOF."""
        assert self._stream is not None
        while True:
            try:
                event = self._parser.next_event()
            except RemoteProtocolError as exc:
                raise ConnectionLostError(f"unreadable admin reply: {exc}") from exc
            if isinstance(event, AdminCommand):
                return event.line
            if isinstance(event, ConnectionClosed):
                return None
            if event is not NEED_DATA:
                raise ConnectionLostError(f"binary packet in an admin reply: {event!r}")
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except (OSError, trio.BrokenResourceError) as exc:
                raise ConnectionLostError(f"admin connection lost: {exc!r}") from exc
            self._parser.receive_data(data)

    async def raw(self, command: str | bytes, *, is_list: bool | None = None) -> AdminReply:
        """Send one command line and read its whole reply (``ERR`` is returned, not raised).

        ``is_list`` says whether a ``.``-terminated list is expected; by default it is
        decided from the command word (``status``, ``workers``, ``prioritystatus``,
        ``show ...``).
        """
        line = command.encode() if isinstance(command, str) else bytes(command)
        line = line.rstrip(b"\r\n")
        if b"\n" in line:
            raise ValueError("an admin command is one line")
        if is_list is None:
            is_list = _is_list_command(line)
        async with self._lock:
            await self.connect()
            assert self._stream is not None
            try:
                await self._stream.send_all(line + b"\r\n")
            except (OSError, trio.BrokenResourceError) as exc:
                raise ConnectionLostError(f"admin connection lost: {exc!r}") from exc
            first = await self._line()
            if first is None:
                raise ConnectionLostError("the server closed the connection without a reply")
            if first.startswith(b"ERR") and (not is_list or b"\t" not in first):
                return AdminReply("err", (first,))
            if not is_list:
                return AdminReply("ok", (first,))
            lines: list[bytes] = []
            current: bytes | None = first
            while current != b".":
                if current is None:
                    raise ConnectionLostError("the server closed the connection mid-list")
                lines.append(current)
                current = await self._line()
            return AdminReply("list", tuple(lines))

    async def command(self, command: str | bytes, *, is_list: bool | None = None) -> AdminReply:
        """Like ``raw`` but raise ``AdminError`` on an ``ERR`` reply."""
        reply = await self.raw(command, is_list=is_list)
        if reply.kind == "err":
            raise AdminError(reply.lines[0].decode("utf-8", "replace"))
        return reply

    async def _ok_value(self, command: str) -> str:
        reply = await self.command(command, is_list=False)
        return reply.value.decode("utf-8", "replace")

    # -- typed helpers --

    async def status(self) -> list[FunctionStatus]:
        """``status``: per function, total (queued + running), running, workers."""
        out = []
        for line in (await self.command("status", is_list=True)).lines:
            fields = line.split(b"\t")
            out.append(FunctionStatus(fields[0], *_ints(fields[1:], 3)))
        return out

    async def prioritystatus(self) -> list[PriorityStatus]:
        """``prioritystatus``: per function, queued jobs per level, and workers."""
        out = []
        for line in (await self.command("prioritystatus", is_list=True)).lines:
            fields = line.split(b"\t")
            out.append(PriorityStatus(fields[0], *_ints(fields[1:], 4)))
        return out

    async def workers(self) -> list[WorkerInfo]:
        """``workers``: every connection with its registered functions."""
        out = []
        for line in (await self.command("workers", is_list=True)).lines:
            fd, _, rest = line.partition(b" ")
            address, _, rest = rest.partition(b" ")
            client_id, _, functions = rest.partition(b" :")
            out.append(WorkerInfo(fd, address, client_id, tuple(functions.split())))
        return out

    async def show_jobs(self) -> list[JobInfo]:
        """``show jobs``: handle, retries, ignore (doomed), queued (background/stored)."""
        out = []
        for line in (await self.command("show jobs", is_list=True)).lines:
            fields = line.split(b"\t")
            retries, ignore, queued = _ints(fields[1:], 3)
            out.append(JobInfo(fields[0], retries, bool(ignore), bool(queued)))
        return out

    async def show_unique_jobs(self) -> list[bytes]:
        """``show unique jobs``: every job's unique key."""
        return list((await self.command("show unique jobs", is_list=True)).lines)

    async def version(self) -> str:
        return await self._ok_value("version")

    async def getpid(self) -> int:
        return int(await self._ok_value("getpid"))

    async def verbose(self) -> str:
        """The server's log level name (``verbose``)."""
        return await self._ok_value("verbose")

    async def cancel_job(self, handle: str | bytes) -> None:
        """``cancel job H``; ``AdminError`` (``UNKNOWN_JOB``) for an unknown handle."""
        await self.command(b"cancel job " + _word(handle), is_list=False)

    async def create_function(self, name: str | bytes) -> None:
        await self.command(b"create function " + _word(name), is_list=False)

    async def drop_function(self, name: str | bytes) -> None:
        await self.command(b"drop function " + _word(name), is_list=False)

    async def maxqueue(self, function: str | bytes, *sizes: int) -> None:
        """``maxqueue F [all | high normal [low]]``; no size resets to unlimited."""
        if len(sizes) > 3:
            raise ValueError("maxqueue takes at most three sizes")
        words = [b"maxqueue", _word(function), *(str(int(n)).encode() for n in sizes)]
        await self.command(b" ".join(words), is_list=False)

    async def shutdown(self, graceful: bool = False) -> None:
        """``shutdown`` [``graceful``] (our server; the C gearmand answers UNKNOWN_COMMAND).

        The server may close the connection right after (or instead of) its ``OK``.
        """
        with contextlib.suppress(ConnectionLostError):
            await self.command("shutdown graceful" if graceful else "shutdown", is_list=False)


def _word(value: str | bytes) -> bytes:
    word = value.encode() if isinstance(value, str) else bytes(value)
    if not word or any(c in word for c in b" \r\n\0"):
        raise ValueError(f"{word!r} cannot be sent as one admin word")
    return word


class Admin:
    """Blocking facade over ``AsyncAdmin``: each call runs its own ``trio.run`` on a fresh
    connection (do not call it from inside a trio loop)."""

    def __init__(
        self, server: ServerSpec | None = None, *, connect_timeout: float = CONNECT_TIMEOUT
    ) -> None:
        self.server = server
        self._connect_timeout = connect_timeout

    def _run(self, call: Callable[[AsyncAdmin], Awaitable[T]]) -> T:
        async def main() -> T:
            async with AsyncAdmin(self.server, connect_timeout=self._connect_timeout) as admin:
                return await call(admin)

        return trio.run(main)

    def raw(self, command: str | bytes, *, is_list: bool | None = None) -> AdminReply:
        return self._run(lambda a: a.raw(command, is_list=is_list))

    def command(self, command: str | bytes, *, is_list: bool | None = None) -> AdminReply:
        return self._run(lambda a: a.command(command, is_list=is_list))

    def status(self) -> list[FunctionStatus]:
        return self._run(lambda a: a.status())

    def prioritystatus(self) -> list[PriorityStatus]:
        return self._run(lambda a: a.prioritystatus())

    def workers(self) -> list[WorkerInfo]:
        return self._run(lambda a: a.workers())

    def show_jobs(self) -> list[JobInfo]:
        return self._run(lambda a: a.show_jobs())

    def show_unique_jobs(self) -> list[bytes]:
        return self._run(lambda a: a.show_unique_jobs())

    def version(self) -> str:
        return self._run(lambda a: a.version())

    def getpid(self) -> int:
        return self._run(lambda a: a.getpid())

    def verbose(self) -> str:
        return self._run(lambda a: a.verbose())

    def cancel_job(self, handle: str | bytes) -> None:
        self._run(lambda a: a.cancel_job(handle))

    def create_function(self, name: str | bytes) -> None:
        self._run(lambda a: a.create_function(name))

    def drop_function(self, name: str | bytes) -> None:
        self._run(lambda a: a.drop_function(name))

    def maxqueue(self, function: str | bytes, *sizes: int) -> None:
        self._run(lambda a: a.maxqueue(function, *sizes))

    def shutdown(self, graceful: bool = False) -> None:
        self._run(lambda a: a.shutdown(graceful))

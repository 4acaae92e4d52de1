"""The admin text protocol, client side, on trio: ``AsyncAdmin``. The blocking ``Admin``
(plain sockets, no trio) is in ``_admin_sync``; both share ``_admin_core``.

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
import json
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import trio

from protocol import NEED_DATA, AdminCommand, ConnectionClosed, Parser, RemoteProtocolError

from ._admin_core import (
    LIST_COMMANDS,
    MAX_LINE,
    AdminReply,
    DeadLetterInfo,
    FunctionStatus,
    JobInfo,
    JobResult,
    PriorityStatus,
    ReplyReader,
    WorkerInfo,
    checked,
    command_line,
    dead_line,
    is_list_command,
    maxqueue_line,
    parse_prioritystatus,
    parse_result,
    parse_show_dead,
    parse_show_jobs,
    parse_status,
    parse_workers,
    result_line,
    word,
)
from ._connection import CONNECT_TIMEOUT, RECEIVE_SIZE, open_stream
from ._tls import resolve as resolve_tls

if TYPE_CHECKING:
    from ._tls import SslArg
from ._errors import ConnectionLostError
from ._servers import ServerAddress, ServerSpec, default_servers, to_addresses

__all__ = [
    "LIST_COMMANDS",
    "AdminReply",
    "AsyncAdmin",
    "DeadLetterInfo",
    "FunctionStatus",
    "JobInfo",
    "JobResult",
    "PriorityStatus",
    "WorkerInfo",
]


class AsyncAdmin:
    """One admin connection to one server. Use as ``async with AsyncAdmin(server):``.

    ``server`` defaults to the first of ``GEARMAN_SERVERS`` (else ``localhost:4730``).
    Commands are sent and answered one at a time, in order.
    ``ssl``: an ``ssl.SSLContext`` (see ``tls_context``), True, False, or None (TLS when
    the ``GEARMAN_SSL*`` variables ask for it); the server's certificate and host name are
    always verified (docs/security.md).
    """

    def __init__(
        self, server: ServerSpec | None = None, *, connect_timeout: float = CONNECT_TIMEOUT,
        ssl: SslArg = None,
    ) -> None:
        self.server: ServerAddress = (
            to_addresses(server)[0] if server is not None else default_servers()[0]
        )
        self._connect_timeout = connect_timeout
        self._tls = resolve_tls(ssl)
        self._stream: trio.abc.Stream | None = None
        self._parser = Parser(max_line_length=MAX_LINE)
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
            self._stream = await open_stream(self.server, self._connect_timeout, self._tls)
            self._parser = Parser(max_line_length=MAX_LINE)

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
        line = command_line(command)
        reader = ReplyReader(is_list_command(line) if is_list is None else is_list)
        async with self._lock:
            await self.connect()
            assert self._stream is not None
            try:
                await self._stream.send_all(line + b"\r\n")
            except (OSError, trio.BrokenResourceError) as exc:
                raise ConnectionLostError(f"admin connection lost: {exc!r}") from exc
            while (reply := reader.feed(await self._line())) is None:
                pass
            return reply

    async def command(self, command: str | bytes, *, is_list: bool | None = None) -> AdminReply:
        """Like ``raw`` but raise ``AdminError`` on an ``ERR`` reply."""
        return checked(await self.raw(command, is_list=is_list))

    async def _ok_value(self, command: str) -> str:
        reply = await self.command(command, is_list=False)
        return reply.value.decode("utf-8", "replace")

    # -- typed helpers --

    async def status(self) -> list[FunctionStatus]:
        """``status``: per function, total (queued + running), running, workers."""
        return parse_status(await self.command("status", is_list=True))

    async def prioritystatus(self) -> list[PriorityStatus]:
        """``prioritystatus``: per function, queued jobs per level, and workers."""
        return parse_prioritystatus(await self.command("prioritystatus", is_list=True))

    async def workers(self) -> list[WorkerInfo]:
        """``workers``: every connection with its registered functions."""
        return parse_workers(await self.command("workers", is_list=True))

    async def show_jobs(self) -> list[JobInfo]:
        """``show jobs``: handle, retries, ignore (doomed), queued (background/stored)."""
        return parse_show_jobs(await self.command("show jobs", is_list=True))

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
        await self.command(b"cancel job " + word(handle), is_list=False)

    async def show_dead(self, function: str | bytes | None = None) -> list[DeadLetterInfo]:
        """``show dead [FUNCTION]`` (our gearmand): the dead letters, oldest first."""
        line = b"show dead" + (b" " + word(function) if function is not None else b"")
        return parse_show_dead(await self.command(line, is_list=True))

    async def retry_dead(self, function: str | bytes, handle: str | bytes | None = None) -> int:
        """``retry dead FUNCTION HANDLE|all``: queue dead letters again (all when no
        handle); how many. ``AdminError`` (``UNKNOWN_JOB``) for an unknown handle."""
        reply = await self.command(dead_line("retry", function, handle), is_list=False)
        return int(reply.value or b"0")

    async def drop_dead(self, function: str | bytes, handle: str | bytes | None = None) -> int:
        """``drop dead FUNCTION HANDLE|all``: forget dead letters; how many."""
        reply = await self.command(dead_line("drop", function, handle), is_list=False)
        return int(reply.value or b"0")

    async def result(self, handle: str | bytes | None = None, *,
               function: str | bytes | None = None,
               unique: str | bytes | None = None) -> JobResult:
        """``result HANDLE`` or ``result unique FUNCTION KEY`` (our gearmand with
        ``--result-ttl``): the job's state, and its result once done or failed."""
        return parse_result(await self.command(result_line(handle, function, unique),
                                              is_list=False))

    async def create_function(self, name: str | bytes) -> None:
        await self.command(b"create function " + word(name), is_list=False)

    async def drop_function(self, name: str | bytes) -> None:
        await self.command(b"drop function " + word(name), is_list=False)

    async def maxqueue(self, function: str | bytes, *sizes: int) -> None:
        """``maxqueue F [all | high normal [low]]``; no size resets to unlimited."""
        await self.command(maxqueue_line(function, sizes), is_list=False)

    async def watch(self, *functions: str | bytes) -> AsyncIterator[dict[str, Any]]:
        """``watch [FUNCTION ...]`` (our gearmand): each job life-cycle event, as a dict,
        of the given functions (all when none) until the connection ends. The connection
        is given over to the events: use one ``AsyncAdmin`` for nothing else. ``AdminError``
        when the server refuses (the C gearmand: ``UNKNOWN_COMMAND``)::

            async with AsyncAdmin("127.0.0.1:4730") as admin:
                async for event in admin.watch("reverse"):
                    print(event["event"], event["handle"], event.get("run"))
        """
        line = b" ".join([b"watch", *(word(f) for f in functions)])
        async with self._lock:
            await self.connect()
            assert self._stream is not None
            try:
                await self._stream.send_all(line + b"\r\n")
            except (OSError, trio.BrokenResourceError) as exc:
                raise ConnectionLostError(f"admin connection lost: {exc!r}") from exc
            reply = ReplyReader(False).feed(await self._line())
            assert reply is not None
            checked(reply)
            while (event := await self._line()) is not None:
                yield json.loads(event)

    async def shutdown(self, graceful: bool = False) -> None:
        """``shutdown`` [``graceful``] (our server; the C gearmand answers UNKNOWN_COMMAND).

        The server may close the connection right after (or instead of) its ``OK``.
        """
        with contextlib.suppress(ConnectionLostError):
            await self.command("shutdown graceful" if graceful else "shutdown", is_list=False)

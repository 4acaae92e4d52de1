"""The blocking ``Admin``: the admin text protocol on a plain socket (no trio), one
command and its whole reply at a time. ``gearadmin`` runs on it; ``timeout`` bounds each
wait for the server (connect, and every read), so a server that never answers cannot
hang a script.
"""

from __future__ import annotations

import _socket
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from protocol import NEED_DATA, AdminCommand, ConnectionClosed, Parser, RemoteProtocolError

from ._admin_core import (
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
from ._errors import ConnectionLostError
from ._servers import ServerAddress, ServerSpec, default_servers, to_addresses
from ._sync import RECEIVE_SIZE, connect

if TYPE_CHECKING:
    from ._tls import SslArg

__all__ = ["Admin", "AdminTimeout"]

#: Default time allowed for a connect, in seconds.
CONNECT_TIMEOUT = 5.0


class AdminTimeout(ConnectionLostError):
    """The server did not answer within the read timeout."""


class Admin:
    """Blocking admin client. Each call opens a connection, sends the command, reads the
    whole reply and closes; ``with Admin(...) as admin:`` keeps one connection for several
    calls. ``timeout`` (seconds, ``None`` = wait for ever) bounds each read.
    ``ssl``: an ``ssl.SSLContext`` (see ``tls_context``), True, False, or None (TLS when
    the ``GEARMAN_SSL*`` variables ask for it); the server's certificate and host name are
    always verified (docs/security.md)."""

    def __init__(
        self,
        server: ServerSpec | None = None,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        timeout: float | None = None,
        ssl: SslArg = None,
    ) -> None:
        from ._tls import resolve

        self._tls = resolve(ssl)
        self.server: ServerAddress = (
            to_addresses(server)[0] if server is not None else default_servers()[0]
        )
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._sock: _socket.socket | None = None
        self._parser = Parser(max_line_length=MAX_LINE)
        self._held = 0

    def __enter__(self) -> Admin:
        self.connect()
        self._held += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        self._held -= 1
        if not self._held:
            self.close()

    def connect(self) -> None:
        """Open the connection (``OSError`` when the server cannot be reached)."""
        if self._sock is None:
            sock = connect(self.server, self._connect_timeout, self._tls)
            sock.settimeout(self._timeout)
            self._sock = sock
            self._parser = Parser(max_line_length=MAX_LINE)

    def close(self) -> None:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            with contextlib.suppress(OSError):
                sock.close()

    def _line(self) -> bytes | None:
        assert self._sock is not None
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
                data = self._sock.recv(RECEIVE_SIZE)
            except TimeoutError:
                raise AdminTimeout(
                    f"no reply from {self.server} within {self._timeout:g}s") from None
            except OSError as exc:
                raise ConnectionLostError(
                    f"admin connection lost: {exc.strerror or exc}") from exc
            self._parser.receive_data(data)

    def raw(self, command: str | bytes, *, is_list: bool | None = None) -> AdminReply:
        """Send one command line and read its whole reply (``ERR`` is returned, not raised)."""
        line = command_line(command)
        reader = ReplyReader(is_list_command(line) if is_list is None else is_list)
        with self:
            assert self._sock is not None
            try:
                self._sock.sendall(line + b"\r\n")
            except TimeoutError:
                raise AdminTimeout(f"{self.server} did not take the command") from None
            except OSError as exc:
                raise ConnectionLostError(
                    f"admin connection lost: {exc.strerror or exc}") from exc
            while (reply := reader.feed(self._line())) is None:
                pass
            return reply

    def command(self, command: str | bytes, *, is_list: bool | None = None) -> AdminReply:
        """Like ``raw`` but raise ``AdminError`` on an ``ERR`` reply."""
        return checked(self.raw(command, is_list=is_list))

    def _ok_value(self, command: str) -> str:
        return self.command(command, is_list=False).value.decode("utf-8", "replace")

    def status(self) -> list[FunctionStatus]:
        return parse_status(self.command("status", is_list=True))

    def prioritystatus(self) -> list[PriorityStatus]:
        return parse_prioritystatus(self.command("prioritystatus", is_list=True))

    def workers(self) -> list[WorkerInfo]:
        return parse_workers(self.command("workers", is_list=True))

    def show_jobs(self) -> list[JobInfo]:
        return parse_show_jobs(self.command("show jobs", is_list=True))

    def show_unique_jobs(self) -> list[bytes]:
        return list(self.command("show unique jobs", is_list=True).lines)

    def version(self) -> str:
        return self._ok_value("version")

    def getpid(self) -> int:
        return int(self._ok_value("getpid"))

    def verbose(self) -> str:
        return self._ok_value("verbose")

    def cancel_job(self, handle: str | bytes) -> None:
        self.command(b"cancel job " + word(handle), is_list=False)

    def show_dead(self, function: str | bytes | None = None) -> list[DeadLetterInfo]:
        """``show dead [FUNCTION]`` (our gearmand): the dead letters, oldest first."""
        line = b"show dead" + (b" " + word(function) if function is not None else b"")
        return parse_show_dead(self.command(line, is_list=True))

    def retry_dead(self, function: str | bytes, handle: str | bytes | None = None) -> int:
        """``retry dead FUNCTION HANDLE|all``: queue dead letters again (all when no
        handle); how many. ``AdminError`` (``UNKNOWN_JOB``) for an unknown handle."""
        reply = self.command(dead_line("retry", function, handle), is_list=False)
        return int(reply.value or b"0")

    def drop_dead(self, function: str | bytes, handle: str | bytes | None = None) -> int:
        """``drop dead FUNCTION HANDLE|all``: forget dead letters; how many."""
        reply = self.command(dead_line("drop", function, handle), is_list=False)
        return int(reply.value or b"0")

    def result(self, handle: str | bytes | None = None, *,
               function: str | bytes | None = None,
               unique: str | bytes | None = None) -> JobResult:
        """``result HANDLE`` or ``result unique FUNCTION KEY`` (our gearmand with
        ``--result-ttl``): the job's state, and its result once done or failed."""
        return parse_result(self.command(result_line(handle, function, unique),
                                              is_list=False))

    def create_function(self, name: str | bytes) -> None:
        self.command(b"create function " + word(name), is_list=False)

    def drop_function(self, name: str | bytes) -> None:
        self.command(b"drop function " + word(name), is_list=False)

    def maxqueue(self, function: str | bytes, *sizes: int) -> None:
        self.command(maxqueue_line(function, sizes), is_list=False)

    def watch_lines(self, command: str | bytes) -> Iterator[bytes]:
        """Send a ``watch`` line; yield each event line (JSON) until the connection ends.
        ``AdminError`` when the server refuses it."""
        checked(self.raw(command, is_list=False))
        while (line := self._line()) is not None:
            yield line

    def watch(self, *functions: str | bytes) -> Iterator[dict[str, Any]]:
        """``watch [FUNCTION ...]`` (our gearmand): each job event as a dict, for ever
        (the connection is given over to it). See ``AsyncAdmin.watch``."""
        import json

        for line in self.watch_lines(b" ".join([b"watch", *(word(f) for f in functions)])):
            yield json.loads(line)

    def shutdown(self, graceful: bool = False) -> None:
        with contextlib.suppress(ConnectionLostError):
            self.command("shutdown graceful" if graceful else "shutdown", is_list=False)

"""What the ``gearman`` and ``gearadmin`` commands were asked to do: frozen options objects,
the exit statuses, and the server list. Rule: parsed once by click, never mutated after."""

from __future__ import annotations

import enum
import os
from typing import Any, NamedTuple

from ._servers import DEFAULT_HOST, DEFAULT_PORT, ServerAddress, parse_servers

#: ``GEARMAN_SERVER`` is the tool's own variable (reference §6); ``GEARMAN_SERVERS`` is the
#: library's. Both are comma lists of ``host[:port]``.
ENV_TOOL = "GEARMAN_SERVER"
ENV_LIBRARY = "GEARMAN_SERVERS"


class ExitCode(enum.IntEnum):
    """Exit statuses of both commands (documented in gearman.1 and gearadmin.1)."""

    OK = 0
    #: gearman: a job failed (WORK_FAIL) or raised (WORK_EXCEPTION);
    #: gearadmin: the server answered a command with ERR.
    JOB_FAILED = 1
    #: Bad usage: unknown option, missing argument, no function, no command, a TLS file.
    USAGE = 2
    #: No server could be reached, or the connection was lost or refused a request.
    NO_SERVER = 3
    #: The -t timeout elapsed with no progress; gearman --result: unknown or expired.
    TIMEOUT = 4
    #: gearman --result: the job is still queued or running.
    NOT_DONE = 5
    #: Interrupted by SIGINT, when dying by the signal itself did not work.
    INTERRUPTED = 130


class GearmanOptions(NamedTuple):
    """Every option of ``gearman`` (reference §6), plus our additions."""

    servers: tuple[ServerAddress, ...]
    functions: tuple[str, ...]
    args: tuple[str, ...] = ()
    worker: bool = False
    background: bool = False
    priority: str = "normal"  # "high", "normal" or "low"
    lines: bool = False  # -n or -N
    strip_newline: bool = False  # -N
    no_stdin: bool = False  # -s
    unique: str | None = None
    count: int = 0  # type: ignore[assignment]  # -c, 0 = forever (shadows tuple.count)
    pid_file: str | None = None
    timeout_ms: int | None = None  # -t
    prefix: bool = False  # -P
    verbose: bool = False  # -v
    daemon: bool = False  # -d
    window: int = 512  # --window: line-mode jobs in flight
    concurrency: int = 1  # --concurrency: worker jobs at once
    job_timeout: float | None = None  # --job-timeout, seconds
    tls: Any = None  # -S / --ssl-*: an ssl.SSLContext, or None for plaintext
    result: str | None = None  # --result HANDLE (or unique key with -f)


class AdminCommand(NamedTuple):
    """One admin command in the order given: the flag's name and the line to send."""

    flag: str
    line: str


class AdminOptions(NamedTuple):
    """Every option of ``gearadmin`` (reference §7), plus ``--json`` and ``--shutdown``."""

    server: ServerAddress
    commands: tuple[AdminCommand, ...]
    json: bool = False
    table: bool | None = None  # None = when stdout is a terminal
    timeout: float | None = None  # -t, seconds; None = wait for ever
    tls: Any = None  # -S / --ssl-*: an ssl.SSLContext, or None for plaintext


class TopOptions(NamedTuple):
    """``gearadmin --top``: the servers, seconds between refreshes, the sort column."""

    servers: tuple[ServerAddress, ...]
    interval: float = 1.0
    sort: str = "function"
    timeout: float | None = None  # -t, seconds; None = 10 s per read
    tls: Any = None  # -S / --ssl-*: an ssl.SSLContext, or None for plaintext


def resolve_servers(host: str | None, port: int | None) -> tuple[ServerAddress, ...]:
    """``-h``/``-p`` when given, else ``GEARMAN_SERVER``, else ``GEARMAN_SERVERS``, else
    localhost:4730. ``ValueError`` for a malformed environment variable."""
    if host is not None or port is not None:
        return (ServerAddress(host or DEFAULT_HOST, port or DEFAULT_PORT),)
    for var in (ENV_TOOL, ENV_LIBRARY):
        spec = os.environ.get(var, "")
        if spec.strip():
            try:
                servers = parse_servers(spec)
            except ValueError as exc:
                raise ValueError(f"{var}: {exc}") from None
            if servers:
                return tuple(servers)
    return (ServerAddress(DEFAULT_HOST, DEFAULT_PORT),)

"""The ``gearadmin`` command: the admin text protocol from the shell.

Parse-only layer: each command option, in the order given, becomes one ``AdminCommand``
of a frozen ``AdminOptions``; ``_cli_admin`` sends them on a plain blocking socket.
"""

from __future__ import annotations

import sys

from . import _signals
from ._argv import ArgParser, Option, UsageError, int_range, positive_float, tls_options

TYPE_CHECKING = False  # not typing's: start-up time
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from ._cli_options import AdminCommand, AdminOptions, TopOptions

DEFAULT_HOST = "localhost"
_OK, _USAGE = 0, 2

EPILOG = """\
Commands run in the order given, on one connection; each reply is read to its end.
Exit status: 0 success; 1 the server answered a command with ERR; 2 usage error (no
command, unknown option, -S); 3 the server cannot be reached or closed the connection;
4 no reply within -t. On SIGINT or SIGTERM it dies by that signal.
"""

#: Option dest -> admin line (a value option appends its argument).
COMMANDS = {
    "server_version": "version",
    "server_verbose": "verbose",
    "create_function": "create function",
    "cancel_job": "cancel job",
    "drop_function": "drop function",
    "show_unique_jobs": "show unique jobs",
    "show_jobs": "show jobs",
    "getpid": "getpid",
    "status": "status",
    "priority_status": "prioritystatus",
    "workers": "workers",
    "shutdown": "shutdown",
    "shutdown_graceful": "shutdown graceful",
    "dead": "show dead",
    "retry_dead": "retry dead",
    "drop_dead": "drop dead",
}

#: Value options whose value may be two words: FUNCTION [HANDLE] (all when no handle).
_DEAD = frozenset({"retry_dead", "drop_dead"})


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        import socket

        try:
            return socket.getservbyname(value, "tcp")
        except OSError:
            raise ValueError(f"unknown port or service {value!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return port


def _sort_key(value: str) -> str:
    from ._top import sort_key

    return sort_key(value)


def _flag(name: str, help: str) -> Option:
    return Option(name, dest=name[2:].replace("-", "_"), help=help)


def _value(name: str, metavar: str, help: str) -> Option:
    return Option(name, dest=name[2:].replace("-", "_"), multiple=True, metavar=metavar,
                  help=help)


OPTIONS = [
    Option("-h", "--host", dest="host", multiple=True, metavar="TEXT",
           default=DEFAULT_HOST, show_default=True,
           help="Connect to the host (the last one given; with --top, every one given, "
                "each HOST or HOST:PORT)."),
    Option("-p", "--port", dest="port", takes_value=True, metavar="TEXT", default="4730",
           show_default=True, help="Port number or service to use for connection."),
    Option("-t", "--timeout", dest="timeout_ms", takes_value=True, metavar="MS",
           convert=int_range(1),
           help="Give up (exit 4) when the server sends nothing for MS milliseconds "
                "(default: wait for ever, as the reference)."),
    _flag("--server-version", "Fetch the version number for the server."),
    _flag("--server-verbose", "Fetch the verbose setting for the server."),
    _value("--create-function", "FUNCTION", "Create the function from the server."),
    _value("--cancel-job", "HANDLE", "Remove a given job from the server's queue."),
    _value("--drop-function", "FUNCTION", "Drop the function from the server."),
    _flag("--show-unique-jobs", "Show unique IDs of jobs on the server."),
    _flag("--show-jobs", "Show all jobs on the server."),
    _flag("--getpid", "Get Process ID for the server."),
    _flag("--status", "Status for the server."),
    _flag("--priority-status", "Queued jobs status by priority."),
    _flag("--workers", "Workers for the server."),
    _flag("--shutdown", "Shut the server down (our gearmand)."),
    _flag("--shutdown-graceful",
          "Stop accepting, finish running work, then shut down (our gearmand)."),
    _flag("--dead", "Show the dead letters: jobs that used up their retries (our gearmand)."),
    _value("--retry-dead", "'FUNCTION [HANDLE]'",
           "Queue a function's dead letters again: the one with HANDLE, or all (our "
           "gearmand)."),
    _value("--drop-dead", "'FUNCTION [HANDLE]'",
           "Forget a function's dead letters: the one with HANDLE, or all (our gearmand)."),
    Option("--watch", dest="watch",
           help="Stream job events (our gearmand) as JSON lines until Ctrl-C; the "
                "arguments, if any, are the functions to watch."),
    Option("--json", dest="json", help="Print every reply as one JSON array on stdout."),
    Option("--top", dest="top",
           help="A live view of the servers' functions (queued, running, workers, rates, "
                "wait and run times, failures), redrawn every --interval; q quits, s "
                "changes the sort column. Not on a terminal: one snapshot, TAB-separated."),
    Option("--interval", dest="interval", takes_value=True, metavar="SECONDS",
           convert=positive_float, default=1.0, show_default=True,
           help="Seconds between two refreshes of --top."),
    Option("--sort", dest="sort", takes_value=True, metavar="COLUMN", convert=_sort_key,
           help="The column --top sorts by first (default: function)."),
    *tls_options(),
]

PARSER = ArgParser(
    "gearadmin",
    "[OPTIONS]",
    "Send admin commands to a Gearman job server and print the replies.",
    EPILOG,
    OPTIONS,
    help_names=("--help",),
)


def parse(argv: Sequence[str]) -> AdminOptions | TopOptions | None:
    """The options of a command line (None: help was printed); ``UsageError`` if bad."""
    parsed = PARSER.parse(argv)
    if parsed.help:
        sys.stdout.write(PARSER.help_text())
        return None
    from ._cli_options import AdminCommand, AdminOptions
    from ._servers import ServerAddress

    v = parsed.values
    if parsed.args and not v["watch"]:
        raise UsageError(f"Got unexpected extra argument ({' '.join(parsed.args)})")
    from ._tls import cli_context

    tls = cli_context(v)
    # Commands in the order given (the reference runs them in a fixed order).
    commands: list[AdminCommand] = []
    for opt, value in parsed.order:
        line = COMMANDS.get(opt.dest)
        if line is None:
            continue
        flag = opt.names[0]
        if opt.dest in _DEAD:
            words = value.split()
            if not 1 <= len(words) <= 2:
                raise UsageError(f"Invalid value for '{flag}': FUNCTION or 'FUNCTION HANDLE'")
            commands.append(AdminCommand(flag, f"{line} {words[0]} "
                                         f"{words[1] if len(words) == 2 else 'all'}"))
        elif opt.multiple:
            if not value or any(c.isspace() for c in value):
                raise UsageError(f"Invalid value for '{flag}': must be one word")
            commands.append(AdminCommand(flag, f"{line} {value}"))
        else:
            commands.append(AdminCommand(flag, line))
    if v["watch"]:
        if any(not f or any(c.isspace() for c in f) for f in parsed.args):
            raise UsageError("Invalid value for '--watch': each function must be one word")
        # Last whatever its place: it does not end.
        commands.append(AdminCommand("--watch", " ".join(["watch", *parsed.args])))
    try:
        port = _port(v["port"])
    except ValueError as exc:
        raise UsageError(f"Invalid value: {exc}") from None
    timeout_ms = v["timeout_ms"]
    hosts: list[str] = v["host"] or [DEFAULT_HOST]
    if v["top"]:
        if commands:
            raise UsageError(f"--top cannot be combined with {commands[0].flag}")
        if v["json"]:
            raise UsageError("--top cannot be combined with --json")
        return _top_options(hosts, port, v["interval"], v["sort"], timeout_ms, tls)
    if v["sort"] is not None or any(opt.dest == "interval" for opt, _ in parsed.order):
        raise UsageError("--interval and --sort go with --top")
    if not commands:
        raise UsageError("No option execution operation given.")
    return AdminOptions(
        server=ServerAddress(hosts[-1], port),
        commands=tuple(commands),
        json=bool(v["json"]),
        table=None,
        timeout=timeout_ms / 1000 if timeout_ms else None,
        tls=tls,
    )


def _top_options(hosts: list[str], port: int, interval: float, sort: str | None,
                 timeout_ms: int | None, tls: Any = None) -> TopOptions:
    from ._cli_options import TopOptions
    from ._servers import parse_server

    servers = []
    for host in hosts:
        try:
            server = parse_server(host, port)
        except ValueError as exc:
            raise UsageError(f"Invalid value for '-h' / '--host': {exc}") from None
        if server not in servers:
            servers.append(server)
    return TopOptions(servers=tuple(servers), interval=interval, sort=sort or "function",
                      timeout=timeout_ms / 1000 if timeout_ms else None, tls=tls)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gearadmin`` console script; returns the exit status (or dies
    by SIGINT/SIGTERM)."""
    _signals.install()
    try:
        try:
            opts = parse(sys.argv[1:] if argv is None else argv)
        except UsageError as exc:
            PARSER.error(str(exc))
            return _USAGE
        if opts is None:
            return _OK
        from ._cli_options import TopOptions

        if isinstance(opts, TopOptions):
            from ._top import run_top

            return run_top(opts)
        from ._cli_admin import run_admin

        return run_admin(opts)
    except KeyboardInterrupt:
        return _signals.die()


if __name__ == "__main__":
    sys.exit(main())

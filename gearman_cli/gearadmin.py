"""The ``gearadmin`` command: the admin text protocol from the shell (spec §7).

Parse-only click layer: each command option, in the order given, becomes one
``AdminCommand`` of a frozen ``AdminOptions``; ``_cli_admin`` sends them in ``trio.run``.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from ._cli_options import AdminCommand, AdminOptions, ExitCode
from ._servers import DEFAULT_HOST, ServerAddress

EPILOG = """\b
Commands run in the order given, on one connection; each reply is read to its end.
Exit status: 0 success; 1 the server answered a command with ERR; 2 usage error (no
command, unknown option, -S); 3 the server cannot be reached or closed the connection.
"""

#: Option name -> admin line (a value option appends its argument).
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
}


def _record(ctx: click.Context, param: click.Parameter, value: object) -> object:
    # click processes parameters in the order they appear on the command line, so the
    # commands are recorded in the order given (decisions.md).
    name = param.name or ""
    line = COMMANDS[name]
    flag = param.opts[0]
    commands: list[AdminCommand] = ctx.meta.setdefault("gearadmin.commands", [])
    if isinstance(value, tuple):
        for arg in value:
            if not arg or any(c.isspace() for c in arg):
                raise click.BadParameter("must be one word", ctx=ctx, param=param)
            commands.append(AdminCommand(flag, f"{line} {arg}"))
    elif value:
        commands.append(AdminCommand(flag, line))
    return value


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        try:
            return socket.getservbyname(value, "tcp")
        except OSError:
            raise click.BadParameter(f"unknown port or service {value!r}") from None
    if not 0 < port < 65536:
        raise click.BadParameter(f"port {port} out of range")
    return port


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _flag(*decls: str, help: str) -> Decorator:
    return click.option(*decls, is_flag=True, callback=_record, expose_value=False, help=help)


def _value(*decls: str, help: str, metavar: str) -> Decorator:
    return click.option(*decls, multiple=True, callback=_record, expose_value=False,
                        metavar=metavar, help=help)


OPTIONS: list[Decorator] = [
    click.option("-h", "--host", default=DEFAULT_HOST, show_default=True,
                 help="Connect to the host."),
    click.option("-p", "--port", default="4730", show_default=True,
                 help="Port number or service to use for connection."),
    _flag("--server-version", help="Fetch the version number for the server."),
    _flag("--server-verbose", help="Fetch the verbose setting for the server."),
    _value("--create-function", metavar="FUNCTION", help="Create the function from the server."),
    _value("--cancel-job", metavar="HANDLE", help="Remove a given job from the server's queue."),
    _value("--drop-function", metavar="FUNCTION", help="Drop the function from the server."),
    _flag("--show-unique-jobs", help="Show unique IDs of jobs on the server."),
    _flag("--show-jobs", help="Show all jobs on the server."),
    _flag("--getpid", help="Get Process ID for the server."),
    _flag("--status", help="Status for the server."),
    _flag("--priority-status", help="Queued jobs status by priority."),
    _flag("--workers", help="Workers for the server."),
    _flag("--shutdown", help="Shut the server down (our gearmand)."),
    _flag("--shutdown-graceful",
          help="Stop accepting, finish running work, then shut down (our gearmand)."),
    click.option("--json", "as_json", is_flag=True,
                 help="Print every reply as one JSON array on stdout."),
    click.option("-S", "--ssl", is_flag=True, help="Enable SSL connections (not supported yet)."),
]


def _options(f: Callable[..., Any]) -> Callable[..., Any]:
    for decorate in reversed(OPTIONS):
        f = decorate(f)
    return f


@click.command(
    name="gearadmin",
    context_settings={"help_option_names": ["--help"], "max_content_width": 100},
    epilog=EPILOG,
)
@_options
@click.pass_context
def command(ctx: click.Context, host: str, port: str, as_json: bool, ssl: bool) -> int:
    """Send admin commands to a Gearman job server and print the replies."""
    if ssl:
        raise click.UsageError("-S: TLS is not supported yet")
    commands: list[AdminCommand] = ctx.meta.get("gearadmin.commands", [])
    if not commands:
        raise click.UsageError("No option execution operation given.")
    opts = AdminOptions(
        server=ServerAddress(host, _port(port)),
        commands=tuple(commands),
        json=as_json,
        table=None,
    )
    from ._cli_admin import run_admin

    return run_admin(opts)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gearadmin`` console script; returns the exit status."""
    try:
        rc = command.main(
            args=list(argv) if argv is not None else None,
            prog_name="gearadmin",
            standalone_mode=False,
        )
    except click.ClickException as exc:
        exc.show()
        return ExitCode.USAGE if isinstance(exc, click.UsageError) else exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    return int(rc) if isinstance(rc, int) else ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())

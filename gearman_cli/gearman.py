"""The ``gearman`` command: run jobs (client mode) or serve them (worker mode, ``-w``).

Parse-only click layer: the flags of the reference tool (spec §6, fixes in decisions.md)
become a frozen ``GearmanOptions``; ``_cli_client`` / ``_cli_worker`` do the work in
``trio.run``. ``-h`` is the host, so help is ``-H``/``--help``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence

import click

from ._cli_options import ExitCode, GearmanOptions, resolve_servers

EPILOG = """\b
Environment: GEARMAN_SERVER, then GEARMAN_SERVERS (comma lists of host[:port]) name the
servers when -h and -p are not given.
\b
Exit status: 0 success; 1 a job failed or raised; 2 usage error; 3 no server reachable or
connection lost; 4 timeout (-t); 130 interrupted.
\b
Examples:
  gearman -w -f reverse -- rev          # worker: each job runs `rev`
  gearman -f reverse "Hello World!"     # client: prints !dlroW olleH
  seq 1000 | gearman -n -b -f log       # one background job per line
"""


def _record_priority(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    # -I and -L: the last one given wins (getopt order, as the reference).
    if value:
        ctx.meta.setdefault("gearman.priority", []).append(param.name)
    return value


@click.command(
    name="gearman",
    context_settings={
        "help_option_names": ["-H", "--help"],
        # Options end at the first non-option (POSIX getopt), so a worker command's own
        # options are never taken for ours; `--` also works.
        "allow_interspersed_args": False,
        "max_content_width": 100,
    },
    epilog=EPILOG,
)
@click.option("-f", "--function", "functions", multiple=True, metavar="FUNCTION",
              help="Function name to use for jobs (can give many).")
@click.option("-h", "--host", metavar="HOST", help="Job server host (default localhost).")
@click.option("-p", "--port", type=click.IntRange(1, 65535), metavar="PORT",
              help="Job server port (default 4730).")
@click.option("-t", "--timeout", "timeout_ms", type=click.IntRange(min=1), metavar="MS",
              help="Timeout in milliseconds: client gives up (exit 4) after MS without "
                   "progress; worker exits after MS without a job.")
@click.option("-i", "--pid-file", metavar="FILE",
              help="Create a pidfile for the process (removed on exit).")
@click.option("-d", "--daemon", is_flag=True,
              help="Detach: fork, new session, stdio to /dev/null.")
@click.option("-S", "--ssl", is_flag=True, help="Enable SSL connections (not supported yet).")
@click.option("-v", "--verbose", is_flag=True,
              help="Print 'Task created: HANDLE' to stdout for each job created.")
@click.option("-b", "--background", is_flag=True, help="Run jobs in the background.")
@click.option("-I", "--high", is_flag=True, callback=_record_priority,
              help="Run jobs as high priority.")
@click.option("-L", "--low", is_flag=True, callback=_record_priority,
              help="Run jobs as low priority.")
@click.option("-n", "--lines", is_flag=True,
              help="Client: one job per line of stdin (pipelined). "
                   "Worker: send each output line as data.")
@click.option("-N", "--lines-strip", is_flag=True,
              help="Same as -n, but strip off the newline.")
@click.option("-P", "--prefix", is_flag=True,
              help="Prefix all output with the function name.")
@click.option("-s", "--no-stdin", is_flag=True,
              help="Send job without reading from standard input.")
@click.option("-u", "--unique", metavar="UNIQUE", help="Unique key to use for jobs.")
@click.option("-c", "--count", type=click.IntRange(min=0), default=0, metavar="COUNT",
              help="Worker: number of jobs to run before exiting (0 = forever).")
@click.option("-w", "--worker", is_flag=True, help="Run in worker mode.")
@click.option("--window", type=click.IntRange(min=1), default=512, show_default=True,
              help="Client with -n/-N: jobs in flight at once.")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Worker: jobs run at once (default 1, as the C tool, so several "
                   "workers share the load).")
@click.option("--job-timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Worker: kill the command's process group and fail the job after SECONDS.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def command(
    ctx: click.Context,
    functions: tuple[str, ...],
    host: str | None,
    port: int | None,
    timeout_ms: int | None,
    pid_file: str | None,
    daemon: bool,
    ssl: bool,
    verbose: bool,
    background: bool,
    high: bool,
    low: bool,
    lines: bool,
    lines_strip: bool,
    prefix: bool,
    no_stdin: bool,
    unique: str | None,
    count: int,
    worker: bool,
    window: int,
    concurrency: int | None,
    job_timeout: float | None,
    args: tuple[str, ...],
) -> int:
    """Client mode: gearman [options] [<data> ...]

    Worker mode: gearman -w [options] [--] [<command> [<args> ...]]

    A client sends each argument (or all of stdin, or with -n each line) as a job to every
    -f function and writes the results to stdout. A worker runs <command> for each job,
    with the workload on its stdin, and returns its stdout; without a command it writes
    each workload to stdout.
    """
    if ssl:
        raise click.UsageError("-S: TLS is not supported yet")
    if not functions:
        raise click.UsageError("no function given (use -f FUNCTION)")
    try:
        servers = resolve_servers(host, port)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if unique is not None and (b"\0" in unique.encode() or len(unique.encode()) > 64):
        raise click.BadParameter("at most 64 bytes, no NUL", param_hint="-u")
    order: list[str] = ctx.meta.get("gearman.priority", [])
    priority = order[-1] if order else "normal"
    opts = GearmanOptions(
        servers=servers,
        functions=functions,
        args=args,
        worker=worker,
        background=background,
        priority=priority,
        lines=lines or lines_strip,
        strip_newline=lines_strip,
        no_stdin=no_stdin,
        unique=unique,
        count=count,
        pid_file=pid_file,
        timeout_ms=timeout_ms,
        prefix=prefix,
        verbose=verbose,
        daemon=daemon,
        window=window,
        concurrency=concurrency if concurrency is not None else 1,
        job_timeout=job_timeout,
    )
    return run(opts)


def _daemonize() -> None:
    """Fork (the parent exits 0), start a new session, point stdio at /dev/null."""
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def run(opts: GearmanOptions) -> int:
    """Run a parsed command line; returns the exit status."""
    if opts.daemon:
        _daemonize()
    if opts.pid_file:
        try:
            with open(opts.pid_file, "w") as f:
                f.write(f"{os.getpid()}\n")
        except OSError as exc:
            click.echo(f"gearman: cannot write pid file: {exc}", err=True)
            return ExitCode.USAGE
    try:
        if opts.worker:
            from ._cli_worker import run_worker

            return run_worker(opts)
        from ._cli_client import run_client

        return run_client(opts)
    finally:
        if opts.pid_file:
            with contextlib.suppress(OSError):
                os.unlink(opts.pid_file)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gearman`` console script; returns the exit status."""
    try:
        rc = command.main(
            args=list(argv) if argv is not None else None,
            prog_name="gearman",
            standalone_mode=False,
        )
    except click.ClickException as exc:
        exc.show()
        return ExitCode.USAGE if isinstance(exc, click.UsageError) else exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        _quiet_broken_pipe()
        return ExitCode.OK
    return int(rc) if isinstance(rc, int) else ExitCode.OK


def _quiet_broken_pipe() -> None:
    # `gearman ... | head`: the reader went away; exit without a second error at shutdown.
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())

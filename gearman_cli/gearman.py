"""The ``gearman`` command: run jobs (client mode) or serve them (worker mode, ``-w``).

Parse-only layer: the flags of the reference tool (see docs/differences.md for ours)
become a frozen ``GearmanOptions``. A one-off client (jobs from arguments or all of
stdin) runs on the blocking, trio-free ``Client``; ``-n``/``-N`` and ``-w`` run on trio
(``_cli_client`` / ``_cli_worker``). ``-h`` is the host, so help is ``-H``/``--help``.
"""

from __future__ import annotations

import contextlib
import os
import sys

from . import _signals
from ._argv import ArgParser, Option, UsageError, int_range, positive_float, tls_options

TYPE_CHECKING = False  # not typing's: `gearman --help` imports nothing it does not need
if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._cli_options import GearmanOptions

#: Exit statuses (``_cli_options.ExitCode``, not imported for --help).
_OK, _USAGE, _NO_SERVER = 0, 2, 3

DESCRIPTION = """\
Client mode: gearman [options] [<data> ...]

Worker mode: gearman -w [options] [--] [<command> [<args> ...]]

A client sends each argument (or all of stdin, or with -n each line) as a job to every
-f function and writes the results to stdout. A worker runs <command> for each job, with
the workload on its stdin, and returns its stdout; without a command it writes each
workload to stdout.
"""

EPILOG = """\
Environment: GEARMAN_SERVER, then GEARMAN_SERVERS (comma lists of host[:port]) name the
servers when -h and -p are not given.

Exit status: 0 success; 1 a job failed or raised; 2 usage error; 3 no server reachable or
connection lost; 4 timeout (-t). On SIGINT (Ctrl-C) or SIGTERM it cleans up (pid file,
output), then dies by that signal, so a shell loop around it stops too.

Examples:
  gearman -w -f reverse -- rev          # worker: each job runs `rev`
  gearman -f reverse "Hello World!"     # client: prints !dlroW olleH
  seq 1000 | gearman -n -b -f log       # one background job per line
"""

OPTIONS = [
    Option("-f", "--function", dest="functions", multiple=True, metavar="FUNCTION",
           help="Function name to use for jobs (can give many)."),
    Option("-h", "--host", dest="host", takes_value=True, metavar="HOST",
           help="Job server host (default localhost)."),
    Option("-p", "--port", dest="port", takes_value=True, metavar="PORT",
           convert=int_range(1, 65535), help="Job server port (default 4730)."),
    Option("-t", "--timeout", dest="timeout_ms", takes_value=True, metavar="MS",
           convert=int_range(1),
           help="Timeout in milliseconds: client gives up (exit 4) after MS without "
                "progress; worker exits after MS without a job."),
    Option("-i", "--pid-file", dest="pid_file", takes_value=True, metavar="FILE",
           help="Create a pidfile for the process (removed on exit)."),
    Option("-d", "--daemon", dest="daemon",
           help="Detach: fork, new session, stdio to /dev/null (a worker first checks "
                "that a server answers, and exits 3 if none does)."),
    Option("-v", "--verbose", dest="verbose",
           help="Print 'Task created: HANDLE' to stdout for each job created."),
    Option("-b", "--background", dest="background", help="Run jobs in the background."),
    Option("-I", "--high", dest="high", help="Run jobs as high priority."),
    Option("-L", "--low", dest="low", help="Run jobs as low priority."),
    Option("-n", "--lines", dest="lines",
           help="Client: one job per line of stdin (pipelined). "
                "Worker: send each output line as data."),
    Option("-N", "--lines-strip", dest="lines_strip",
           help="Same as -n, but strip off the newline."),
    Option("-P", "--prefix", dest="prefix", help="Prefix all output with the function name."),
    Option("-s", "--no-stdin", dest="no_stdin",
           help="Send job without reading from standard input."),
    Option("-u", "--unique", dest="unique", takes_value=True, metavar="UNIQUE",
           help="Unique key to use for jobs."),
    Option("-c", "--count", dest="count", takes_value=True, metavar="COUNT",
           convert=int_range(0), default=0,
           help="Worker: number of jobs to run before exiting (0 = forever)."),
    Option("-w", "--worker", dest="worker", help="Run in worker mode."),
    Option("--window", dest="window", takes_value=True, metavar="INTEGER",
           convert=int_range(1), default=512, show_default=True,
           help="Client with -n/-N: jobs in flight at once."),
    Option("--concurrency", dest="concurrency", takes_value=True, metavar="INTEGER",
           convert=int_range(1),
           help="Worker: jobs run at once (default 1, as the C tool, so several "
                "workers share the load)."),
    Option("--result", dest="result", takes_value=True, metavar="HANDLE",
           help="Print the result of the background job HANDLE (our gearmand, with "
                "--result-ttl) and exit: 0 done, 1 failed (its error on stderr), 4 unknown "
                "or expired, 5 still queued or running. With -f FUNCTION, HANDLE is the "
                "job's unique key."),
    Option("--job-timeout", dest="job_timeout", takes_value=True, metavar="SECONDS",
           convert=positive_float,
           help="Worker: kill the command's process group and fail the job after SECONDS."),
    *tls_options(),
]

PARSER = ArgParser(
    "gearman",
    "[OPTIONS] [ARGS]...",
    DESCRIPTION,
    EPILOG,
    OPTIONS,
    help_names=("-H", "--help"),
    # Options end at the first non-option (POSIX getopt), so a worker command's own
    # options are never taken for ours; `--` also works.
    interspersed=False,
)


def parse(argv: Sequence[str]) -> GearmanOptions | None:
    """The options of a command line (None: help was printed); ``UsageError`` if bad."""
    parsed = PARSER.parse(argv)
    if parsed.help:
        sys.stdout.write(PARSER.help_text())
        return None
    from ._cli_options import GearmanOptions, resolve_servers
    from ._tls import cli_context

    v = parsed.values
    if not v["functions"] and v["result"] is None:
        raise UsageError("no function given (use -f FUNCTION)")
    if v["result"] is not None and (len(v["functions"]) > 1 or v["worker"] or parsed.args):
        raise UsageError("--result takes one handle (or -f FUNCTION and a unique key), "
                         "and no jobs")
    try:
        servers = resolve_servers(v["host"], v["port"])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    unique = v["unique"]
    if unique is not None and (b"\0" in unique.encode() or len(unique.encode()) > 64):
        raise UsageError("Invalid value for -u: at most 64 bytes, no NUL")
    # -I and -L: the last one given wins (getopt order, as the reference).
    priority = "normal"
    for opt, _ in parsed.order:
        if opt.dest in ("high", "low"):
            priority = opt.dest
    return GearmanOptions(
        servers=servers,
        functions=tuple(v["functions"]),
        args=tuple(parsed.args),
        worker=bool(v["worker"]),
        background=bool(v["background"]),
        priority=priority,
        lines=bool(v["lines"] or v["lines_strip"]),
        strip_newline=bool(v["lines_strip"]),
        no_stdin=bool(v["no_stdin"]),
        unique=unique,
        count=v["count"],
        pid_file=v["pid_file"],
        timeout_ms=v["timeout_ms"],
        prefix=bool(v["prefix"]),
        verbose=bool(v["verbose"]),
        daemon=bool(v["daemon"]),
        window=v["window"],
        concurrency=v["concurrency"] if v["concurrency"] is not None else 1,
        job_timeout=v["job_timeout"],
        tls=cli_context(v),
        result=v["result"],
    )


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


def _check_command(opts: GearmanOptions) -> str | None:
    """Why the worker's command cannot run (not found, not executable), else None."""
    import shutil

    command = opts.args[0]
    if os.sep in command:
        if not os.path.exists(command):
            return f"cannot run {command}: no such file"
        if os.path.isdir(command) or not os.access(command, os.X_OK):
            return f"cannot run {command}: not an executable file"
        return None
    if shutil.which(command) is None:
        return f"cannot run {command}: command not found in PATH"
    return None


def _reachable(opts: GearmanOptions) -> str | None:
    """None when a server of the list accepts a connection, else why none does."""
    from ._servers import why
    from ._sync import connect

    timeout = opts.timeout_ms / 1000 if opts.timeout_ms else 5.0
    reasons = []
    for server in opts.servers:
        try:
            connect(server, timeout, opts.tls).close()
            return None
        except OSError as exc:
            reasons.append(f"{server}: {why(exc)}")
    return f"no server reachable ({'; '.join(reasons)})"


def run(opts: GearmanOptions) -> int:
    """Run a parsed command line; returns the exit status."""
    if opts.worker and opts.args and (problem := _check_command(opts)):
        sys.stderr.write(f"gearman: {problem}\n")
        return _USAGE
    if opts.daemon:
        # A daemon's stderr goes nowhere: say what is wrong before detaching.
        if problem := _reachable(opts):
            sys.stderr.write(f"gearman: {problem}\n")
            return _NO_SERVER
        _daemonize()
    if opts.pid_file:
        from protocol._pidfile import write_pid

        try:
            write_pid(opts.pid_file, os.getpid())  # never seen empty or half written
        except OSError as exc:
            sys.stderr.write(f"gearman: cannot write pid file {opts.pid_file}: "
                             f"{exc.strerror or exc}\n")
            return _USAGE
    try:
        if opts.result is not None:
            from ._cli_result import run_result

            return run_result(opts)
        if opts.worker:
            from ._cli_worker import run_worker

            return run_worker(opts)
        if not opts.lines:
            from ._cli_oneshot import run_oneshot

            return run_oneshot(opts)
        from ._cli_client import run_client

        return run_client(opts)
    finally:
        if opts.pid_file:
            with contextlib.suppress(OSError):
                os.unlink(opts.pid_file)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gearman`` console script; returns the exit status (or dies
    by SIGINT/SIGTERM after cleaning up)."""
    _signals.install()
    try:
        try:
            opts = parse(sys.argv[1:] if argv is None else argv)
        except UsageError as exc:
            PARSER.error(str(exc))
            return _USAGE
        if opts is None:
            return _OK
        rc = run(opts)
        if _signals.received is not None:  # a worker drained after a signal
            return _signals.die()
        return rc
    except KeyboardInterrupt:
        return _signals.die()
    except BrokenPipeError:
        _quiet_broken_pipe()
        return _OK


def _quiet_broken_pipe() -> None:
    # `gearman ... | head`: the reader went away; exit without a second error at shutdown.
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())

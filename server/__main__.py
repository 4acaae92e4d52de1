"""Entry point of the ``gearmand`` command and of ``python -m server``.

Parse (server.cli), set up the process (logs, limits, -d, pid file), then run the server
under trio with the reference's signals (spec §2.12): TERM/INT stop, USR1 stops
gracefully, HUP reopens the log file and reloads the ``--acl-file``.
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import gc
import logging
import os
import pwd
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import trio

from protocol._native import describe as native_describe
from server import cli, daemon, logs
from server.config import ServerConfig
from server.store.base import StoreError

logger = logging.getLogger(__name__)

Address = tuple[str, int]


class Serving(Protocol):
    """What main needs from the server (server.app.Server)."""

    async def serve(self, *, task_status: trio.TaskStatus[Any] = ...) -> None: ...

    def shutdown(self, graceful: bool = False) -> None: ...


ServerFactory = Callable[[ServerConfig], Serving]

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)


def _default_factory(config: ServerConfig) -> Serving:
    from server.app import Server  # the core; imported late so --help stays quick

    return Server(config)


def format_address(address: Any) -> str:
    """``host:port``, with brackets for IPv6 (``[::1]:4730``)."""
    host, port = str(address[0]), int(address[1])
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(config: ServerConfig, factory: ServerFactory, *,
                on_started: Callable[[list[Address]], None],
                on_reopen: Callable[[], None]) -> None:
    """Run one server until it stops, turning signals into shutdown / reopen calls."""
    server = factory(config)
    with trio.open_signal_receiver(*SIGNALS) as signals:
        async with trio.open_nursery() as nursery:
            addresses: list[Address] = await nursery.start(_serve_then_stop, server,
                                                           nursery.cancel_scope)
            on_started([(str(a[0]), int(a[1])) for a in addresses])
            nursery.start_soon(_watch_signals, signals, server, on_reopen,
                               nursery.cancel_scope)


async def _serve_then_stop(server: Serving, scope: trio.CancelScope, *,
                           task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
                           ) -> None:
    await server.serve(task_status=task_status)
    scope.cancel()  # the server is done: stop watching for signals


#: SIGTERM or SIGINT, once one asked the server to stop: after a clean stop, ``main``
#: dies by it (the convention of Unix tools: a shell loop or a supervisor sees why).
stopped_by: int | None = None


async def _watch_signals(signals: Any, server: Serving, on_reopen: Callable[[], None],
                         scope: trio.CancelScope) -> None:
    global stopped_by
    stopping = False
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum in (signal.SIGTERM, signal.SIGINT) and stopped_by is None:
            stopped_by = signum
        if signum == signal.SIGHUP:
            on_reopen()
            reload_acl = getattr(server, "reload_acl", None)
            if reload_acl is not None:
                reload_acl()
        elif signum == signal.SIGUSR1:
            logger.log(logs.NOTICE, "Received %s, shutting down gracefully", name)
            server.shutdown(graceful=True)
            stopping = True
        elif stopping:
            # TERM/INT while already stopping (say, draining after USR1): stop now.
            logger.log(logs.NOTICE, "Received %s again, stopping now", name)
            scope.cancel()
        else:
            logger.log(logs.NOTICE, "Received %s, shutting down", name)
            server.shutdown()
            stopping = True


def run(invocation: cli.Invocation, factory: ServerFactory = _default_factory,
        log_parent: logging.Logger | None = None) -> int:
    """Set up the process as ``invocation`` says and serve; the exit status."""
    global stopped_by
    log_setup = logs.configure(invocation.log, log_parent)
    # Fatal errors are logged; print them on stderr too unless the log goes there already.
    logs_to_stderr = invocation.log.destination == "stderr" or (
        invocation.log.destination != "none" and log_setup.file_handler is None)
    readiness = daemon.Readiness(echo=not logs_to_stderr)
    pid_file: daemon.PidFile | None = None
    try:
        _enable_crash_tracebacks(invocation, log_setup)
        account: pwd.struct_passwd | None = None
        try:
            if invocation.file_descriptors is not None:
                daemon.set_file_descriptor_limit(invocation.file_descriptors)
            if invocation.user is not None:
                account = daemon.lookup_user(invocation.user)
        except daemon.StartupError as exc:
            logger.critical("%s", exc)
            readiness.fail(str(exc))
            return 1
        if invocation.daemon:
            if invocation.log.destination not in ("stderr", "none") \
                    and log_setup.file_handler is None:
                # Detached, stderr is /dev/null: a log that cannot be written is fatal.
                message = f"cannot write the log file {invocation.log.destination}"
                logger.critical("%s", message)
                return 1
            readiness = daemon.daemonize()
        config = invocation.config

        def write_pid_file() -> None:
            # Only once the ports are bound: a start that fails (port in use) never
            # touches the pid file of the server that runs.
            nonlocal pid_file
            if invocation.pid_file is None:
                return
            candidate = daemon.PidFile(invocation.pid_file)
            try:
                candidate.write()
            except daemon.StartupError as exc:
                if invocation.pid_file_explicit:
                    raise
                logger.debug("%s (default pid file, ignored)", exc)
                return
            pid_file = candidate
        logger.info("gearmand %s starting up with pid %d, verbose is set to %s",
                    config.version, os.getpid(), config.verbose)
        for note in invocation.notes:
            logger.info("%s", note)

        def on_started(addresses: list[Address]) -> None:
            write_pid_file()
            if account is not None:
                daemon.switch_user(account)
                logger.info("Switched to user %s", account.pw_name)
            for address in addresses:
                logger.info("Listening on %s", format_address(address))
            logger.info("Queue type: %s", config.queue_type)
            logger.info("Hot modules: %s", native_describe())
            readiness.ready()

        def on_reopen() -> None:
            log_setup.reopen()
            _enable_crash_tracebacks(invocation, log_setup)

        _tune_garbage_collector()
        try:
            trio.run(functools.partial(serve, config, factory, on_started=on_started,
                                       on_reopen=on_reopen))
        except BaseException as raised:
            failure = _unwrap(raised)
            if isinstance(failure, KeyboardInterrupt):
                stopped_by = stopped_by or signal.SIGINT
                logger.log(logs.NOTICE, "Interrupted, shutting down")
            elif isinstance(failure, daemon.StartupError | StoreError | OSError):
                message = _listen_failure(config, failure) if isinstance(failure, OSError) \
                    else str(failure)
                logger.critical("%s", message)
                readiness.fail(message)
                return 1
            else:
                raise
        logger.info("Shutdown complete")
        return 0
    finally:
        if pid_file is not None:
            pid_file.remove()
        if not invocation.coredump:
            faulthandler.disable()
        log_setup.close()


def _tune_garbage_collector() -> None:
    """Queued jobs are long-lived objects, and the server makes no reference cycles on
    its paths (closed connections are broken up by hand), so Python's default of a
    young-generation collection every 700 allocations mostly rescans live jobs. Collect
    every 100,000 instead, the older generations rarely, and freeze what start-up made.
    Measured with benchmarks/bench_server.py --jobs 600000: background submits 153k/s
    before, 303k/s after; drain +15%; round trips unchanged."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)


def _listen_failure(config: ServerConfig, failure: OSError) -> str:
    """``Could not start``, naming the addresses and port that could not be bound."""
    where = ", ".join(format_address((host, config.port)) for host in config.listen) \
        or f"port {config.port} (all addresses)"
    return f"Could not start: cannot listen on {where}: {failure.strerror or failure}"


def _unwrap(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups, else ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _enable_crash_tracebacks(invocation: cli.Invocation, log_setup: logs.LogSetup) -> None:
    """The reference prints a backtrace on SIGSEGV & co. unless ``--coredump``; so do we."""
    if invocation.coredump:
        return
    handler = log_setup.file_handler
    target = handler.stream if handler is not None else sys.stderr
    # A stderr without a file descriptor (embedded use) cannot take tracebacks.
    with contextlib.suppress(ValueError, OSError, AttributeError):
        faulthandler.enable(file=target)


def main(argv: Sequence[str] | None = None) -> int:
    """``gearmand [OPTIONS]``: the exit status (0 after a normal shutdown, 1 on errors)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        invocation = cli.parse_args(args, os.environ)
    except cli.Exit as done:
        try:
            print(done.output, flush=True)
        except BrokenPipeError:  # `gearmand --help | head`: the reader left, not an error
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return done.code
    except cli.CliError as exc:
        print(f"gearmand: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    if invocation.check_args:
        return 0
    status = run(invocation)
    if status == 0 and stopped_by is not None:
        # Cleaned up (store flushed, pid file removed, log closed): now die by the signal.
        sys.stdout.flush()
        signal.signal(stopped_by, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {stopped_by})
        os.kill(os.getpid(), stopped_by)
    return status


if __name__ == "__main__":
    sys.exit(main())

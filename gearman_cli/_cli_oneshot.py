"""Client mode of ``gearman`` without ``-n``: each workload (an argument, or all of stdin)
to every function, one workload at a time, on the blocking ``Client`` (no trio, so a
one-off job in a shell loop starts fast).

Output as ``_cli_client`` writes it: results and WORK_DATA to stdout, warnings,
exceptions and "Job failed" to stderr, ``-P`` prefixes, ``-v`` "Task created" lines.
"""

from __future__ import annotations

import os
import sys

from protocol import Priority

from ._blocking import Client, IdleTimeout
from ._cli_options import ExitCode, GearmanOptions
from ._task import Task, TaskCallbacks, TaskState

_PRIORITY = {"high": Priority.HIGH, "normal": Priority.NORMAL, "low": Priority.LOW}


class OneShot:
    def __init__(self, opts: GearmanOptions) -> None:
        self.opts = opts
        self.out = sys.stdout.buffer
        self.err = sys.stderr.buffer
        self.broken = False
        self.status = ExitCode.OK
        self.error: str | None = None
        self.callbacks = TaskCallbacks(
            on_created=self._on_created,
            on_data=self._on_data,
            on_warning=self._on_warning,
            on_status=self._on_status,
            on_complete=self._on_complete,
            on_fail=self._on_fail,
            on_exception=self._on_exception,
        )

    def _write(self, to_err: bool, data: bytes) -> None:
        if self.broken or not data:
            return
        try:
            (self.err if to_err else self.out).write(data)
        except OSError:
            self.broken = True

    def _prefix(self, task: Task) -> bytes:
        return task.function + b": " if self.opts.prefix else b""

    def _on_created(self, task: Task) -> None:
        if self.opts.verbose:
            self._write(False, b"Task created: " + (task.handle or b"") + b"\n")

    def _on_data(self, task: Task) -> None:
        self._write(False, self._prefix(task) + task.data_chunks[-1])
        self.flush()

    def _on_warning(self, task: Task) -> None:
        self._write(True, self._prefix(task) + task.warnings[-1])

    def _on_status(self, task: Task) -> None:
        # A denominator of 0 prints safely (the reference divides by it).
        percent = task.numerator * 100 // task.denominator if task.denominator else 0
        self._write(False, self._prefix(task) + b"%d%% Complete\n" % percent)

    def _on_complete(self, task: Task) -> None:
        self._write(False, self._prefix(task) + (task.result or b""))

    def _on_exception(self, task: Task) -> None:
        self._write(True, self._prefix(task) + (task.exception or b""))
        self.status = max(self.status, ExitCode.JOB_FAILED)

    def _on_fail(self, task: Task) -> None:
        if task.state is TaskState.FAILED:
            self._write(True, b"Job failed\n")
            self.status = max(self.status, ExitCode.JOB_FAILED)
        elif self.error is None:
            self.error = str(task.error or "the job could not be submitted")
            self.status = ExitCode.NO_SERVER

    def flush(self) -> None:
        for stream in (self.out, self.err):
            try:
                stream.flush()
            except OSError:
                self.broken = True

    def run(self) -> int:
        opts = self.opts
        timeout = opts.timeout_ms / 1000 if opts.timeout_ms else None
        client = Client(list(opts.servers), connect_timeout=timeout or 5.0,
                        ssl=opts.tls or False)
        unique = opts.unique.encode() if opts.unique is not None else None
        priority = _PRIORITY[opts.priority]
        try:
            for workload in _workloads(opts):
                tasks = [
                    Task(f, workload, unique=unique, priority=priority,
                         background=opts.background, callbacks=self.callbacks)
                    for f in opts.functions
                ]
                try:
                    client._run(tasks, idle_timeout=timeout)
                except IdleTimeout:
                    self.error = f"timed out after {opts.timeout_ms} ms"
                    self.status = ExitCode.TIMEOUT
                self.flush()
                if self.error is not None or self.broken:
                    break
        finally:
            self.flush()
        if self.broken:
            # The reader went away (`gearman ... | head`): no second error at exit.
            raise BrokenPipeError
        if self.error is not None:
            sys.stderr.write(f"gearman: {self.error}\n")
        return int(self.status)


def _workloads(opts: GearmanOptions) -> list[bytes]:
    """The workloads in the reference's order: the arguments, else one empty job (-s),
    else all of stdin."""
    if opts.args:
        return [os.fsencode(arg) for arg in opts.args]
    if opts.no_stdin:
        return [b""]
    return [sys.stdin.buffer.read()]


def run_oneshot(opts: GearmanOptions) -> int:
    return OneShot(opts).run()

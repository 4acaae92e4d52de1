"""Client mode of ``gearman``: workloads in, results out, in input order.

Rule: a window of workloads is in flight on the connection at once (1 without ``-n``, as
the reference: the next workload waits for the previous one); output of the oldest
workload streams as it arrives, output of later ones is held until they are oldest, so
the output is in input order. Reading stdin waits for window space (backpressure), so
memory stays bounded on endless input. ``-n -b`` to one server and one function sends
each read's lines as pre-encoded batches (``AsyncClient.submit_background_batch``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections import deque
from collections.abc import AsyncIterator
from typing import BinaryIO

import trio

from protocol import Priority

from ._cli_options import ExitCode, GearmanOptions
from ._task import BackgroundBatch, Task, TaskCallbacks, TaskState
from .client import AsyncClient

#: Bytes read from stdin at a time; lines are submitted as soon as a read returns them.
READ_SIZE = 64 * 1024
#: Yield to the connection's writer after this many submissions in a row.
_YIELD_EVERY = 256

_PRIORITY = {"high": Priority.HIGH, "normal": Priority.NORMAL, "low": Priority.LOW}


class Output:
    """Buffered stdout/stderr, flushed by ``flusher`` after each burst of writes (one
    receive's worth of packets), so output streams without a syscall per chunk."""

    def __init__(self, out: BinaryIO, err: BinaryIO) -> None:
        self.streams = (out, err)
        self.broken = False
        self._pending = False
        self._wake = trio.Event()

    def write(self, to_err: bool, data: bytes) -> None:
        if self.broken or not data:
            return
        try:
            self.streams[to_err].write(data)
        except OSError:
            self.broken = True
            return
        if not self._pending:
            self._pending = True
            self._wake.set()

    def flush(self) -> None:
        self._pending = False
        for stream in self.streams:
            try:
                stream.flush()
            except OSError:
                self.broken = True

    async def flusher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            # Let the connection's reader finish handing over the packets it received.
            await trio.lowlevel.checkpoint()
            self.flush()


class _Entry:
    """One workload: its tasks still running, and output held until it is the oldest."""

    __slots__ = ("left", "held")

    def __init__(self, left: int) -> None:
        self.left = left
        self.held: list[tuple[bool, bytes]] = []


class Pipeline:
    """Submits workloads through a window and writes their output in input order."""

    def __init__(self, client: AsyncClient, opts: GearmanOptions, output: Output) -> None:
        self.client = client
        self.opts = opts
        self.output = output
        # One fixed unique key for every line (-u) would coalesce the lines in flight
        # into one job: then run them one at a time, as the C tool does.
        coalescing = opts.unique is not None and not opts.background
        self.window = opts.window if opts.lines and not coalescing else 1
        self.entries: deque[_Entry] = deque()
        self.status = ExitCode.OK
        #: Progress counters: workloads (lines) sent, finished, and jobs that failed.
        self.sent = 0
        self.finished = 0
        self.failed = 0
        self.error: str | None = None
        self._space: trio.Event | None = None
        self._empty: trio.Event | None = None
        self._functions = [(f.encode(), f"{f}: ".encode()) for f in opts.functions]
        self._priority = _PRIORITY[opts.priority]
        self._unique = opts.unique.encode() if opts.unique is not None else None
        self._scope: trio.CancelScope | None = None
        #: Batches in flight (``-n -b`` to one server and one function), oldest first.
        self.batches: deque[BackgroundBatch] = deque()
        self.last_progress = 0.0
        self._track = opts.timeout_ms is not None
        #: A long -n run shows progress when stderr is a terminal, and nothing otherwise
        #: (nor when results stream to the same terminal: -n without -b, stdout a tty).
        self.show_progress = (opts.lines and _isatty(output.streams[1])
                              and (opts.background or not _isatty(output.streams[0])))
        self.callbacks = TaskCallbacks(
            on_created=self._on_created,
            on_data=self._on_data,
            on_warning=self._on_warning,
            on_status=self._on_status,
            on_complete=self._on_complete,
            on_fail=self._on_fail,
            on_exception=self._on_exception,
        )

    def _progress(self) -> None:
        if self._track:
            self.last_progress = trio.current_time()

    # -- output --

    def _emit(self, entry: _Entry, to_err: bool, data: bytes) -> None:
        if self.entries and self.entries[0] is entry:
            self.output.write(to_err, data)
        else:
            entry.held.append((to_err, data))

    def _prefix(self, task: Task) -> bytes:
        if not self.opts.prefix:
            return b""
        return task.function + b": "

    def _on_created(self, task: Task) -> None:
        self._progress()
        if self.opts.verbose:
            self._emit(task.app_data, False, b"Task created: " + (task.handle or b"") + b"\n")
        if task.background:
            self._done(task)

    def _on_data(self, task: Task) -> None:
        self._progress()
        self._emit(task.app_data, False, self._prefix(task) + task.data_chunks[-1])

    def _on_warning(self, task: Task) -> None:
        self._progress()
        self._emit(task.app_data, True, self._prefix(task) + task.warnings[-1])

    def _on_status(self, task: Task) -> None:
        self._progress()
        # docs/differences.md: a denominator of 0 prints safely (the reference divides by it).
        percent = task.numerator * 100 // task.denominator if task.denominator else 0
        self._emit(task.app_data, False, self._prefix(task) + b"%d%% Complete\n" % percent)

    def _on_complete(self, task: Task) -> None:
        self._emit(task.app_data, False, self._prefix(task) + (task.result or b""))
        self._done(task)

    def _on_exception(self, task: Task) -> None:
        self._emit(task.app_data, True, self._prefix(task) + (task.exception or b""))
        self.status = max(self.status, ExitCode.JOB_FAILED)
        self.failed += 1
        self._done(task)

    def _on_fail(self, task: Task) -> None:
        if task.state is TaskState.FAILED:
            self._emit(task.app_data, True, b"Job failed\n")
            self.status = max(self.status, ExitCode.JOB_FAILED)
            self.failed += 1
        else:
            self.fatal(ExitCode.NO_SERVER, str(task.error or "the job could not be submitted"))
        self._done(task)

    def fatal(self, code: ExitCode, message: str) -> None:
        """Stop everything: one line on stderr, exit status ``code``."""
        if self.error is None:
            self.error = message
            self.status = code
        if self._scope is not None:
            self._scope.cancel()

    # -- the window --

    def _done(self, task: Task) -> None:
        self._progress()
        entry: _Entry = task.app_data
        entry.left -= 1
        if not entry.left:
            self.finished += 1
        if entry.left or not self.entries or self.entries[0] is not entry:
            return
        entries = self.entries
        entries.popleft()
        while entries:
            head = entries[0]
            for to_err, data in head.held:
                self.output.write(to_err, data)
            head.held.clear()
            if head.left:
                break
            entries.popleft()
        if self._space is not None and len(entries) < self.window:
            self._space.set()
            self._space = None
        if self._empty is not None and not entries:
            self._empty.set()
            self._empty = None

    async def submit(self, workload: bytes) -> None:
        """Send ``workload`` to every function; waits first while the window is full."""
        while len(self.entries) >= self.window:
            self._space = trio.Event()
            await self._space.wait()
        if not self.entries:
            self._progress()
        self.sent += 1
        entry = _Entry(len(self._functions))
        self.entries.append(entry)
        for function, _ in self._functions:
            task = Task(
                function,
                workload,
                unique=self._unique,
                priority=self._priority,
                background=self.opts.background,
                app_data=entry,
                callbacks=self.callbacks,
            )
            await self.client.submit(task)

    async def drain(self) -> None:
        """Wait until every submitted workload finished and its output was written."""
        while self.entries:
            self._empty = trio.Event()
            await self._empty.wait()

    async def run(self, workloads: AsyncIterator[list[bytes]]) -> None:
        with trio.CancelScope() as scope:
            self._scope = scope
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.output.flusher)
                if self.show_progress:
                    nursery.start_soon(self._progress_line)
                if self.opts.timeout_ms is not None:
                    nursery.start_soon(self._watchdog, self.opts.timeout_ms / 1000)
                n = 0
                async for batch in workloads:
                    for workload in batch:
                        await self.submit(workload)
                        n += 1
                        if n % _YIELD_EVERY == 0:
                            await trio.lowlevel.checkpoint()
                        if self.output.broken:
                            break
                    if self.output.broken:
                        break
                await self.drain()
                nursery.cancel_scope.cancel()

    # -- background batches --

    def _on_batch_created(self, batch: BackgroundBatch, index: int, handle: bytes) -> None:
        self._progress()
        if self.opts.verbose:
            self.output.write(False, b"Task created: " + handle + b"\n")

    async def _oldest_batch(self) -> int:
        """Wait for the oldest batch in flight; its size (fatal on its first error)."""
        batch = self.batches[0]
        await batch.wait()
        self.batches.popleft()
        self._progress()
        self.finished += len(batch)
        self.failed += len(batch.errors)
        if batch.errors:
            self.fatal(ExitCode.NO_SERVER, str(batch.errors[0][1]))
        return len(batch)

    async def run_batches(self, batches: AsyncIterator[list[bytes]]) -> None:
        """``-n -b``: each read's lines as batches of at most a quarter window, so the
        window (jobs in flight) holds and the connection never idles between batches."""
        function = self._functions[0][0]
        piece = max(1, self.window // 4)
        on_created = self._on_batch_created if self._track or self.opts.verbose else None
        inflight = 0
        with trio.CancelScope() as scope:
            self._scope = scope
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.output.flusher)
                if self.show_progress:
                    nursery.start_soon(self._progress_line)
                if self.opts.timeout_ms is not None:
                    nursery.start_soon(self._watchdog, self.opts.timeout_ms / 1000)
                async for lines in batches:
                    i = 0
                    while i < len(lines):
                        while inflight >= self.window:
                            inflight -= await self._oldest_batch()
                        k = min(piece, self.window - inflight, len(lines) - i)
                        if not self.batches:
                            self._progress()
                        batch = await self.client.submit_background_batch(
                            function,
                            lines[i : i + k],
                            unique=self._unique,
                            priority=self._priority,
                            on_created=on_created,
                        )
                        self.batches.append(batch)
                        inflight += k
                        self.sent += k
                        i += k
                    await trio.lowlevel.checkpoint()
                    if self.output.broken:
                        break
                while self.batches:
                    await self._oldest_batch()
                nursery.cancel_scope.cancel()

    async def _progress_line(self) -> None:
        """Once a second, on a terminal's stderr: lines sent, done, failed, and the rate.
        The line is rewritten in place and wiped at the end."""
        err = self.output.streams[1]
        start = trio.current_time()
        try:
            while True:
                await trio.sleep(1)
                elapsed = trio.current_time() - start
                line = (f"\r\x1b[Kgearman: {self.sent} lines sent, {self.finished} done, "
                        f"{self.failed} failed, {self.finished / elapsed:.0f}/s")
                err.write(line.encode())
                err.flush()
        finally:
            with contextlib.suppress(OSError):
                err.write(b"\r\x1b[K")
                err.flush()

    async def _watchdog(self, timeout: float) -> None:
        # libgearman's -t is an I/O timeout: give up when nothing happened for `timeout`
        # while jobs were in flight (waiting on stdin does not count).
        while True:
            deadline = self.last_progress + timeout
            busy = self.entries or any(not batch.done for batch in self.batches)
            if busy and trio.current_time() >= deadline:
                self.fatal(ExitCode.TIMEOUT, f"timed out after {timeout * 1000:.0f} ms")
                return
            await trio.sleep_until(max(deadline, trio.current_time() + timeout / 10))


def _isatty(stream: BinaryIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError):
        return False


async def _read(fd: int) -> bytes:
    return await trio.to_thread.run_sync(os.read, fd, READ_SIZE, abandon_on_cancel=True)


async def stdin_line_batches(fd: int, strip: bool) -> AsyncIterator[list[bytes]]:
    """The lines of each read of ``fd`` as soon as it returned (``strip``: without their
    newline); a last line without a newline comes last, as it is."""
    pending: list[bytes] = []  # pieces of a line not yet ended
    while True:
        chunk = await _read(fd)
        if not chunk:
            break
        if b"\n" not in chunk:
            pending.append(chunk)  # only the new chunk is searched: long lines stay linear
            continue
        if pending:
            pending.append(chunk)
            chunk = b"".join(pending)
            pending = []
        lines = chunk.split(b"\n")
        last = lines.pop()
        if last:
            pending.append(last)
        yield lines if strip else [line + b"\n" for line in lines]
    if pending:
        yield [b"".join(pending)]


async def stdin_all(fd: int) -> AsyncIterator[list[bytes]]:
    parts: list[bytes] = []
    while chunk := await _read(fd):
        parts.append(chunk)
    yield [b"".join(parts)]


async def _items(items: list[bytes]) -> AsyncIterator[list[bytes]]:
    yield items


def workloads(opts: GearmanOptions) -> AsyncIterator[list[bytes]]:
    """The workloads, a list per read, in the reference's order (§6.1)."""
    if opts.args:
        return _items([os.fsencode(arg) for arg in opts.args])
    if opts.no_stdin:
        return _items([b""])
    fd = sys.stdin.fileno()
    if opts.lines:
        return stdin_line_batches(fd, opts.strip_newline)
    return stdin_all(fd)


def batched(opts: GearmanOptions) -> bool:
    """Whether ``-n -b`` can go as batches: one server (round-robin per job and the order
    of output across servers need tasks) and one function (lines interleave functions)."""
    return (
        opts.background
        and opts.lines
        and not opts.args
        and not opts.no_stdin
        and len(opts.servers) == 1
        and len(opts.functions) == 1
    )


async def main(opts: GearmanOptions) -> int:
    output = Output(sys.stdout.buffer, sys.stderr.buffer)
    connect_timeout = opts.timeout_ms / 1000 if opts.timeout_ms else 5.0
    try:
        async with AsyncClient(
            list(opts.servers), connect_timeout=connect_timeout, ssl=opts.tls or False
        ) as client:
            pipeline = Pipeline(client, opts, output)
            if batched(opts):
                fd = sys.stdin.fileno()
                await pipeline.run_batches(stdin_line_batches(fd, opts.strip_newline))
            else:
                await pipeline.run(workloads(opts))
    finally:
        output.flush()
    if pipeline.error is not None:
        sys.stderr.write(f"gearman: {pipeline.error}\n")
    return int(pipeline.status)


def run_client(opts: GearmanOptions) -> int:
    logging.basicConfig(level=logging.ERROR, format="gearman: %(message)s")
    try:
        return trio.run(main, opts)
    except BaseExceptionGroup as group:
        # trio reports Ctrl-C inside a nursery as a group holding KeyboardInterrupt.
        interrupted, rest = group.split(KeyboardInterrupt)
        if interrupted is not None and rest is None:
            raise KeyboardInterrupt from None  # the caller dies by the signal
        raise

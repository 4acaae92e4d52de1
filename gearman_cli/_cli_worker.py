"""Worker mode of ``gearman`` (``-w``): each job runs a command, or is written to stdout.

Rule: the command's stdin is fed while its stdout and stderr are read, all at once, so no
payload size can deadlock (the reference deadlocks at about 400 KB, spec §6.2); each
output line is sent once with ``-n`` (the reference resends every earlier line). A
command runs in its own process group, which a ``--job-timeout`` or a second signal
kills. The first SIGTERM/SIGINT drains: running jobs finish, then the worker exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys

import trio

from . import _signals
from ._cli_options import ExitCode, GearmanOptions
from .worker import AsyncWorker, Job

logger = logging.getLogger("gearman")

#: Bytes read from a command's stdout/stderr at a time.
READ_SIZE = 64 * 1024


class WorkerRun:
    """Callbacks and bookkeeping of one ``gearman -w`` run."""

    def __init__(self, opts: GearmanOptions) -> None:
        self.opts = opts
        self.worker = AsyncWorker(
            list(opts.servers),
            ssl=opts.tls or False,
            concurrency=opts.concurrency,
            connect_timeout=opts.timeout_ms / 1000 if opts.timeout_ms else 5.0,
        )
        for function in opts.functions:
            if opts.args:
                self.worker.add_function(function, self.run_command)
            else:
                # Inline: run where the assignment is read, so jobs are written in the
                # order the server assigned them, with no task or thread per job.
                self.worker.add_function(function, self.write_workload, inline=True)
        self.out = sys.stdout.buffer
        self.status = ExitCode.OK
        self.active = 0
        self.last_job = 0.0
        self.worker_stopping = False

    # -- without a command: the log-storage worker --

    def write_workload(self, job: Job) -> bytes:
        """Write the workload to stdout (in assignment order, flushed per job)."""
        self.last_job = trio.current_time()
        try:
            self.out.write(job.data)
            self.out.flush()
        except OSError as exc:
            logger.error("cannot write to stdout: %s", exc)
            job.send_fail()
            self.worker.stop()
        return b""

    # -- with a command --

    def _env(self, job: Job) -> dict[str, str]:
        env = dict(os.environ)
        env["GEARMAN_HANDLE"] = os.fsdecode(job.handle)
        env["GEARMAN_FUNCTION"] = os.fsdecode(job.function)
        env["GEARMAN_UNIQUE"] = os.fsdecode(job.unique)
        return env

    async def run_command(self, job: Job) -> bytes | None:
        """Run the command with the workload on stdin; its stdout is the result."""
        self.active += 1
        self.last_job = trio.current_time()
        try:
            return await self._run_command(job)
        finally:
            self.active -= 1
            self.last_job = trio.current_time()

    async def _run_command(self, job: Job) -> bytes | None:
        opts = self.opts
        try:
            proc = await trio.lowlevel.open_process(
                list(opts.args),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env(job),
                start_new_session=True,  # its own process group, killed as one
            )
        except OSError as exc:
            message = f"cannot run {opts.args[0]}: {exc.strerror or exc}"
            logger.error("%s", message)
            job.send_warning(message.encode())
            job.send_fail()
            return None
        output: list[bytes] = []
        timed_out = False
        try:
            with trio.move_on_after(opts.job_timeout or float("inf")) as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._feed, proc, job.data)
                    nursery.start_soon(self._read_stdout, proc, job, output)
                    nursery.start_soon(self._read_stderr, proc, job)
                    await proc.wait()
            timed_out = scope.cancelled_caught
        finally:
            if proc.returncode is None:
                _kill_group(proc.pid)
                with trio.CancelScope(shield=True):
                    await proc.wait()
        if timed_out:
            message = f"job {os.fsdecode(job.handle)} timed out after {opts.job_timeout:g}s"
            logger.error("%s", message)
            job.send_warning(message.encode())
            job.send_fail()
            return None
        result = b"".join(output)
        if proc.returncode != 0:
            # As the reference: the output so far as data, then WORK_FAIL (spec §6.2).
            if result:
                job.send_data(result)
            job.send_fail()
            return None
        return result

    async def _feed(self, proc: trio.Process, data: bytes) -> None:
        assert proc.stdin is not None
        try:
            if data:
                await proc.stdin.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the command exited or closed stdin without reading it all
        finally:
            await proc.stdin.aclose()

    async def _read_stdout(self, proc: trio.Process, job: Job, output: list[bytes]) -> None:
        assert proc.stdout is not None
        if not self.opts.lines:
            while chunk := bytes(await proc.stdout.receive_some(READ_SIZE)):
                output.append(chunk)
            return
        cut = 0 if self.opts.strip_newline else 1
        rest = b""
        while chunk := bytes(await proc.stdout.receive_some(READ_SIZE)):
            data = rest + chunk if rest else chunk
            start = 0
            while (i := data.find(b"\n", start)) >= 0:
                job.send_data(data[start : i + cut])  # each line once (docs/differences.md)
                start = i + 1
            rest = data[start:]
        if rest:
            job.send_data(rest)

    async def _read_stderr(self, proc: trio.Process, job: Job) -> None:
        assert proc.stderr is not None
        rest = b""
        while chunk := bytes(await proc.stderr.receive_some(READ_SIZE)):
            _write_err(chunk)
            data = rest + chunk if rest else chunk
            start = 0
            while (i := data.find(b"\n", start)) >= 0:
                job.send_warning(data[start : i + 1])
                start = i + 1
            rest = data[start:]
        if rest:
            job.send_warning(rest)

    # -- running --

    async def _signals(self, cancel: trio.CancelScope) -> None:
        wanted = _signals.handled(signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        if not wanted:  # all ignored when we started (nohup): nothing to watch
            await trio.sleep_forever()
        with trio.open_signal_receiver(*wanted) as signals:
            async for signum in signals:
                if signum != signal.SIGHUP:
                    # Drain (or stop), then die by this signal (see _signals).
                    _signals.note(signum)
                if signum == signal.SIGHUP:
                    # The terminal went away: stop now. The commands run in their own
                    # sessions, so nothing else would stop them; cancelling kills their
                    # process groups (and their jobs go back to the queue).
                    cancel.cancel()
                elif not self.worker_stopping:
                    self.worker_stopping = True
                    self.worker.stop()
                else:
                    cancel.cancel()  # a second signal: stop now, killing running commands

    async def _idle_timeout(self, timeout: float) -> None:
        # -t in worker mode: exit once no job has run for `timeout`.
        self.last_job = trio.current_time()
        while True:
            deadline = self.last_job + timeout
            now = trio.current_time()
            if self.active == 0 and now >= deadline:
                self.worker_stopping = True
                self.worker.stop()
                return
            await trio.sleep(max(deadline - now, timeout / 10))

    async def main(self) -> int:
        with trio.CancelScope() as cancel:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._signals, cancel)
                if self.opts.timeout_ms is not None:
                    nursery.start_soon(self._idle_timeout, self.opts.timeout_ms / 1000)
                if self.opts.count:
                    await self.worker.work(self.opts.count)
                else:
                    await self.worker.work_forever()
                nursery.cancel_scope.cancel()
        return int(self.status)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _write_err(data: bytes) -> None:
    try:
        sys.stderr.buffer.write(data)
        sys.stderr.buffer.flush()
    except OSError:
        pass


def run_worker(opts: GearmanOptions) -> int:
    logging.basicConfig(level=logging.WARNING, format="gearman: %(message)s")
    return trio.run(WorkerRun(opts).main)

"""gearmand's memcached front-end (``-r memcached``, server/memcache.py).

Fast layer: our server in-process on port 0 (Gear and memcached ports both free ones),
with raw Gear workers or our ``AsyncWorker``, and either the real memcached client library
pymemcache (blocking, so run in a thread) or raw bytes over a trio stream. Slow layer:
``python -m server -r memcached`` as a process, driven by pymemcache and by ``nc``.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio.testing
from pymemcache.client.base import Client as McClient  # type: ignore[import-untyped]

from gearman_cli import AsyncWorker, Job
from gearman_cli import Worker as BlockingWorker
from protocol import NEED_DATA, Packet, PacketType, Parser, encode_req
from protocol import __version__ as PROTOCOL_VERSION
from server.app import Server
from server.config import ServerConfig
from tests.cli_helpers import status as process_status
from tests.conftest import RunningServer, free_port, wait_for_port

PT = PacketType
T = TypeVar("T")

#: Small, so the "too large" test needs little data; values above it are refused.
MAX_PACKET = 64 * 1024
VERSION = "9.8.7-mc-test"
NC = shutil.which("nc") or "/usr/bin/nc"


# ---------------------------------------------------------------------- helpers


@dataclass
class Ports:
    server: Server
    gear: int
    mc: int


def config(**overrides: Any) -> ServerConfig:
    options: dict[str, Any] = dict(
        listen=("127.0.0.1",), port=0, protocols=("memcached",), memcached_port=0,
        max_packet_size=MAX_PACKET, max_outgoing_buffer=256 * 1024, version=VERSION)
    options.update(overrides)
    return ServerConfig(**options)


def ports_of(srv: Server, gear: list[tuple[str, int]]) -> Ports:
    mc = srv.frontend_addresses["memcached"]
    assert mc and mc[0][0] == "127.0.0.1"
    assert mc[0][1] != gear[0][1]
    return Ports(srv, gear[0][1], mc[0][1])


@pytest.fixture
async def ports(nursery: trio.Nursery) -> AsyncIterator[Ports]:
    srv = Server(config())
    gear = await nursery.start(srv.serve)
    yield ports_of(srv, gear)
    srv.shutdown()


class Mc:
    """A raw memcached text-protocol client on a trio stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    @classmethod
    async def connect(cls, port: int) -> Mc:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError(bytes(self.buf))
        self.buf += data

    async def until(self, terminator: bytes) -> bytes:
        """Everything up to and including the first ``terminator``."""
        while (end := self.buf.find(terminator)) < 0:
            await self._fill()
        end += len(terminator)
        out = bytes(self.buf[:end])
        del self.buf[:end]
        return out

    async def expect(self, want: bytes) -> None:
        """The next ``len(want)`` bytes are exactly ``want``."""
        while len(self.buf) < len(want):
            try:
                await self._fill()
            except EOFError:
                break
        got = bytes(self.buf[:len(want)])
        del self.buf[:len(want)]
        assert got == want

    async def works(self) -> None:
        """The connection still answers a command, with nothing left over before it."""
        await self.send(b"version\r\n")
        await self.expect(b"VERSION %s\r\n" % VERSION.encode())

    async def rest_until_eof(self) -> bytes:
        """What the server sends until it closes the connection."""
        out = bytes(self.buf)
        self.buf.clear()
        try:
            while data := await self.stream.receive_some(65536):
                out += data
        except trio.BrokenResourceError:
            pass
        return out

    async def aclose(self) -> None:
        await self.stream.aclose()


class GearWorker:
    """A raw Gear worker: CAN_DO, then grab jobs and answer with any packets."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.parser = Parser()

    @classmethod
    async def connect(cls, port: int, *functions: bytes) -> GearWorker:
        worker = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await worker.send(*(encode_req(PT.CAN_DO, f) for f in functions))
        return worker

    async def send(self, *packets: bytes) -> None:
        await self.stream.send_all(b"".join(packets))

    async def packet(self) -> Packet:
        while True:
            event = self.parser.next_event()
            if event is not NEED_DATA:
                assert isinstance(event, Packet), event
                return event
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError
            self.parser.receive_data(data)

    async def grab_once(self) -> Packet:
        await self.send(encode_req(PT.GRAB_JOB))
        return await self.packet()

    async def grab(self) -> tuple[bytes, bytes, bytes]:
        """(handle, function, workload) of the next job, sleeping until there is one."""
        while True:
            reply = await self.grab_once()
            if reply.type == PT.JOB_ASSIGN:
                handle, function, data = reply.args
                return handle, function, data
            assert reply.type == PT.NO_JOB, reply
            await self.send(encode_req(PT.PRE_SLEEP))
            while (await self.packet()).type != PT.NOOP:
                pass

    async def answer(self, ptype: PacketType, handle: bytes, *args: bytes) -> None:
        await self.send(encode_req(ptype, handle, *args))

    async def aclose(self) -> None:
        await self.stream.aclose()


async def admin(port: int, line: bytes) -> bytes:
    """One Gear admin command's reply (a line, or a list up to ``.``)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(line + b"\n")
        out = b""
        while not ((out.startswith((b"OK", b"ERR")) and out.endswith(b"\n"))
                   or out == b".\n" or out.endswith(b"\n.\n")):
            data = await stream.receive_some(4096)
            if not data:
                raise EOFError(out)
            out += data
        return out


async def status(port: int) -> dict[bytes, tuple[int, int, int]]:
    """The admin ``status`` table: function -> (total, running, workers)."""
    out: dict[bytes, tuple[int, int, int]] = {}
    for line in (await admin(port, b"status")).splitlines():
        if line == b".":
            break
        name, total, running, workers = line.split(b"\t")
        out[name] = (int(total), int(running), int(workers))
    return out


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 5) -> None:
    """Poll ``predicate`` until true; fails the test after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(0.02)


async def wait_status(port: int, fn: bytes, want: tuple[int, int, int] | None) -> None:
    """Until the admin status of ``fn`` is ``want`` (None: not listed)."""
    async def ok() -> bool:
        return (await status(port)).get(fn) == want
    await wait_until(ok)


def _with_client(port: int, call: Callable[[Any], T]) -> T:
    client = McClient(("127.0.0.1", port), connect_timeout=5, timeout=10)
    try:
        return call(client)
    finally:
        client.close()


async def pymc(port: int, call: Callable[[Any], T]) -> T:
    """Run ``call(client)`` with a fresh pymemcache client, in a thread."""
    return await trio.to_thread.run_sync(partial(_with_client, port, call),
                                         abandon_on_cancel=True)


def parse_stats(reply: bytes) -> dict[bytes, bytes]:
    assert reply.endswith(b"END\r\n")
    lines = reply.split(b"\r\n")
    assert lines[-2:] == [b"END", b""]
    stats: dict[bytes, bytes] = {}
    for line in lines[:-2]:
        word, name, value = line.split(b" ", 2)
        assert word == b"STAT"
        stats[name] = value
    return stats


async def mc_stats(port: int) -> dict[bytes, bytes]:
    mc = await Mc.connect(port)
    async with mc.stream:
        await mc.send(b"stats\r\n")
        return parse_stats(await mc.until(b"END\r\n"))


# ---------------------------------------------------------------------- pymemcache


async def test_pymemcache_get_runs_the_job(ports: Ports) -> None:
    worker = AsyncWorker(f"127.0.0.1:{ports.gear}")
    seen: list[bytes] = []

    def reverse(job: Job) -> bytes:
        seen.append(job.data)
        return job.data[::-1]

    worker.add_function("reverse", reverse)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.work_forever)
            value = await pymc(ports.mc, lambda c: c.get("reverse/hello"))
            assert value == b"olleh"
            # The argument is everything after the first "/".
            value = await pymc(ports.mc, lambda c: c.get("reverse/a/b"))
            assert value == b"b/a"
            nursery.cancel_scope.cancel()
    assert seen == [b"hello", b"a/b"]


async def test_pymemcache_get_many_runs_jobs_concurrently(ports: Ports) -> None:
    """All three jobs of one get must be running at once: each waits for the others."""
    worker = AsyncWorker(f"127.0.0.1:{ports.gear}", concurrency=3)
    started: list[bytes] = []
    everyone_in = trio.Event()

    async def upper(job: Job) -> bytes:
        started.append(job.data)
        if len(started) == 3:
            everyone_in.set()
        with trio.fail_after(5):  # a sequential server would leave this job waiting
            await everyone_in.wait()
        return job.data.upper()

    worker.add_function("upper", upper)
    keys = ["upper/one", "upper/two", "upper/three"]
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.work_forever)
            values = await pymc(ports.mc, lambda c: c.get_many(keys))
            nursery.cancel_scope.cancel()
    assert values == {"upper/one": b"ONE", "upper/two": b"TWO", "upper/three": b"THREE"}
    assert sorted(started) == [b"one", b"three", b"two"]


async def test_failed_jobs_are_misses_others_present(
        ports: Ports, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="server.memcache")
    worker = await GearWorker.connect(ports.gear, b"ok", b"fail", b"exc")
    keys = ["ok/1", "fail/2", "exc/3", "ok/4"]
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            async def client() -> None:
                got = await pymc(ports.mc, lambda c: c.get_many(keys))
                results.append(got)

            results: list[dict[str, bytes]] = []
            nursery.start_soon(client)
            for _ in keys:
                handle, function, data = await worker.grab()
                if function == b"ok":
                    # WORK_DATA then WORK_COMPLETE: the value is both, in order.
                    await worker.answer(PT.WORK_DATA, handle, b"data" + data + b"+")
                    await worker.answer(PT.WORK_COMPLETE, handle, b"done" + data)
                elif function == b"fail":
                    await worker.answer(PT.WORK_FAIL, handle)
                else:
                    await worker.answer(PT.WORK_EXCEPTION, handle, b"boom: bad input")
    assert results == [{"ok/1": b"data1+done1", "ok/4": b"data4+done4"}]
    log = caplog.text
    assert "fail/2" in log and "WORK_FAIL" in log
    assert "exc/3" in log and "boom: bad input" in log
    await worker.aclose()


async def test_single_failing_get_is_a_miss(ports: Ports) -> None:
    worker = await GearWorker.connect(ports.gear, b"fail")
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            results: list[object] = []

            async def client() -> None:
                results.append(await pymc(ports.mc, lambda c: c.get("fail/x", default=b"MISS")))

            nursery.start_soon(client)
            handle, _, data = await worker.grab()
            assert data == b"x"
            await worker.answer(PT.WORK_FAIL, handle)
    assert results == [b"MISS"]
    await worker.aclose()


async def test_get_without_slash_runs_with_empty_payload(ports: Ports) -> None:
    worker = await GearWorker.connect(ports.gear, b"noarg")
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            results: list[object] = []

            async def client() -> None:
                results.append(await pymc(ports.mc, lambda c: c.get("noarg")))

            nursery.start_soon(client)
            handle, function, data = await worker.grab()
            assert (function, data) == (b"noarg", b"")
            await worker.answer(PT.WORK_COMPLETE, handle, b"ran")
    assert results == [b"ran"]
    await worker.aclose()


BINARY = b"line one\r\nEND\r\nVALUE x 0 1\r\n\0\0mid\0" + bytes(range(256)) + b"\r\n"


async def test_pymemcache_set_queues_a_background_job_with_exact_bytes(ports: Ports) -> None:
    with trio.fail_after(15):
        stored = await pymc(ports.mc, lambda c: c.set("binfn", BINARY, noreply=False))
        assert stored is True
        await wait_status(ports.gear, b"binfn", (1, 0, 0))
        worker = await GearWorker.connect(ports.gear, b"binfn")
        handle, function, data = await worker.grab()
        assert function == b"binfn"
        assert data == BINARY
        # Background: nobody waits for the result, and the job is gone once complete.
        await worker.answer(PT.WORK_COMPLETE, handle, b"ignored")
        await wait_status(ports.gear, b"binfn", (0, 0, 1))
        await worker.aclose()


async def test_set_and_add_answer_stored_exactly(ports: Ports) -> None:
    with trio.fail_after(10):
        mc = await Mc.connect(ports.mc)
        await mc.send(b"set s1 0 0 3\r\na\0b\r\nadd s1 7 -1 0\r\n\r\n")
        await mc.expect(b"STORED\r\nSTORED\r\n")
        await mc.works()
        await wait_status(ports.gear, b"s1", (2, 0, 0))
        worker = await GearWorker.connect(ports.gear, b"s1")
        assert (await worker.grab())[2] == b"a\0b"
        assert (await worker.grab())[2] == b""
        await mc.aclose()
        await worker.aclose()


async def test_noreply(ports: Ports) -> None:
    with trio.fail_after(15):
        mc = await Mc.connect(ports.mc)
        await mc.send(b"set quiet 0 0 3 noreply\r\nabc\r\n")
        # Nothing was answered: the next bytes are the version's.
        await mc.works()
        await wait_status(ports.gear, b"quiet", (1, 0, 0))
        # And with the client library's default (noreply).
        assert await pymc(ports.mc, lambda c: c.set("quiet", b"def")) is True
        await wait_status(ports.gear, b"quiet", (2, 0, 0))
        worker = await GearWorker.connect(ports.gear, b"quiet")
        assert sorted([(await worker.grab())[2], (await worker.grab())[2]]) == [b"abc", b"def"]
        await mc.aclose()
        await worker.aclose()


async def test_version(ports: Ports) -> None:
    with trio.fail_after(10):
        assert await pymc(ports.mc, lambda c: c.version()) == VERSION.encode()
        mc = await Mc.connect(ports.mc)
        await mc.works()
        await mc.aclose()


async def test_stats_counts(ports: Ports) -> None:
    with trio.fail_after(15):
        before = await mc_stats(ports.mc)
        assert set(before) >= {b"pid", b"uptime", b"time", b"version", b"curr_connections",
                               b"functions", b"jobs", b"jobs_queued", b"jobs_running",
                               b"workers"}
        assert before[b"version"] == VERSION.encode()
        assert int(before[b"pid"]) == os.getpid()  # in-process server
        assert 0 <= int(before[b"uptime"]) < 60
        assert abs(int(before[b"time"]) - time.time()) <= 5
        assert before[b"jobs_queued"] == before[b"jobs"] == before[b"workers"] == b"0"
        assert int(before[b"curr_connections"]) >= 1  # this stats connection itself

        mc = await Mc.connect(ports.mc)
        await mc.send(b"set counted 0 0 1\r\nx\r\nset counted 0 0 1\r\ny\r\n"
                      b"set other 0 0 0\r\n\r\n")
        await mc.expect(b"STORED\r\n" * 3)
        after = await mc_stats(ports.mc)
        assert after[b"jobs_queued"] == b"3"
        assert after[b"jobs"] == b"3"
        assert after[b"jobs_running"] == b"0"
        assert after[b"functions"] == b"2"
        assert after[b"workers"] == b"0"

        worker = await GearWorker.connect(ports.gear, b"counted")
        await worker.grab()
        running = await mc_stats(ports.mc)
        assert running[b"jobs_queued"] == b"2"
        assert running[b"jobs_running"] == b"1"
        assert running[b"workers"] == b"1"
        # The stats connection, the worker and the memcached connection at least.
        assert int(running[b"curr_connections"]) >= 3

        # The client library reads the same numbers.
        lib = await pymc(ports.mc, lambda c: c.stats())
        assert lib[b"jobs_queued"] == 2 and lib[b"workers"] == 1
        assert lib[b"version"] == VERSION.encode()
        await mc.aclose()
        await worker.aclose()


# ---------------------------------------------------------------------- raw protocol


async def test_pipelined_commands_answered_in_order(ports: Ports) -> None:
    worker = await GearWorker.connect(ports.gear, b"echo")
    with trio.fail_after(10):
        mc = await Mc.connect(ports.mc)
        # The version after the get is pipelined while the get's job is waiting.
        await mc.send(b"get echo/a\r\nversion\r\nset p 0 0 1\r\nz\r\n")
        handle, _, data = await worker.grab()
        assert data == b"a"
        await worker.answer(PT.WORK_COMPLETE, handle, b"A!")
        await mc.expect(b"VALUE echo/a 0 2\r\nA!\r\nEND\r\n"
                        b"VERSION %s\r\nSTORED\r\n" % VERSION.encode())
        # Commands sent while the get's job runs (read by the server as it waits) are
        # kept, and answered after the get, in order.
        await mc.send(b"get echo/b\r\n")
        handle, _, data = await worker.grab()
        assert data == b"b"
        await mc.send(b"version\r\n")
        await mc.send(b"set p 0 0 1\r\n")
        await mc.send(b"w\r\n")
        await trio.testing.wait_all_tasks_blocked()
        await worker.answer(PT.WORK_COMPLETE, handle, b"B")
        await mc.expect(b"VALUE echo/b 0 1\r\nB\r\nEND\r\n"
                        b"VERSION %s\r\nSTORED\r\n" % VERSION.encode())
        await mc.works()
        await mc.aclose()
        await worker.aclose()


async def test_get_same_key_twice_and_gets(ports: Ports) -> None:
    worker = await GearWorker.connect(ports.gear, b"twice")
    with trio.fail_after(10):
        mc = await Mc.connect(ports.mc)
        await mc.send(b"gets twice/a twice/a\r\n")
        for _ in range(2):
            handle, _, data = await worker.grab()
            await worker.answer(PT.WORK_COMPLETE, handle, data.upper())
        await mc.expect(b"VALUE twice/a 0 1\r\nA\r\nVALUE twice/a 0 1\r\nA\r\nEND\r\n")
        await mc.works()
        await mc.aclose()
        await worker.aclose()


async def test_refused_job_is_a_miss_and_refused_set_is_server_error(ports: Ports) -> None:
    with trio.fail_after(10):
        # maxqueue only applies to a function the server knows: a worker registers it.
        worker = await GearWorker.connect(ports.gear, b"capped")
        await wait_status(ports.gear, b"capped", (0, 0, 1))
        assert await admin(ports.gear, b"maxqueue capped 1") == b"OK\r\n"
        mc = await Mc.connect(ports.mc)
        # Two jobs, room for one: the second is refused (a miss), the first runs.
        await mc.send(b"get capped/a capped/b\r\n")
        handle, _, data = await worker.grab()
        assert data == b"a"
        await worker.answer(PT.WORK_COMPLETE, handle, b"first")
        await mc.expect(b"VALUE capped/a 0 5\r\nfirst\r\nEND\r\n")
        # The queue full: a set is refused with a SERVER_ERROR line.
        await mc.send(b"set capped 0 0 1\r\nq\r\n")
        await mc.expect(b"STORED\r\n")
        await mc.send(b"set capped 0 0 1\r\nr\r\n")
        line = await mc.until(b"\r\n")
        assert line.startswith(b"SERVER_ERROR ") and len(line) > len(b"SERVER_ERROR \r\n")
        await mc.works()
        await mc.aclose()
        await worker.aclose()


BAD_INPUT = [
    pytest.param(b"bogus a b\r\n", b"CLIENT_ERROR unknown command: bogus\r\n",
                 id="unknown-command"),
    pytest.param(b"set f 0 0 abc\r\n", b"CLIENT_ERROR bad command line format\r\n",
                 id="non-numeric-length"),
    pytest.param(b"set f x 0 3\r\n", b"CLIENT_ERROR bad command line format\r\n",
                 id="non-numeric-flags"),
    pytest.param(b"set f 0 0\r\n", b"CLIENT_ERROR bad command line format\r\n",
                 id="set-too-few-words"),
    pytest.param(b"set f 0 0 3 nope\r\n", b"CLIENT_ERROR bad command line format\r\n",
                 id="set-bad-noreply"),
    pytest.param(b"set f 0 0 3\r\nabcXY", b"CLIENT_ERROR bad data chunk\r\n",
                 id="bad-data-chunk"),
    pytest.param(b"set f 0 0 3\r\nabcd\r\n", b"CLIENT_ERROR bad data chunk\r\nERROR\r\n",
                 id="data-longer-than-said"),
    pytest.param(b"set " + b"k" * 251 + b" 0 0 3\r\nabc\r\n", b"CLIENT_ERROR key too long\r\n",
                 id="set-key-too-long"),
    pytest.param(b"get " + b"k" * 251 + b"\r\n", b"CLIENT_ERROR bad command line format\r\n",
                 id="get-key-too-long"),
    pytest.param(b"set a\x01b 0 0 1\r\nz\r\n",
                 b"CLIENT_ERROR Function name contains control characters\r\n",
                 id="set-control-character-key"),
    pytest.param(b"get ok/1 a\x1bb/2\r\n",
                 b"CLIENT_ERROR Function name contains control characters\r\n",
                 id="get-control-character-key"),
    pytest.param(b"get /x\r\n", b"CLIENT_ERROR empty function name\r\n",
                 id="get-empty-function"),
    pytest.param(b"\r\n", b"ERROR\r\n", id="empty-line"),
    pytest.param(b"   \r\n", b"ERROR\r\n", id="blank-line"),
    pytest.param(b"get\r\n", b"ERROR\r\n", id="get-without-keys"),
    pytest.param(b"stats items\r\n", b"CLIENT_ERROR only plain stats are supported\r\n",
                 id="stats-args"),
]


@pytest.mark.parametrize(("request_bytes", "reply"), BAD_INPUT)
async def test_bad_input_one_error_line_then_connection_works(
        ports: Ports, request_bytes: bytes, reply: bytes) -> None:
    with trio.fail_after(10):
        mc = await Mc.connect(ports.mc)
        await mc.send(request_bytes)
        await mc.expect(reply)
        await mc.works()
        await mc.aclose()
        # Nothing was queued by the refused commands.
        assert (await status(ports.gear)).get(b"f") is None
        assert b"k" * 251 not in await admin(ports.gear, b"status")


async def test_too_large_set_is_refused_and_its_data_swallowed(ports: Ports) -> None:
    size = MAX_PACKET + 1000
    # Commands inside the refused data must not run.
    filler = b"set evil 0 0 1\r\nx\r\nget evil\r\n"
    body = (filler * (size // len(filler) + 1))[:size]
    with trio.fail_after(10):
        mc = await Mc.connect(ports.mc)
        async with trio.open_nursery() as nursery:
            # Sent while we read: the server must not need the whole value in memory.
            nursery.start_soon(mc.send, b"set big 0 0 %d\r\n" % size + body + b"\r\n")
            await mc.expect(b"SERVER_ERROR object too large for cache\r\n")
        await mc.works()
        # Exactly at the limit is accepted.
        await mc.send(b"set edge 0 0 %d\r\n" % MAX_PACKET + b"e" * MAX_PACKET + b"\r\n")
        await mc.expect(b"STORED\r\n")
        await mc.works()
        listing = await status(ports.gear)
        assert b"evil" not in listing and b"big" not in listing
        assert listing[b"edge"] == (1, 0, 0)
        await mc.aclose()


async def test_line_too_long_closes_but_server_goes_on(ports: Ports) -> None:
    with trio.fail_after(10):
        mc = await Mc.connect(ports.mc)
        await mc.send(b"x" * 3000)
        rest = await mc.rest_until_eof()
        assert rest == b"CLIENT_ERROR line too long\r\n"
        await mc.aclose()
        other = await Mc.connect(ports.mc)
        await other.works()
        await other.aclose()


async def test_line_of_exactly_the_limit_is_not_refused(ports: Ports) -> None:
    """2,048 bytes without a newline yet is still a line being read, not too long."""
    with trio.fail_after(10):
        mc = await Mc.connect(ports.mc)
        await mc.send(b"y" * 2048)
        # The server (same trio run) has read it all and waits for more: not too long.
        await trio.testing.wait_all_tasks_blocked()
        await mc.send(b"\r\n")
        await mc.expect(b"CLIENT_ERROR unknown command: " + b"y" * 64 + b"\r\n")
        await mc.works()
        await mc.aclose()


async def test_line_one_byte_over_the_limit_closes(ports: Ports) -> None:
    with trio.fail_after(10):
        mc = await Mc.connect(ports.mc)
        await mc.send(b"z" * 2049)
        assert await mc.rest_until_eof() == b"CLIENT_ERROR line too long\r\n"
        await mc.aclose()


async def test_newline_only_line_ends(ports: Ports) -> None:
    worker = await GearWorker.connect(ports.gear, b"nlget")
    with trio.fail_after(10):
        mc = await Mc.connect(ports.mc)
        await mc.send(b"version\nset nl 0 0 2 noreply\nhi\r\nset nl 0 0 2\nho\r\n"
                      b"get nlget/x\n")
        handle, _, data = await worker.grab()
        await worker.answer(PT.WORK_COMPLETE, handle, b"r" + data)
        await mc.expect(b"VERSION %s\r\nSTORED\r\nVALUE nlget/x 0 2\r\nrx\r\nEND\r\n"
                        % VERSION.encode())
        await mc.send(b"stats\n")
        assert parse_stats(await mc.until(b"END\r\n"))[b"jobs_queued"] == b"2"
        await mc.send(b"quit\n")
        assert await mc.rest_until_eof() == b""
        await mc.aclose()
        await worker.aclose()


async def test_quit_closes_after_answering_earlier_commands(ports: Ports) -> None:
    with trio.fail_after(10):
        mc = await Mc.connect(ports.mc)
        await mc.send(b"version\r\nquit\r\nversion\r\n")
        assert await mc.rest_until_eof() == b"VERSION %s\r\n" % VERSION.encode()
        await mc.aclose()


# ---------------------------------------------------------------------- clients leaving


async def test_client_closing_while_get_waits_is_still_answered(ports: Ports) -> None:
    """A client that closes its side (nc -N, nc -q) may still read: its get is answered,
    as memcached answers what it has read; its jobs stay until they end."""
    with trio.fail_after(15):
        mc = await Mc.connect(ports.mc)
        await mc.send(b"get orphan/x orphan/y\r\nversion\r\n")
        await wait_status(ports.gear, b"orphan", (2, 0, 0))
        await mc.stream.send_eof()
        worker = await GearWorker.connect(ports.gear, b"orphan")
        for _ in range(2):
            handle, _, data = await worker.grab()
            await worker.answer(PT.WORK_COMPLETE, handle, data.upper())
        await mc.expect(b"VALUE orphan/x 0 1\r\nX\r\nVALUE orphan/y 0 1\r\nY\r\nEND\r\n"
                        b"VERSION %s\r\n" % VERSION.encode())
        # Then the server closes the connection: nothing more will come from the client.
        assert await mc.stream.receive_some(100) == b""
        await mc.aclose()
        await worker.aclose()
        # The server is fine: memcached and Gear both still answer.
        other = await Mc.connect(ports.mc)
        await other.works()
        stats = await mc_stats(ports.mc)
        assert stats[b"jobs"] == b"0"
        await other.aclose()


async def test_client_leaving_while_get_waits_leaves_its_jobs_to_finish(ports: Ports) -> None:
    """A half-close and a full close look alike: a client gone for good keeps its jobs
    until they end; the answer's write then fails and the connection closes."""
    with trio.fail_after(15):
        mc = await Mc.connect(ports.mc)
        await mc.send(b"get gone/x\r\n")
        await wait_status(ports.gear, b"gone", (1, 0, 0))
        await mc.aclose()
        worker = await GearWorker.connect(ports.gear, b"gone")
        handle, _, data = await worker.grab()
        assert data == b"x"
        await worker.answer(PT.WORK_COMPLETE, handle, b"late")
        await wait_status(ports.gear, b"gone", (0, 0, 1))
        await worker.aclose()
        await wait_status(ports.gear, b"gone", None)  # nothing refers to it any more


async def test_client_leaving_while_its_job_runs(ports: Ports) -> None:
    worker = await GearWorker.connect(ports.gear, b"running")
    with trio.fail_after(15):
        mc = await Mc.connect(ports.mc)
        await mc.send(b"get running/x\r\n")
        handle, _, data = await worker.grab()
        assert data == b"x"
        await wait_status(ports.gear, b"running", (1, 1, 1))
        await mc.aclose()
        # The job still runs on the worker; its result goes nowhere, and nothing breaks.
        await worker.answer(PT.WORK_DATA, handle, b"partial")
        await worker.answer(PT.WORK_COMPLETE, handle, b"late")
        await wait_status(ports.gear, b"running", (0, 0, 1))
        # The same worker and a new memcached client still work together.
        other = await Mc.connect(ports.mc)
        await other.send(b"get running/y\r\n")
        handle, _, data = await worker.grab()
        assert data == b"y"
        await worker.answer(PT.WORK_COMPLETE, handle, b"ok")
        await other.expect(b"VALUE running/y 0 2\r\nok\r\nEND\r\n")
        await other.aclose()
        await worker.aclose()


# ---------------------------------------------------------------------- with a store


async def test_set_survives_a_restart_with_libsqlite3(tmp_path: Path) -> None:
    db = tmp_path / "queue.sqlite3"
    store = dict(queue_type="libsqlite3", queue_options=(("libsqlite3-db", str(db)),))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            first = Server(config(**store))
            p = ports_of(first, await nursery.start(first.serve))
            mc = await Mc.connect(p.mc)
            await mc.send(b"set kept 0 0 %d\r\n" % len(BINARY) + BINARY + b"\r\n")
            await mc.expect(b"STORED\r\n")
            await mc.aclose()
            first.shutdown()
        # The first server has stopped (its serve returned); a new one on the same db.
        async with trio.open_nursery() as nursery:
            second = Server(config(**store))
            p = ports_of(second, await nursery.start(second.serve))
            assert (await status(p.gear)).get(b"kept") == (1, 0, 0)
            worker = await GearWorker.connect(p.gear, b"kept")
            handle, function, data = await worker.grab()
            assert (function, data) == (b"kept", BINARY)
            await worker.answer(PT.WORK_COMPLETE, handle, b"")
            await wait_status(p.gear, b"kept", (0, 0, 1))
            await worker.aclose()
            second.shutdown()
        # Done and removed from the store: a third start finds nothing.
        async with trio.open_nursery() as nursery:
            third = Server(config(**store))
            p = ports_of(third, await nursery.start(third.serve))
            assert (await status(p.gear)).get(b"kept") is None
            third.shutdown()


# ---------------------------------------------------------------------- with http


async def test_http_and_memcached_together(nursery: trio.Nursery) -> None:
    srv = Server(config(protocols=("http", "memcached"), http_port=0))
    p = ports_of(srv, await nursery.start(srv.serve))
    http_port = srv.frontend_addresses["http"][0][1]
    assert len({p.gear, p.mc, http_port}) == 3
    worker = AsyncWorker(f"127.0.0.1:{p.gear}", concurrency=2)
    worker.add_function("reverse", lambda job: job.data[::-1])
    with trio.fail_after(15):
        async with trio.open_nursery() as inner:
            inner.start_soon(worker.work_forever)
            assert await pymc(p.mc, lambda c: c.get("reverse/memcached")) == b"dehcacmem"
            stream = await trio.open_tcp_stream("127.0.0.1", http_port)
            async with stream:
                await stream.send_all(b"POST /reverse HTTP/1.0\r\nContent-Length: 4\r\n\r\n"
                                      b"http")
                raw = b""
                while data := await stream.receive_some(65536):
                    raw += data
            assert raw.startswith(b"HTTP/1.") and b" 200 " in raw.split(b"\r\n")[0]
            assert raw.endswith(b"\r\n\r\nptth")
            inner.cancel_scope.cancel()
    srv.shutdown()


# ---------------------------------------------------------------------- processes


def start_memcached_server(start_server: Callable[..., RunningServer],
                           *extra: str) -> tuple[RunningServer, int]:
    port = free_port()
    srv = start_server("ours", "-r", "memcached", "--memcached-port", str(port), *extra)
    wait_for_port(port)
    return srv, port


def wait_process_status(srv: RunningServer, fn: bytes, want: tuple[int, int, int] | None,
                        timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (got := process_status(srv).get(fn)) != want:
        assert time.monotonic() < deadline, (fn, got, want)
        time.sleep(0.02)


@pytest.mark.slow
def test_process_pymemcache_get_set_with_blocking_worker(
        start_server: Callable[..., RunningServer]) -> None:
    srv, port = start_memcached_server(start_server)
    worker = BlockingWorker(f"127.0.0.1:{srv.port}")
    worker.add_function("reverse", lambda job: job.data[::-1])
    done: list[int] = []
    thread = threading.Thread(target=lambda: done.append(worker.work(count=3)), daemon=True)
    thread.start()
    client = McClient(("127.0.0.1", port), connect_timeout=5, timeout=10)
    try:
        assert client.get("reverse/hello") == b"olleh"
        assert client.get_many(["reverse/ab", "reverse/cd"]) == {"reverse/ab": b"ba",
                                                                 "reverse/cd": b"dc"}
        assert client.set("later", BINARY, noreply=False) is True
        assert client.version() == PROTOCOL_VERSION.encode()
        assert client.stats()[b"jobs_queued"] == 1
    finally:
        client.close()
    thread.join(10)
    assert done == [3]
    wait_process_status(srv, b"later", (1, 0, 0))


@pytest.mark.slow
def test_process_nc_scripted_session(start_server: Callable[..., RunningServer]) -> None:
    if not os.path.exists(NC):
        pytest.skip("nc is not installed")
    srv, port = start_memcached_server(start_server)
    script = (b"version\r\nset f 0 0 3\r\nabc\r\nset g 0 0 2 noreply\r\nxy\r\n"
              b"bogus\r\nstats slabs\r\n\r\nquit\r\n")
    done = subprocess.run([NC, "-N", "127.0.0.1", str(port)], input=script,
                          capture_output=True, timeout=15, check=False)
    assert done.stdout == (b"VERSION %s\r\nSTORED\r\nCLIENT_ERROR unknown command: bogus\r\n"
                           b"CLIENT_ERROR only plain stats are supported\r\nERROR\r\n"
                           % PROTOCOL_VERSION.encode())
    assert done.returncode == 0, done.stderr
    wait_process_status(srv, b"f", (1, 0, 0))
    wait_process_status(srv, b"g", (1, 0, 0))


def read_until(fd: int, terminator: bytes, timeout: float = 10) -> bytes:
    """Read a pipe until ``terminator`` (or EOF); fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    out = b""
    while terminator not in out:
        left = deadline - time.monotonic()
        assert left > 0, out
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            data = os.read(fd, 65536)
            if not data:
                break
            out += data
    return out


def reverse_worker(srv: RunningServer) -> tuple[BlockingWorker, threading.Thread]:
    """A blocking ``reverse`` worker for one job, in a thread, registered once returned."""
    worker = BlockingWorker(f"127.0.0.1:{srv.port}")
    worker.add_function("reverse", lambda job: job.data[::-1])
    thread = threading.Thread(target=worker.work, args=(1,), daemon=True)
    thread.start()
    wait_process_status(srv, b"reverse", (0, 0, 1))
    return worker, thread


def stop_worker(worker: BlockingWorker, thread: threading.Thread) -> None:
    if thread.is_alive():
        worker.stop()
        thread.join(10)


@pytest.mark.slow
def test_process_nc_get_with_a_worker(start_server: Callable[..., RunningServer]) -> None:
    """An interactive nc: stdin stays open until the answer came, then quit."""
    if not os.path.exists(NC):
        pytest.skip("nc is not installed")
    srv, port = start_memcached_server(start_server)
    worker, thread = reverse_worker(srv)
    proc = subprocess.Popen([NC, "127.0.0.1", str(port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"get reverse/nc\r\n")
        proc.stdin.flush()
        out = read_until(proc.stdout.fileno(), b"END\r\n")
        proc.stdin.write(b"version\r\nquit\r\n")
        proc.stdin.close()
        out += read_until(proc.stdout.fileno(), b"\0never")  # to EOF: the server closed
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stop_worker(worker, thread)
    assert out == (b"VALUE reverse/nc 0 2\r\ncn\r\nEND\r\nVERSION %s\r\n"
                   % PROTOCOL_VERSION.encode())


@pytest.mark.slow
def test_process_nc_half_close_still_gets_its_answer(
        start_server: Callable[..., RunningServer]) -> None:
    if not os.path.exists(NC):
        pytest.skip("nc is not installed")
    srv, port = start_memcached_server(start_server)
    worker, thread = reverse_worker(srv)
    try:
        done = subprocess.run([NC, "-N", "127.0.0.1", str(port)],
                              input=b"get reverse/nc\r\nquit\r\n",
                              capture_output=True, timeout=15, check=False)
    finally:
        stop_worker(worker, thread)
    assert done.stdout == b"VALUE reverse/nc 0 2\r\ncn\r\nEND\r\n"


@pytest.mark.slow
def test_process_set_survives_restart_with_libsqlite3(
        start_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite3"
    store = ("-q", "libsqlite3", "--libsqlite3-db", str(db))
    srv, port = start_memcached_server(start_server, *store)
    client = McClient(("127.0.0.1", port), connect_timeout=5, timeout=10)
    try:
        assert client.set("durable", b"payload\r\n\0", noreply=False) is True
    finally:
        client.close()
    # STORED means committed: even a server killed right after it keeps the job.
    srv.proc.kill()
    srv.proc.wait(10)
    again, _ = start_memcached_server(start_server, *store)
    wait_process_status(again, b"durable", (1, 0, 0))

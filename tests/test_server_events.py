"""Job life-cycle events (issue 15, "Event notification hooks"): ``server.events``, the
admin ``watch`` command, ``--events-function``, ``AsyncAdmin.watch`` and
``gearadmin --watch``.

The event sequence is driven through ``Manager`` with explicit ``now`` values (an
injected clock), so durations are exact; the wire is checked with our server in-process
on port 0 (fast), and ``gearadmin --watch`` as a subprocess (slow).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import trio
from fake_peer import FakePeer
from test_server_manager import World

from gearman_cli import AsyncAdmin
from protocol import Packet, PacketType, Parser, encode_req
from server.app import Server
from server.cli import CliError, parse_args
from server.config import ServerConfig
from server.events import Events

PT = PacketType


def listen(w: World, **options: object) -> tuple[Events, list[dict[str, object]]]:
    """Attach an ``Events`` to the world's manager with a hook collecting the events."""
    events = Events(**options)  # type: ignore[arg-type]
    w.m.attach_events(events)
    got: list[dict[str, object]] = []
    events.add_hook(lambda line: got.append(json.loads(line)))
    return events, got


def kinds(got: list[dict[str, object]]) -> list[object]:
    return [e["event"] for e in got]


# ---------------------------------------------------------------- the manager's events


def test_nobody_listening_costs_nothing() -> None:
    w = World()
    events = Events()
    w.m.attach_events(events)
    assert w.m.log_jobs == w.m.logging_jobs  # the one flag: as without events
    client, worker = w.end(), w.end()
    worker.can_do(b"f")
    h = client.submit(b"f")
    assert worker.grab_handle() == h
    worker.send(PT.WORK_COMPLETE, h, b"r")
    assert not events.queue and events.emitted == 0


def test_one_job_submitted_started_completed_with_durations() -> None:
    w = World()
    events, got = listen(w)
    assert w.m.log_jobs
    client, worker = w.end(), w.end()
    worker.can_do(b"f")
    h = client.submit(b"f", b"u1", b"hello")
    w.clock.now += 0.5
    assert worker.grab_handle() == h
    w.clock.now += 3
    worker.send(PT.WORK_COMPLETE, h, b"result!")
    events.drain()
    assert kinds(got) == ["submitted", "started", "completed"]
    sub, start, done = got
    t0 = w.clock.now - 3.5
    assert sub["time"] == t0 and start["time"] == t0 + 0.5 and done["time"] == w.clock.now
    for e in got:
        assert (e["function"], e["handle"], e["unique"], e["size"]) == ("f", h.decode(), "u1", 5)
        assert "data" not in e and "result" not in e  # no payloads by default
    assert sub["client"] == {"id": client.conn.id, "address": "127.0.0.1"}
    assert "wait" not in sub and "run" not in sub
    assert start["wait"] == 0.5 and "run" not in start
    assert start["worker"] == {"id": worker.conn.id, "address": "127.0.0.1"}
    assert done["run"] == 3 and done["result_size"] == 7
    assert done["worker"] == start["worker"]


def test_every_kind_of_event() -> None:
    w = World(job_retries=2)
    events, got = listen(w)
    client, worker = w.end(), w.end()
    worker.can_do(b"f")
    h1 = client.submit(b"f")
    worker.grab_handle()
    worker.send(PT.WORK_FAIL, h1)
    client.take()
    h2 = client.submit(b"f")
    worker.grab_handle()
    worker.send(PT.WORK_EXCEPTION, h2, b"boom")
    client.take()
    h3 = client.submit(b"f", ptype=PT.SUBMIT_JOB_BG)
    worker.grab_handle()
    worker.send(PT.CANT_DO, b"f")  # requeued
    worker.can_do(b"f")
    worker.grab_handle()
    worker.send(PT.CANT_DO, b"f")  # second loss: failed after 2 retries
    h4 = client.submit(b"f", ptype=PT.SUBMIT_JOB_BG)
    assert w.m.cancel(h4)
    client.submit(b"f")
    client.close()  # its foreground job: nobody waits for it any more
    timer = w.end()
    timer.send(PT.CAN_DO_TIMEOUT, b"t", b"2")
    h6 = client.submit(b"t", ptype=PT.SUBMIT_JOB_BG)
    timer.grab_handle()
    w.clock.now += 3
    w.m.tick(w.clock.now)
    events.drain()
    by_handle: dict[object, list[object]] = {}
    for e in got:
        by_handle.setdefault(e["handle"], []).append(e["event"])
    assert by_handle[h1.decode()] == ["submitted", "started", "failed"]
    assert by_handle[h2.decode()] == ["submitted", "started", "exception"]
    assert by_handle[h3.decode()] == ["submitted", "started", "requeued", "started", "failed"]
    assert by_handle[h4.decode()] == ["submitted", "cancelled"]
    # decisions.md "Job life": a job past its CAN_DO_TIMEOUT fails.
    assert by_handle[h6.decode()] == ["submitted", "started", "timed_out", "failed"]
    assert "dropped" in kinds(got)
    timed = next(e for e in got if e["event"] == "timed_out")
    assert timed["run"] == 3 and timed["worker"] == {"id": timer.conn.id,
                                                     "address": "127.0.0.1"}
    assert set(kinds(got)) == {"submitted", "started", "completed", "failed", "exception",
                               "requeued", "timed_out", "cancelled", "dropped"} - {"completed"}


def test_payloads_only_when_asked_and_only_256_bytes() -> None:
    w = World()
    events, got = listen(w, payloads=True)
    client, worker = w.end(), w.end()
    worker.can_do(b"f")
    h = client.submit(b"f", data=b"\xff" + b"a" * 1000)
    worker.grab_handle()
    worker.send(PT.WORK_COMPLETE, h, b"ok\n")
    events.drain()
    assert got[0]["data"] == "\\xff" + "a" * 255
    assert got[0]["size"] == 1001
    assert got[2]["result"] == "ok\n"


def test_overflow_drops_and_counts_never_blocks() -> None:
    w = World()
    events, got = listen(w, capacity=3)
    client = w.end()
    for _ in range(10):
        client.submit(b"f", ptype=PT.SUBMIT_JOB_BG)  # every submit still answered
    assert len(events.queue) == 3 and events.dropped == 7
    events.drain()
    assert len(got) == 3 and not events.queue


def test_excluded_function_emits_nothing() -> None:
    w = World()
    events, got = listen(w, exclude=b"hook")
    client = w.end()
    client.submit(b"hook", ptype=PT.SUBMIT_JOB_BG)
    client.submit(b"f", ptype=PT.SUBMIT_JOB_BG)
    events.drain()
    assert [e["function"] for e in got] == ["f"]


class SlowPeer:
    """A watcher's output that is past its bound."""

    def __init__(self, pending: int) -> None:
        self.out = bytearray(pending)
        self.limit = 100
        self.broken = False
        self.dropped = False

    def write(self, data: bytes) -> None:
        self.out += data

    def drop(self) -> None:
        self.dropped = self.broken = True


def test_slow_watcher_is_dropped_and_counted() -> None:
    w = World()
    events = Events()
    w.m.attach_events(events)
    slow, fast = SlowPeer(1000), SlowPeer(0)
    events.watch(1, slow, frozenset())
    events.watch(2, fast, frozenset())
    w.end().submit(b"f", ptype=PT.SUBMIT_JOB_BG)
    events.drain()
    assert slow.dropped and events.watchers_dropped == 1 and list(events.watchers) == [2]
    assert not fast.dropped and json.loads(fast.out)["event"] == "submitted"
    events.unwatch(2)
    assert not w.m.log_jobs or w.m.logging_jobs  # nobody listens again: the flag is off


def test_admin_watch_refused_without_a_raw_peer() -> None:
    from protocol import parse_admin_line
    from server.admin import AdminContext, handle_admin

    w = World()
    w.m.attach_events(Events())
    ctx = AdminContext(manager=w.m, version="1", verbose="ERROR", pid=1,
                       shutdown=lambda graceful: None)
    conn = w.m.connect(FakePeer(), "127.0.0.1")
    assert handle_admin(ctx, conn, parse_admin_line(b"watch")).startswith(b"ERR ")


def test_events_flags_in_the_config() -> None:
    config = parse_args(["--events-function", "ev", "--events-payloads", "--events-buffer",
                         "5"], environ={}).config
    assert (config.events_function, config.events_payloads, config.events_buffer) == (
        "ev", True, 5)
    assert parse_args([], environ={}).config.events_function is None
    with pytest.raises(CliError):
        parse_args(["--events-function", "a b"], environ={})


# ---------------------------------------------------------------- over the wire


async def _lines(stream: trio.SocketStream, count: int, buf: bytearray) -> list[bytes]:
    while buf.count(b"\n") < count:
        data = await stream.receive_some(65536)
        assert data, "closed"
        buf += data
    lines = bytes(buf).split(b"\n")
    del buf[:sum(len(x) + 1 for x in lines[:count])]
    return lines[:count]


async def _packets(stream: trio.SocketStream, parser: Parser, count: int) -> list[Packet]:
    got: list[Packet] = []
    while len(got) < count:
        parser.receive_data(await stream.receive_some(65536))
        got += [e for e in parser.events() if isinstance(e, Packet)]
    return got


async def test_watch_over_the_wire_filtered_and_not(nursery: trio.Nursery) -> None:
    srv = Server(ServerConfig(listen=("127.0.0.1",), port=0))
    (addr, *_) = await nursery.start(srv.serve)
    port = addr[1]
    all_of_them = await trio.open_tcp_stream("127.0.0.1", port)
    only_f = await trio.open_tcp_stream("127.0.0.1", port)
    buf_all, buf_f = bytearray(), bytearray()
    await all_of_them.send_all(b"watch\r\n")
    await only_f.send_all(b"watch f\r\n")
    assert await _lines(all_of_them, 1, buf_all) == [b"OK\r"]
    assert await _lines(only_f, 1, buf_f) == [b"OK\r"]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    worker = await trio.open_tcp_stream("127.0.0.1", port)
    await client.send_all(encode_req(PT.SUBMIT_JOB_BG, b"g", b"", b"x")
                          + encode_req(PT.SUBMIT_JOB_BG, b"f", b"uf", b"yy"))
    await worker.send_all(encode_req(PT.CAN_DO, b"f") + encode_req(PT.GRAB_JOB))
    wparser = Parser()
    (assign,) = await _packets(worker, wparser, 1)
    assert assign.type == PT.JOB_ASSIGN
    await worker.send_all(encode_req(PT.WORK_COMPLETE, assign.args[0], b"done"))
    f_events = [json.loads(x) for x in await _lines(only_f, 3, buf_f)]
    assert [(e["function"], e["event"]) for e in f_events] == [
        ("f", "submitted"), ("f", "started"), ("f", "completed")]
    assert f_events[1]["worker"]["address"].startswith("127.0.0.1:")
    every = [json.loads(x) for x in await _lines(all_of_them, 4, buf_all)]
    assert [(e["function"], e["event"]) for e in every] == [
        ("g", "submitted"), ("f", "submitted"), ("f", "started"), ("f", "completed")]
    # Closing a watcher forgets it; nobody listening turns the flag off again.
    for s in (all_of_them, only_f, client, worker):
        await s.aclose()
    with trio.fail_after(5):
        while srv.events.watchers:
            await trio.sleep(0.01)
    assert srv.manager.log_jobs == srv.manager.logging_jobs


async def _admin_json(port: int) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"stats json\r\n")
    data = b""
    while not data.endswith(b".\n"):
        data += await stream.receive_some(65536)
    await stream.aclose()
    return data


async def test_slow_watcher_over_the_wire_is_dropped(nursery: trio.Nursery) -> None:
    """A watcher that reads nothing is disconnected once its output passes the bound;
    every submit is still answered (the server never waits for it)."""
    import socket

    srv = Server(ServerConfig(listen=("127.0.0.1",), port=0, max_outgoing_buffer=4096))
    (addr, *_) = await nursery.start(srv.serve)
    port = addr[1]
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    await sock.send(b"watch\r\n")
    with trio.fail_after(5):
        while not srv.events.watchers:
            await trio.sleep(0.01)
    client = await trio.open_tcp_stream("127.0.0.1", port)
    parser = Parser()
    n = 3000
    with trio.fail_after(20):
        for _ in range(0, n, 100):
            await client.send_all(b"".join(encode_req(PT.SUBMIT_JOB_BG, b"f", b"", b"x")
                                           for _j in range(100)))
            await trio.sleep(0)
        await _packets(client, parser, n)  # every JOB_CREATED arrived
        while srv.events.watchers:
            await trio.sleep(0.01)
    assert srv.events.watchers_dropped == 1
    stats = json.loads((await _admin_json(port)).split(b"\n")[0])
    assert stats["events"]["watchers_dropped"] == 1 and stats["events"]["watchers"] == 0
    assert stats["events"]["emitted"] >= 1
    assert not srv.manager.log_jobs or srv.manager.logging_jobs
    sock.close()
    await client.aclose()


async def test_async_admin_watch(nursery: trio.Nursery) -> None:
    srv = Server(ServerConfig(listen=("127.0.0.1",), port=0))
    (addr, *_) = await nursery.start(srv.serve)
    port = addr[1]
    got: list[dict[str, object]] = []

    async def watcher(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with AsyncAdmin(f"127.0.0.1:{port}") as admin:
            task_status.started()
            async for event in admin.watch("w1", "w2"):
                got.append(event)
                if len(got) == 2:
                    return

    with trio.fail_after(10):
        async with trio.open_nursery() as inner:
            await inner.start(watcher)
            while not srv.events.watchers:
                await trio.sleep(0.01)
            client = await trio.open_tcp_stream("127.0.0.1", port)
            await client.send_all(encode_req(PT.SUBMIT_JOB_BG, b"other", b"", b"x")
                                  + encode_req(PT.SUBMIT_JOB_BG, b"w1", b"", b"x")
                                  + encode_req(PT.SUBMIT_JOB_BG, b"w2", b"", b"x"))
    await client.aclose()
    assert [(e["function"], e["event"]) for e in got] == [("w1", "submitted"),
                                                          ("w2", "submitted")]


async def test_events_function_feeds_a_worker(nursery: trio.Nursery) -> None:
    srv = Server(ServerConfig(listen=("127.0.0.1",), port=0, events_function="ev"))
    (addr, *_) = await nursery.start(srv.serve)
    port = addr[1]
    worker = await trio.open_tcp_stream("127.0.0.1", port)
    wparser = Parser()
    client = await trio.open_tcp_stream("127.0.0.1", port)
    await client.send_all(encode_req(PT.SUBMIT_JOB_BG, b"f", b"k", b"abc"))
    received: list[dict[str, object]] = []
    with trio.fail_after(10):
        await worker.send_all(encode_req(PT.CAN_DO, b"ev"))
        # The worker handles the event jobs as any job: grab, complete, again.
        while len(received) < 1:
            await worker.send_all(encode_req(PT.GRAB_JOB))
            (reply,) = await _packets(worker, wparser, 1)
            if reply.type == PT.NO_JOB:
                await trio.sleep(0.01)
                continue
            assert reply.type == PT.JOB_ASSIGN and reply.args[1] == b"ev"
            received.append(json.loads(reply.args[2]))
            await worker.send_all(encode_req(PT.WORK_COMPLETE, reply.args[0], b""))
        await trio.sleep(0.05)
        await worker.send_all(encode_req(PT.GRAB_JOB))
        (reply,) = await _packets(worker, wparser, 1)
    # No event about the events function itself (its own jobs would loop).
    assert reply.type == PT.NO_JOB
    assert received[0]["event"] == "submitted" and received[0]["function"] == "f"
    assert received[0]["unique"] == "k"
    await worker.aclose()
    await client.aclose()


# ---------------------------------------------------------------- gearadmin --watch


@pytest.mark.slow
def test_gearadmin_watch_prints_json_lines_until_sigint(start_inprocess) -> None:  # type: ignore[no-untyped-def]
    import socket

    srv = start_inprocess()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gearman_cli.gearadmin", "-h", "127.0.0.1", "-p",
         str(srv.port), "--watch", "wf"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("GEARMAN_SERVER")})
    try:
        import time

        deadline = time.monotonic() + 10
        while not srv.server.events.watchers:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        with socket.create_connection(srv.address) as sock:
            sock.sendall(encode_req(PT.SUBMIT_JOB_BG, b"zz", b"", b"x")
                         + encode_req(PT.SUBMIT_JOB_BG, b"wf", b"", b"x") * 2)
            assert proc.stdout is not None
            lines = [json.loads(proc.stdout.readline()) for _ in range(2)]
        assert [(e["function"], e["event"]) for e in lines] == [("wf", "submitted")] * 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == -signal.SIGINT
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_events_function_with_gearman_worker(start_inprocess, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``gearman -w -f ev -- cmd`` is an event hook: each event is one job's data."""
    import socket
    import time

    srv = start_inprocess("--events-function", "ev")
    out = tmp_path / "events.jsonl"
    worker = subprocess.Popen(
        [sys.executable, "-m", "gearman_cli.gearman", "-h", "127.0.0.1", "-p", str(srv.port),
         "-w", "-f", "ev", "-c", "3", "--", "sh", "-c", f"cat >> {out}; echo >> {out}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("GEARMAN_SERVER")})
    try:
        with socket.create_connection(srv.address) as sock:
            sock.sendall(encode_req(PT.SUBMIT_JOB_BG, b"hooked", b"k1", b"data"))
            parser = Parser()
            parser.receive_data(sock.recv(4096))
            assert isinstance(parser.next_event(), Packet)
            # A worker for "hooked": submitted, started and completed events.
            sock.sendall(encode_req(PT.CAN_DO, b"hooked") + encode_req(PT.GRAB_JOB))
            deadline = time.monotonic() + 10
            packet = parser.next_event()
            while not isinstance(packet, Packet) or packet.type != PT.JOB_ASSIGN:
                assert time.monotonic() < deadline
                parser.receive_data(sock.recv(4096))
                packet = parser.next_event()
            sock.sendall(encode_req(PT.WORK_COMPLETE, packet.args[0], b"ok"))
            assert worker.wait(15) == 0, worker.stderr
        events = [json.loads(x) for x in out.read_text().splitlines() if x]
        assert [(e["function"], e["event"]) for e in events] == [
            ("hooked", "submitted"), ("hooked", "started"), ("hooked", "completed")]
        assert events[0]["unique"] == "k1" and events[2]["run"] >= 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()

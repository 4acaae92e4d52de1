"""A hostile or careless peer can't stall, bloat or wedge the server (issue 12).

Our server in-process on port 0, over real loopback sockets; the fast layer. Each test
names what it guards against; speed is measured in benchmarks/, never asserted here.
"""

from __future__ import annotations

import contextlib
import gc
import socket
import struct
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import NEED_DATA, Packet, PacketType, Parser, encode_req
from server.app import Server
from server.config import ServerConfig

PT = PacketType


class Peer:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.parser = Parser()

    @classmethod
    async def connect(cls, port: int) -> Peer:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, *packets: bytes) -> None:
        await self.stream.send_all(b"".join(packets))

    async def packet(self) -> Packet:
        while True:
            ev = self.parser.next_event()
            if ev is not NEED_DATA:
                assert isinstance(ev, Packet), ev
                return ev
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError
            self.parser.receive_data(data)

    async def text(self, terminator: bytes) -> bytes:
        """A text reply up to ``terminator``; what follows it is left for ``packet``."""
        buf = b""
        while terminator not in buf:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError(buf)
            buf += data
        end = buf.index(terminator) + len(terminator)
        self.parser.receive_data(buf[end:])
        return buf[:end]

    async def closed(self) -> bool:
        try:
            while await self.stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
        return True


@pytest.fixture
def slow_commits(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """SQLite commits that wait for the event (set at the end whatever happened, so a
    failing test does not leave the store's thread waiting)."""
    from server.store import sqlite

    gate = threading.Event()
    real_commit = sqlite.SqliteStore.commit

    def slow_commit(self: sqlite.SqliteStore, added: object, done: object) -> None:
        gate.wait(20)
        real_commit(self, added, done)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite.SqliteStore, "commit", slow_commit)
    yield gate
    gate.set()


async def start(nursery: trio.Nursery, **options: object) -> tuple[Server, int]:
    config = ServerConfig(listen=("127.0.0.1",), port=0, **options)  # type: ignore[arg-type]
    srv = Server(config)
    addresses = await nursery.start(srv.serve)
    return srv, addresses[0][1]


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[tuple[Server, int]]:
    srv, port = await start(nursery, max_packet_size=16 << 20)
    yield srv, port
    srv.shutdown()


async def echo_works(port: int) -> None:
    peer = await Peer.connect(port)
    await peer.send(encode_req(PT.ECHO_REQ, b"alive"))
    assert (await peer.packet()).args == (b"alive",)
    await peer.stream.aclose()


# ---------------------------------------------------------------- stalls


async def test_a_long_listing_lets_other_connections_go_first(
        server: tuple[Server, int]) -> None:
    """`show jobs` over 200,000 jobs stalled every other connection for 2 s: a long
    listing is now built in chunks, other connections being served in between."""
    _, port = server
    jobs = 30_000
    with trio.fail_after(60):
        client = await Peer.connect(port)
        await client.send(b"".join(encode_req(PT.SUBMIT_JOB_BG, b"deep", b"", b"%d" % i)
                                   for i in range(jobs)))
        for _ in range(jobs):
            assert (await client.packet()).type is PT.JOB_CREATED
        admin, other = await Peer.connect(port), await Peer.connect(port)
        order: list[str] = []

        async def listing() -> None:
            reply = await admin.text(b"\n.\n")
            assert reply.count(b"\n") == jobs + 1
            # ...and the same connection's next reply still comes after it.
            assert (await admin.packet()).args == (b"after",)
            order.append("listing")

        async def echo() -> None:
            assert (await other.packet()).args == (b"quick",)
            order.append("echo")

        await admin.send(b"show jobs\n", encode_req(PT.ECHO_REQ, b"after"))
        await other.send(encode_req(PT.ECHO_REQ, b"quick"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listing)
            nursery.start_soon(echo)
        assert order == ["echo", "listing"]


async def test_impossible_schedule_is_refused_up_front(server: tuple[Server, int]) -> None:
    _, port = server
    with trio.fail_after(10):
        c = await Peer.connect(port)
        for mday, month in ((b"31", b"2"), (b"30", b"2"), (b"31", b"4"), (b"31", b"11")):
            await c.send(encode_req(PT.SUBMIT_JOB_SCHED, b"f", b"", b"0", b"0", mday, month,
                                    b"", b"x"))
            reply = await c.packet()
            assert (reply.type, reply.args[0]) == (PT.ERROR, b"INVALID_ARGUMENT")
        await c.send(encode_req(PT.SUBMIT_JOB_SCHED, b"f", b"", b"0", b"0", b"29", b"2",
                                b"", b"x"))
        assert (await c.packet()).type is PT.JOB_CREATED  # a leap day is possible


# ---------------------------------------------------------------- memory


async def test_closed_connections_free_their_buffers_without_the_collector(
        server: tuple[Server, int]) -> None:
    """Ten connections that sent most of a huge packet and closed used to keep their
    buffers until Python's cyclic GC happened to run."""
    _, port = server
    gc.disable()
    try:
        with trio.fail_after(30):
            for _ in range(4):
                peer = await Peer.connect(port)
                header = b"\0REQ" + struct.pack(">II", PT.ECHO_REQ, 15 << 20)
                await peer.send(header + b"x" * (4 << 20))
                await peer.stream.aclose()
            await echo_works(port)
            for _ in range(100):  # until the server has seen every close
                big = sum(1 for o in gc.get_objects()
                          if isinstance(o, Parser) and o.held > (1 << 20))
                if not big:
                    break
                await trio.sleep(0.02)
            assert big == 0
    finally:
        gc.enable()


async def test_a_peer_that_never_reads_holds_its_reply_once(
        server: tuple[Server, int]) -> None:
    """A 12 MiB ECHO never read: the server holds the reply, not also the request."""
    srv, port = server
    with trio.fail_after(30):
        peer = await Peer.connect(port)
        peer.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await peer.send(encode_req(PT.ECHO_REQ, b"e" * (12 << 20)))
        for _ in range(200):
            held = [p for p in srv.gear.peers() if p.out]
            if held:
                break
            await trio.sleep(0.02)
        (gear_peer,) = held
        assert gear_peer.parser.held == 0
        await echo_works(port)


# ---------------------------------------------------------------- timeouts


async def test_idle_gear_connection_is_closed(nursery: trio.Nursery) -> None:
    srv, port = await start(nursery, idle_timeout=0.3)
    with trio.fail_after(10):
        idle = await Peer.connect(port)
        assert await idle.closed()
        await echo_works(port)
    srv.shutdown()


async def test_gear_connections_have_no_idle_timeout_by_default() -> None:
    assert ServerConfig().idle_timeout == 0  # workers sleep for hours between jobs


async def test_http_idle_and_slow_requests_are_closed(nursery: trio.Nursery) -> None:
    srv, _ = await start(nursery, protocols=("http",), http_port=0, http_idle_timeout=0.3,
                         http_request_timeout=0.3)
    http_port = srv.http_addresses[0][1]
    with trio.fail_after(10):
        idle = await Peer.connect(http_port)
        assert await idle.closed()
        slow = await Peer.connect(http_port)
        await slow.stream.send_all(b"POST /f HTTP/1.1\r\nHost: x\r\n")  # never finished
        reply = await slow.text(b"\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 408 ")
        assert await slow.closed()
    srv.shutdown()


async def test_memcached_idle_connection_is_closed(nursery: trio.Nursery) -> None:
    srv, _ = await start(nursery, protocols=("memcached",), memcached_port=0,
                         idle_timeout=0.3)
    port = srv.frontend_addresses["memcached"][0][1]
    with trio.fail_after(10):
        idle = await Peer.connect(port)
        assert await idle.closed()
    srv.shutdown()


# ---------------------------------------------------------------- fuzzing

_TYPES = st.sampled_from([int(t) for t in PacketType] + [0, 43, 99, 2**31])


@st.composite
def _packet(draw: st.DrawFn) -> bytes:
    """A plausible packet (known or unknown type, sizes that lie or not) or garbage."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=64))
    payload = draw(st.binary(max_size=64))
    size = len(payload) if kind < 3 else draw(st.integers(0, 200))
    magic = draw(st.sampled_from([b"\0REQ", b"\0RES", b"\0REX"]))
    return magic + struct.pack(">II", draw(_TYPES), size) + payload


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(st.lists(st.one_of(_packet(), st.sampled_from(
    [b"status\n", b"workers\n", b"show jobs\n", b"shutdown\n", b"maxqueue x 1\n",
     encode_req(PT.SUBMIT_JOB, b"f", b"u", b"d"), encode_req(PT.CAN_DO, b"f"),
     encode_req(PT.GRAB_JOB), encode_req(PT.PRE_SLEEP)])), max_size=12))
def test_byte_fuzzing_never_takes_the_server_down(chunks: list[bytes]) -> None:
    """Random packets and bytes over two connections; the server keeps answering, and
    its admin `shutdown` stays the only way to stop it (the fuzzer may send one)."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            srv, port = await start(nursery, max_packet_size=1024)
            with trio.fail_after(10):
                a, b = await Peer.connect(port), await Peer.connect(port)
                for i, chunk in enumerate(chunks):
                    target = a if i % 2 else b
                    with contextlib.suppress(trio.BrokenResourceError):
                        await target.stream.send_all(chunk)
                if b"shutdown\n" not in chunks:
                    await echo_works(port)
            srv.shutdown()

    trio.run(main)


# ---------------------------------------------------------------- small ones (item 9)


async def test_running_out_of_descriptors_is_logged_once_per_ten_seconds(
        autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The accept loop logged an fd-exhaustion error ten times a second."""
    import errno

    from server import host as host_module

    failures = 0
    real_accept = socket.socket.accept

    def accept(self: socket.socket) -> tuple[socket.socket, object]:
        nonlocal failures
        if failures < 300:  # 30 s of EMFILE at one retry per 100 ms
            failures += 1
            raise OSError(errno.EMFILE, "Too many open files")
        return real_accept(self)

    accepted: list[tuple[str, int]] = []

    class FakeHost:
        config = ServerConfig()

        def spawn(self, fn: object, stream: trio.SocketStream, address: str,
                  port: int) -> None:
            accepted.append((address, port))

    async def handler(stream: trio.SocketStream, address: str, port: int) -> None:
        raise AssertionError

    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    pending = socket.create_connection(listener.socket.getsockname())  # always readable
    monkeypatch.setattr(socket.socket, "accept", accept)
    with trio.move_on_after(31):
        await host_module.accept_loop(FakeHost(), listener, handler)  # type: ignore[arg-type]
    pending.close()
    await listener.aclose()
    errors = [r for r in caplog.records if r.levelname == "ERROR"
              and "accept failed" in r.getMessage()]
    assert failures == 300
    assert 3 <= len(errors) <= 4  # once per 10 s, not 300 times
    assert "failures since the last report" in errors[-1].getMessage()
    assert len(accepted) == 1 and accepted[0][0] == "127.0.0.1"  # then it goes on


def test_job_retries_help_says_what_n_counts() -> None:
    """`-j N` help said "retried N times" but N counts assignments in all."""
    from server import cli

    text = " ".join(cli.help_text().split())
    assert "Assignments a job gets in all" in text
    assert "retried N times" not in text


# ---------------------------------------------------------------- found by review


@pytest.mark.parametrize(("count", "transport"),
                         [(3, "epoll"), (12, "epoll"), (12, "streams")])
async def test_every_worker_filling_a_slow_client_is_paused(nursery: trio.Nursery,
                                                            count: int, transport: str) -> None:
    """Back-pressure paused only the first worker that filled a slow client: a second
    one went on streaming until the client was dropped at the hard bound. Later, workers
    resumed together could each bring a read past the bound and so push the client over
    the hard bound: it was dropped (three workers: once in about 15 runs; twelve bring
    more than the hard bound's 192 KiB of slack past the bound in one round). A request
    from the client past the hard bound was then its own reply past it: dropped."""
    srv, port = await start(nursery, max_outgoing_buffer=64 * 1024, transport=transport)
    with trio.fail_after(30):
        client = await Peer.connect(port)
        await client.send(*(encode_req(PT.SUBMIT_JOB, b"fn", b"u%d" % i, b"x")
                            for i in range(count)))
        handles = [(await client.packet()).args[0] for _ in range(count)]
        workers = []
        for _ in range(count):
            w = await Peer.connect(port)
            await w.send(encode_req(PT.CAN_DO, b"fn"), encode_req(PT.GRAB_JOB))
            workers.append((w, (await w.packet()).args[0]))
        chunks = 120 // count  # 120 x 32 KiB = 3.75 MiB, far past the 256 KiB hard bound

        async def stream(w: Peer, handle: bytes) -> None:
            data = encode_req(PT.WORK_DATA, handle, b"d" * 32768)
            for _ in range(chunks):
                await w.stream.send_all(data)
            await w.send(encode_req(PT.WORK_COMPLETE, handle, b""))

        async with trio.open_nursery() as inner:
            for w, handle in workers:
                inner.start_soon(stream, w, handle)
            await trio.sleep(0.5)  # let the workers run ahead of the (not yet reading) client
            # Each worker is paused after the batch that went past the bound: at most one
            # read (64 KiB) and the packet it completes (32 KiB) each past it.
            bound = 64 * 1024 + count * (64 * 1024 + 32768 + 64)
            assert all(len(p.out) <= bound for p in srv.gear.peers())
            # The client, past its bound, is not read either (as if it had filled it).
            slow = max(srv.gear.peers(), key=lambda p: len(p.out))
            assert slow.over and slow.paused and not slow.waiting_on
            await client.send(encode_req(PT.ECHO_REQ, b"still here"))
            received, done, echoed = 0, 0, False
            while done < count or not echoed:
                packet = await client.packet()  # the client was not dropped
                if packet.type is PT.WORK_DATA:
                    received += len(packet.args[1])
                elif packet.type is PT.ECHO_RES:
                    echoed = True
                else:
                    assert packet.type is PT.WORK_COMPLETE
                    done += 1
        assert received == count * chunks * 32768 and sorted(handles) == sorted(
            h for _, h in workers)
    srv.shutdown()


async def test_a_paused_worker_whose_connection_is_reset_is_let_go(
        nursery: trio.Nursery) -> None:
    """A worker paused for a slow client, its socket then reset: epoll reports the reset
    whatever the worker's event mask, and the reactor skipped paused peers, so it spun
    (a core at 100%) and kept the dead worker (review)."""
    srv, port = await start(nursery, max_outgoing_buffer=64 * 1024)
    with trio.fail_after(20):
        client = await Peer.connect(port)
        await client.send(encode_req(PT.SUBMIT_JOB, b"fn", b"", b"x"))
        handle = (await client.packet()).args[0]
        worker = await Peer.connect(port)
        await worker.send(encode_req(PT.CAN_DO, b"fn"), encode_req(PT.GRAB_JOB))
        await worker.packet()
        data = encode_req(PT.WORK_DATA, handle, b"d" * 32768)
        with trio.move_on_after(1):  # until the kernel buffers are full: it is paused
            while True:
                await worker.stream.send_all(data)
        assert any(p.paused and p.waiting_on for p in srv.gear.peers())
        sock = worker.stream.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, not a FIN
        while len(srv.gear.peers()) > 1:  # the client alone
            await trio.sleep(0.01)
    srv.shutdown()


async def test_a_client_that_closes_its_side_still_gets_its_held_replies(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    """`printf ... | nc -N`: the JOB_CREATED held for the store's commit, or a long
    listing built in chunks, was lost when the client closed its writing side."""
    srv, port = await start(nursery, queue_type="libsqlite3",
                            queue_options=(("libsqlite3-db", str(tmp_path / "q.db")),))
    with trio.fail_after(10):
        peer = await Peer.connect(port)
        await peer.send(encode_req(PT.SUBMIT_JOB_BG, b"fn", b"", b"x"))
        await peer.stream.send_eof()
        assert (await peer.packet()).type is PT.JOB_CREATED
    srv.shutdown()


async def test_replies_held_behind_commits_are_bounded(
        nursery: trio.Nursery, tmp_path: Path,
        slow_commits: threading.Event) -> None:
    """A client alternating background submits (held for the commit) with big ECHOs
    grew the held replies without bound while the store was slow: it is paused."""
    gate = slow_commits
    srv, port = await start(nursery, max_outgoing_buffer=64 * 1024, queue_type="libsqlite3",
                            queue_options=(("libsqlite3-db", str(tmp_path / "q.db")),))
    with trio.fail_after(30):
        peer = await Peer.connect(port)
        big = b"E" * 200_000
        rounds = 20

        async def send_all() -> None:
            for _ in range(rounds):
                await peer.send(encode_req(PT.SUBMIT_JOB_BG, b"fn", b"", b"x"),
                                encode_req(PT.ECHO_REQ, big))

        async with trio.open_nursery() as inner:
            inner.start_soon(send_all)
            for _ in range(500):
                gear_peers = srv.gear.peers()
                if gear_peers and gear_peers[0].paused:
                    break
                await trio.sleep(0.01)
            (gear_peer,) = srv.gear.peers()
            assert gear_peer.paused and not gear_peer.broken
            assert gear_peer.held <= gear_peer.hard_limit
            gate.set()
            for _ in range(rounds):
                assert (await peer.packet()).type is PT.JOB_CREATED
                assert (await peer.packet()).args == (big,)
    srv.shutdown()


async def test_a_worker_streaming_to_a_client_held_behind_a_commit_is_paused(
        nursery: trio.Nursery, tmp_path: Path,
        slow_commits: threading.Event) -> None:
    """A client's background submit waits for a slow commit (its JOB_CREATED is held, and
    all its later output with it) while a worker streams its foreground job's data: the
    held bytes passed the hard bound and the client was dropped. The worker is paused
    until the commit lets them out."""
    gate = slow_commits
    srv, port = await start(nursery, max_outgoing_buffer=64 * 1024, queue_type="libsqlite3",
                            queue_options=(("libsqlite3-db", str(tmp_path / "q.db")),))
    with trio.fail_after(30):
        client = await Peer.connect(port)
        await client.send(encode_req(PT.SUBMIT_JOB, b"fg", b"", b"x"))
        handle = (await client.packet()).args[0]
        await client.send(encode_req(PT.SUBMIT_JOB_BG, b"bg", b"", b"y"))  # held
        worker = await Peer.connect(port)
        await worker.send(encode_req(PT.CAN_DO, b"fg"), encode_req(PT.GRAB_JOB))
        assert (await worker.packet()).args[0] == handle
        chunks = 40  # 1.25 MiB held behind the commit, far past the 256 KiB hard bound
        data = encode_req(PT.WORK_DATA, handle, b"d" * 32768)

        async def stream() -> None:
            for _ in range(chunks):
                await worker.stream.send_all(data)
            await worker.send(encode_req(PT.WORK_COMPLETE, handle, b""))

        async with trio.open_nursery() as inner:
            inner.start_soon(stream)
            try:
                for _ in range(500):
                    if any(p.paused and p.waiting_on for p in srv.gear.peers()):
                        break
                    await trio.sleep(0.01)
                held = [p for p in srv.gear.peers() if p.held]
                assert len(held) == 1 and not held[0].broken
                assert held[0].held <= 64 * 1024 + 64 * 1024 + 32768 + 64  # one batch past
            finally:
                gate.set()
            assert (await client.packet()).type is PT.JOB_CREATED  # the client is here
            received = 0
            while (packet := await client.packet()).type is PT.WORK_DATA:
                received += len(packet.args[1])
            assert packet.type is PT.WORK_COMPLETE and received == chunks * 32768
    srv.shutdown()


async def test_many_long_listings_are_built_one_at_a_time(
        nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each long admin listing was built in its own task, all at once: a client sending
    many `status` lines (without reading) made the server hold every listing in memory
    together. They are built one after another, and the client is not read while more
    than a few wait."""

    from server import admin

    building = [0, 0]  # now, most at once
    status_rows, size = admin._LISTINGS["status"]

    def counted(*args: object) -> Iterator[bytes]:
        building[0] += 1
        building[1] = max(building)
        try:
            yield from status_rows(*args)  # type: ignore[arg-type]
        finally:
            building[0] -= 1

    monkeypatch.setitem(admin._LISTINGS, "status", (counted, size))
    monkeypatch.setattr(admin, "CHUNKED_ROWS", 1)
    srv, port = await start(nursery)
    with trio.fail_after(30):
        worker = await Peer.connect(port)
        functions = 1100  # more rows than the builder writes between two yields (1,000)
        await worker.send(*(encode_req(PT.CAN_DO, b"f%d" % i) for i in range(functions)))
        await worker.send(encode_req(PT.ECHO_REQ, b"registered"))
        assert (await worker.packet()).args == (b"registered",)
        client = await Peer.connect(port)
        listings = 100
        await client.stream.send_all(b"status\n" * listings)
        paused = False
        for _ in range(100):
            peers = [p for p in srv.gear.peers() if p.listings]
            if any(p.paused for p in peers):
                paused = True
                break
            await trio.sleep(0.005)
        assert paused
        reply = b""
        while reply.count(b".\n") < listings:
            reply += await client.stream.receive_some(1 << 20)
        assert building[1] == 1
        tables = reply.split(b".\n")
        assert len(tables) == listings + 1 and tables[-1] == b""
        assert all(t.count(b"\n") == functions for t in tables[:-1])
    srv.shutdown()


async def test_listings_behind_a_held_reply_are_not_built_ahead(
        nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        slow_commits: threading.Event) -> None:
    """Listings asked for behind a background submit waiting for a slow commit were all
    built and kept until the commit let them out (review: 21.8 MB after three reads of
    `status` lines). The next one is built only once the one before is out."""

    from server import admin

    gate = slow_commits
    started = [0]
    status_rows, size = admin._LISTINGS["status"]

    def counted(*args: object) -> Iterator[bytes]:
        started[0] += 1
        yield from status_rows(*args)  # type: ignore[arg-type]

    monkeypatch.setitem(admin._LISTINGS, "status", (counted, size))
    monkeypatch.setattr(admin, "CHUNKED_ROWS", 1)
    srv, port = await start(nursery, queue_type="libsqlite3",
                            queue_options=(("libsqlite3-db", str(tmp_path / "q.db")),))
    try:
        with trio.fail_after(30):
            worker = await Peer.connect(port)
            await worker.send(encode_req(PT.CAN_DO, b"f"), encode_req(PT.ECHO_REQ, b"ok"))
            await worker.packet()
            client = await Peer.connect(port)
            await client.send(encode_req(PT.SUBMIT_JOB_BG, b"bg", b"", b"y"))  # held
            listings = 40
            await client.stream.send_all(b"status\n" * listings)
            await trio.sleep(0.3)
            assert started[0] == 1  # built, waiting behind the commit; no other built
            gate.set()
            reply = b""
            while reply.count(b".\n") < listings:
                reply += await client.stream.receive_some(1 << 20)
            magic, ptype, size = struct.unpack(">4sII", reply[:12])
            assert (magic, ptype) == (b"\0RES", PT.JOB_CREATED)  # first, as asked
            tables = reply[12 + size:].split(b".\n")
            assert started[0] == listings and len(tables) == listings + 1
            assert all(b"f\t0\t0\t1\n" in t for t in tables[:-1]) and tables[-1] == b""
    finally:
        gate.set()
    srv.shutdown()


async def test_http_client_that_never_reads_is_dropped_after_the_write_timeout(
        nursery: trio.Nursery) -> None:
    srv, port = await start(nursery, protocols=("http",), http_port=0, write_timeout=0.5)
    http_port = srv.http_addresses[0][1]
    with trio.fail_after(20):
        worker = await Peer.connect(port)
        await worker.send(encode_req(PT.CAN_DO, b"big"), encode_req(PT.PRE_SLEEP))
        client = await Peer.connect(http_port)
        client.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await client.stream.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await worker.packet()).type is PT.NOOP
        await worker.send(encode_req(PT.GRAB_JOB))
        handle = (await worker.packet()).args[0]
        await worker.send(encode_req(PT.WORK_COMPLETE, handle, b"r" * (20 << 20)))
        for _ in range(400):  # the HTTP connection goes away once the timeout passes
            if not srv.manager.conns or len(srv.manager.conns) == 1:
                break
            await trio.sleep(0.05)
        assert len(srv.manager.conns) == 1  # only the worker is left
    srv.shutdown()


async def test_memcached_client_gone_after_closing_does_not_hold_its_get_for_ever(
        nursery: trio.Nursery) -> None:
    srv, _ = await start(nursery, protocols=("memcached",), memcached_port=0,
                         write_timeout=0.3)
    port = srv.frontend_addresses["memcached"][0][1]
    with trio.fail_after(10):
        for i in range(5):
            peer = await Peer.connect(port)
            await peer.stream.send_all(b"get nobody/%d\r\n" % i)
            await peer.stream.aclose()
        for _ in range(200):
            if not srv.manager.jobs and not srv.manager.conns:
                break
            await trio.sleep(0.02)
        assert not srv.manager.jobs and not srv.manager.conns
    srv.shutdown()

"""The trio layer of gearmand over real loopback sockets: framing errors, bad peers, limits,
output ordering, shutdown. Our server runs in-process on port 0."""

from __future__ import annotations

import dataclasses
import logging
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from protocol import NEED_DATA, Packet, PacketType, Parser, encode_req
from server.app import Server
from server.config import ServerConfig

PT = PacketType


class Peer:
    """A raw protocol peer on a trio socket stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.parser = Parser()
        self.closed = False

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
                self.closed = True
                raise EOFError
            self.parser.receive_data(data)

    async def line_reply(self, terminator: bytes) -> bytes:
        buf = b""
        while not buf.endswith(terminator):
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError(buf)
            buf += data
        return buf

    async def eof(self) -> bool:
        """True if the server closed the connection (reads until EOF)."""
        try:
            while await self.stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
        return True


@pytest.fixture(params=["epoll", "streams"])
async def server(nursery: trio.Nursery,
                 request: pytest.FixtureRequest) -> AsyncIterator[tuple[Server, int]]:
    """Our server in-process, with each of the Gear front-end's transports."""
    config = ServerConfig(listen=("127.0.0.1",), port=0, max_packet_size=1 << 20,
                          max_outgoing_buffer=256 * 1024, transport=request.param)
    srv = Server(config)
    addresses = await nursery.start(srv.serve)
    yield srv, addresses[0][1]
    srv.shutdown()


async def connect(port: int) -> Peer:
    return Peer(await trio.open_tcp_stream("127.0.0.1", port))


async def test_echo_and_admin_interleaved(server: tuple[Server, int]) -> None:
    _, port = server
    with trio.fail_after(5):
        peer = await connect(port)
        await peer.send(encode_req(PT.ECHO_REQ, b"a\0b"))
        assert (await peer.packet()).args == (b"a\0b",)
        await peer.stream.send_all(b"version\n")
        assert (await peer.line_reply(b"\n")).startswith(b"OK ")
        await peer.send(encode_req(PT.ECHO_REQ, b"again"))
        assert (await peer.packet()).args == (b"again",)


async def test_oversized_packet_gets_error_and_close(server: tuple[Server, int]) -> None:
    _, port = server
    with trio.fail_after(5):
        peer = await connect(port)
        # Only the header: the server must refuse from it, without waiting for 2 MiB.
        await peer.stream.send_all(b"\0REQ" + struct.pack(">II", PT.SUBMIT_JOB, 2 << 20))
        reply = await peer.packet()
        assert reply.type is PT.ERROR
        assert reply.args[0] == b"ARGUMENT_TOO_LARGE"
        assert await peer.eof()


async def test_missing_separators_is_error_and_close(server: tuple[Server, int]) -> None:
    _, port = server
    with trio.fail_after(5):
        peer = await connect(port)
        await peer.stream.send_all(b"\0REQ" + struct.pack(">II", PT.SUBMIT_JOB, 4) + b"fnxx")
        reply = await peer.packet()
        assert reply.type is PT.ERROR and reply.args[0] == b"INVALID_PACKET"
        assert await peer.eof()


@pytest.mark.parametrize("garbage", [
    b"\0XYZ" + b"\0" * 8,
    b"\0REQ" + struct.pack(">II", 99, 0),
    b"\0REQ" + struct.pack(">II", 0, 0),
])
async def test_bad_header_closes_but_server_survives(server: tuple[Server, int],
                                                     garbage: bytes) -> None:
    _, port = server
    with trio.fail_after(5):
        peer = await connect(port)
        await peer.stream.send_all(garbage)
        reply = await peer.packet()
        assert reply.type is PT.ERROR
        assert await peer.eof()
        other = await connect(port)
        await other.send(encode_req(PT.ECHO_REQ, b"alive"))
        assert (await other.packet()).args == (b"alive",)


async def test_res_magic_is_answered_and_connection_kept(server: tuple[Server, int]) -> None:
    _, port = server
    with trio.fail_after(5):
        peer = await connect(port)
        await peer.stream.send_all(Packet.res(PT.ECHO_REQ, b"x").encode())
        reply = await peer.packet()
        assert reply.args == (b"INVALID_MAGIC", b"Request magic expected")
        await peer.send(encode_req(PT.ECHO_REQ, b"still here"))
        assert (await peer.packet()).args == (b"still here",)


async def test_peer_that_vanishes_mid_job_loses_no_job(server: tuple[Server, int]) -> None:
    _, port = server
    with trio.fail_after(10):
        client = await connect(port)
        await client.send(encode_req(PT.SUBMIT_JOB, b"f", b"", b"work"))
        handle = (await client.packet()).args[0]
        w1 = await connect(port)
        await w1.send(encode_req(PT.CAN_DO, b"f"), encode_req(PT.GRAB_JOB))
        assert (await w1.packet()).args[0] == handle
        # Half a WORK_COMPLETE, then the worker vanishes.
        partial = encode_req(PT.WORK_COMPLETE, handle, b"result")
        await w1.stream.send_all(partial[:9])
        await w1.stream.aclose()
        w2 = await connect(port)
        await w2.send(encode_req(PT.CAN_DO, b"f"), encode_req(PT.GRAB_JOB))
        assign = await w2.packet()
        assert assign.type is PT.JOB_ASSIGN and assign.args == (handle, b"f", b"work")
        await w2.send(encode_req(PT.WORK_COMPLETE, handle, b"done"))
        assert (await client.packet()).args == (handle, b"done")


@pytest.mark.slow  # two seconds of flooding
async def test_slow_reader_is_paused_not_buffered(server: tuple[Server, int]) -> None:
    """A peer that floods ECHO_REQ without reading: the server stops reading from it
    once its outgoing buffer passes the bound, so its memory stays bounded."""
    srv, port = server
    with trio.fail_after(20):
        peer = await connect(port)
        chunk = encode_req(PT.ECHO_REQ, b"x" * 60000) * 16
        sent = 0
        with trio.move_on_after(2):
            while sent < 200 * 1024 * 1024:
                await peer.stream.send_all(chunk)
                sent += len(chunk)
        # The kernel buffers fill up and the server stops reading well before 200 MiB.
        assert sent < 64 * 1024 * 1024
        for p in srv.gear.peers():
            assert len(p.out) <= p.hard_limit
        # Others are still served.
        other = await connect(port)
        await other.send(encode_req(PT.ECHO_REQ, b"ok"))
        assert (await other.packet()).args == (b"ok",)


async def test_admin_shutdown_stops_server() -> None:
    config = ServerConfig(listen=("127.0.0.1",), port=0)
    srv = Server(config)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(srv.serve)
            peer = await connect(addresses[0][1])
            await peer.stream.send_all(b"shutdown\r\n")
            assert await peer.line_reply(b"\r\n") == b"OK\r\n"
        # serve() returned: the nursery closed without cancellation.


async def test_graceful_shutdown_lets_running_job_finish() -> None:
    config = dataclasses.replace(ServerConfig(listen=("127.0.0.1",), port=0),
                                 graceful_timeout=5)
    srv = Server(config)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(srv.serve)
            port = addresses[0][1]
            client = await connect(port)
            await client.send(encode_req(PT.SUBMIT_JOB, b"g", b"", b"w"))
            handle = (await client.packet()).args[0]
            worker = await connect(port)
            await worker.send(encode_req(PT.CAN_DO, b"g"), encode_req(PT.GRAB_JOB))
            await worker.packet()
            srv.shutdown(graceful=True)
            await trio.sleep(0.2)
            # New connections are refused once shutdown started...
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", port)
            # ...but the running job still completes for its client.
            await worker.send(encode_req(PT.WORK_COMPLETE, handle, b"finished"))
            assert (await client.packet()).args == (handle, b"finished")


async def test_worker_streaming_to_a_slow_client_is_paused_not_the_client_dropped(
        server: tuple[Server, int]) -> None:
    """Issue 12: a worker streaming WORK_DATA faster than its client reads used to get
    the client dropped at 4x the output bound. Now the worker is not read while the
    client is behind, the client's backlog stays bounded, and every byte arrives."""
    srv, port = server
    chunk_size, chunks = 60000, 100  # 6 MB, far past the 1 MiB hard limit
    with trio.fail_after(30):
        client = await connect(port)
        await client.send(encode_req(PT.SUBMIT_JOB, b"stream", b"", b"go"))
        handle = (await client.packet()).args[0]
        worker = await connect(port)
        await worker.send(encode_req(PT.CAN_DO, b"stream"), encode_req(PT.GRAB_JOB))
        await worker.packet()
        most_pending = 0

        async def stream() -> None:
            data = encode_req(PT.WORK_DATA, handle, b"d" * chunk_size)
            for _ in range(chunks):
                await worker.stream.send_all(data)
            await worker.send(encode_req(PT.WORK_COMPLETE, handle, b"end"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream)
            received = 0
            while True:
                for p in srv.gear.peers():
                    most_pending = max(most_pending, len(p.out))
                packet = await client.packet()
                if packet.type is PT.WORK_COMPLETE:
                    break
                assert packet.type is PT.WORK_DATA
                received += len(packet.args[1])
                await trio.sleep(0.001)  # a slow reader
        assert received == chunk_size * chunks
        assert most_pending <= 4 * 256 * 1024


async def test_client_that_never_reads_is_dropped_after_the_write_timeout() -> None:
    """The worker paused for a client that never reads goes on once the client, which
    took no byte for --write-timeout, is dropped."""
    config = ServerConfig(listen=("127.0.0.1",), port=0, max_outgoing_buffer=256 * 1024,
                          write_timeout=0.5)
    srv = Server(config)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = (await nursery.start(srv.serve))[0][1]
            client = await connect(port)
            await client.send(encode_req(PT.SUBMIT_JOB, b"stream", b"", b"go"))
            handle = (await client.packet()).args[0]
            worker = await connect(port)
            await worker.send(encode_req(PT.CAN_DO, b"stream"), encode_req(PT.GRAB_JOB))
            await worker.packet()
            chunk = encode_req(PT.WORK_DATA, handle, b"d" * 60000)
            for _ in range(100):  # blocks while the worker is paused, until the drop
                await worker.stream.send_all(chunk)
            assert all(len(p.out) <= p.hard_limit for p in srv.gear.peers())
            await worker.send(encode_req(PT.ECHO_REQ, b"still served"))
            assert (await worker.packet()).args == (b"still served",)
            # The client is gone: the admin lists the worker and the admin only.
            admin = await connect(port)
            await admin.stream.send_all(b"workers\n")
            listing = await admin.line_reply(b".\n")
            assert len(listing.splitlines()) == 3, listing
            srv.shutdown()


async def test_reply_larger_than_the_output_bound_reaches_a_reading_client(
        server: tuple[Server, int]) -> None:
    # The fixture's server bounds output at 256 KiB (hard limit 1 MiB) and accepts
    # packets up to 1 MiB: 900 KB of data then a 900 KB result, in one batch, must
    # still arrive whole (the bound is on what was pending, not on one reply).
    _, port = server
    with trio.fail_after(10):
        client = await connect(port)
        await client.send(encode_req(PT.SUBMIT_JOB, b"big", b"", b"x"))
        handle = (await client.packet()).args[0]
        worker = await connect(port)
        await worker.send(encode_req(PT.CAN_DO, b"big"), encode_req(PT.GRAB_JOB))
        await worker.packet()
        result = bytes(range(256)) * 3500
        await worker.send(encode_req(PT.WORK_DATA, handle, result),
                          encode_req(PT.WORK_COMPLETE, handle, result))
        assert (await client.packet()).args == (handle, result)
        assert (await client.packet()).args == (handle, result)


async def test_epoch_job_with_a_store_wakes_its_worker_when_due(tmp_path: Path) -> None:
    config = ServerConfig(listen=("127.0.0.1",), port=0, queue_type="libsqlite3",
                          queue_options=(("libsqlite3-db", str(tmp_path / "q.db")),))
    srv = Server(config)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            port = (await nursery.start(srv.serve))[0][1]
            worker = await connect(port)
            await worker.send(encode_req(PT.CAN_DO, b"later"), encode_req(PT.PRE_SLEEP))
            client = await connect(port)
            due = int(time.time()) + 2
            await client.send(encode_req(PT.SUBMIT_JOB_EPOCH, b"later", b"", b"%d" % due,
                                         b"payload"))
            assert (await client.packet()).type is PT.JOB_CREATED
            # Nothing else happens on the server: the timer alone must wake the worker.
            noop = await worker.packet()
            assert noop.type is PT.NOOP and time.time() >= due - 0.05
            await worker.send(encode_req(PT.GRAB_JOB))
            assert (await worker.packet()).args[2] == b"payload"
            srv.shutdown()


async def test_submit_joining_a_job_whose_commit_fails_is_never_acknowledged(
        tmp_path: Path) -> None:
    """Issue 12: with the SQLite store locked by another process, A's background submit
    waits for its commit; B submits the same unique and must hear how that commit ends.
    It used to get JOB_CREATED at once, then the job it was told exists was gone."""
    import sqlite3

    db = tmp_path / "q.db"
    config = ServerConfig(listen=("127.0.0.1",), port=0, queue_type="libsqlite3",
                          queue_options=(("libsqlite3-db", str(db)),))
    srv = Server(config)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            port = (await nursery.start(srv.serve))[0][1]
            blocker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
            blocker.execute("BEGIN IMMEDIATE")
            blocker.execute("DROP TABLE gearman_queue")  # the commit will fail
            a, b, c = await connect(port), await connect(port), await connect(port)
            await a.send(encode_req(PT.SUBMIT_JOB_BG, b"f", b"U", b"x"))
            # B waits in the foreground, so the status query can see it has joined.
            await b.send(encode_req(PT.SUBMIT_JOB, b"f", b"U", b"x"))
            while True:
                await c.send(encode_req(PT.GET_STATUS_UNIQUE, b"U"))
                status = await c.packet()
                if status.args[5] == b"1":
                    break
            blocker.execute("COMMIT")  # A's commit goes ahead and fails
            blocker.close()
            queue_error = (b"QUEUE_ERROR", b"QUEUE_ERROR")
            assert (await a.packet()).args == queue_error
            first = await b.packet()
            assert (first.type, first.args) == (PT.ERROR, queue_error)
            await c.send(encode_req(PT.GET_STATUS_UNIQUE, b"U"))
            assert (await c.packet()).args[1] == b"0"  # no such job any more
            srv.shutdown()


async def test_job_life_is_logged_with_peer_and_port_but_never_a_whole_payload(
        caplog: pytest.LogCaptureFixture) -> None:
    """gearmand -vvv logged connections without ports and no job events (issue 13)."""
    caplog.set_level(logging.DEBUG, logger="server")
    config = ServerConfig(listen=("127.0.0.1",), port=0)
    srv = Server(config)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = (await nursery.start(srv.serve))[0][1]
            client, worker = await connect(port), await connect(port)
            client_port = client.stream.socket.getsockname()[1]
            payload = b"p" * 5000
            await client.send(encode_req(PT.SUBMIT_JOB, b"logged", b"u1", payload))
            handle = (await client.packet()).args[0]
            await worker.send(encode_req(PT.CAN_DO, b"logged"), encode_req(PT.GRAB_JOB))
            await worker.packet()
            await worker.send(encode_req(PT.WORK_COMPLETE, handle, b"done"))
            await client.packet()
            srv.shutdown()
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("server"))
    name = handle.decode()
    assert f"job {name} submitted: function b'logged', unique b'u1', priority 1" in text
    assert f"127.0.0.1:{client_port}), 5000 bytes" in text
    assert f"job {name} assigned (connection" in text
    assert f"job {name} complete (connection" in text
    assert f"accepted from 127.0.0.1:{client_port}" in text
    previews = [r.getMessage() for r in caplog.records if "data:" in r.getMessage()]
    assert previews and all(len(m) < 400 for m in previews)
    assert "(5000 bytes in all)" in previews[0]

"""gearmand's HTTP front-end (``-r http``, spec §4.4, decisions.md "HTTP front-end").

Our server runs in-process with the HTTP port on 0; raw Gear workers and h11 (or raw
bytes, for HTTP/1.0) clients talk to it over loopback. The last tests run ``python -m
server`` and the reference gearmand as processes.
"""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest
import trio

from protocol import NEED_DATA, Packet, PacketType, Parser, encode_req
from server.app import Server
from server.config import ServerConfig
from tests.conftest import RunningServer, free_port, need_reference, wait_for_port

PT = PacketType


# ---------------------------------------------------------------------- helpers


@dataclass
class Ports:
    server: Server
    gear: int
    http: int


@pytest.fixture
async def ports(nursery: trio.Nursery) -> AsyncIterator[Ports]:
    config = ServerConfig(listen=("127.0.0.1",), port=0, protocols=("http",), http_port=0,
                          max_packet_size=1 << 20, max_outgoing_buffer=256 * 1024)
    srv = Server(config)
    addresses = await nursery.start(srv.serve)
    assert srv.http_addresses and srv.http_addresses[0][1] != addresses[0][1]
    yield Ports(srv, addresses[0][1], srv.http_addresses[0][1])
    srv.shutdown()


class Worker:
    """A raw Gear worker: CAN_DO, then grab jobs and answer with any packets."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.parser = Parser()

    @classmethod
    async def connect(cls, port: int, *functions: bytes) -> Worker:
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

    async def grab(self) -> tuple[bytes, bytes, bytes]:
        """(handle, function, workload) of the next job, sleeping until there is one."""
        while True:
            await self.send(encode_req(PT.GRAB_JOB))
            reply = await self.packet()
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


@dataclass
class Reply:
    status: int
    headers: dict[bytes, list[bytes]]
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list)
    trailers: dict[bytes, list[bytes]] = field(default_factory=dict)

    def header(self, name: bytes) -> bytes:
        (value,) = self.headers[name.lower()]
        return value


def _headers(pairs: list[tuple[bytes, bytes]]) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = {}
    for name, value in pairs:
        out.setdefault(name.lower(), []).append(value)
    return out


class Client:
    """An HTTP/1.1 client on one connection (h11), for keep-alive and chunked answers."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def _send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            await self.stream.send_all(data)

    async def request(self, method: bytes, target: bytes, body: bytes = b"",
                      headers: list[tuple[bytes, bytes]] | None = None) -> None:
        if self.h11.our_state is h11.DONE:
            self.h11.start_next_cycle()
        all_headers = [(b"Host", b"localhost"), (b"Content-Length", b"%d" % len(body)),
                       *(headers or [])]
        await self._send(h11.Request(method=method, target=target, headers=all_headers))
        if body:
            await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())

    async def event(self) -> h11.Event:
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(65536))
                continue
            assert isinstance(event, h11.Event), event
            return event

    async def head(self) -> Reply:
        """Read up to the response's headers."""
        event = await self.event()
        assert isinstance(event, h11.Response), event
        return Reply(event.status_code, _headers(list(event.headers)))

    async def rest(self, reply: Reply) -> Reply:
        """Read the body (each Data event is a chunk) and the trailers."""
        while True:
            event = await self.event()
            if isinstance(event, h11.Data):
                reply.chunks.append(bytes(event.data))
            else:
                assert isinstance(event, h11.EndOfMessage), event
                reply.trailers = _headers(list(event.headers))
                reply.body = b"".join(reply.chunks)
                return reply

    async def response(self) -> Reply:
        return await self.rest(await self.head())

    async def fetch(self, method: bytes, target: bytes, body: bytes = b"",
                    headers: list[tuple[bytes, bytes]] | None = None) -> Reply:
        await self.request(method, target, body, headers)
        return await self.response()

    async def aclose(self) -> None:
        await self.stream.aclose()


def parse_raw(raw: bytes) -> tuple[bytes, dict[bytes, list[bytes]], bytes]:
    """(status line, headers, body) of a response read to EOF."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    pairs = [tuple(line.split(b": ", 1)) for line in lines]
    return status, _headers([(n, v) for n, v in pairs]), body


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes; read the answer until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        out = b""
        while data := await stream.receive_some(65536):
            out += data
        return out


async def admin(port: int, line: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(line + b"\n")
        out = b""
        while not out.endswith(b"\n"):
            out += await stream.receive_some(4096)
        return out


# ---------------------------------------------------------------------- happy paths


async def test_post_returns_the_result(ports: Ports) -> None:
    with trio.fail_after(5):
        worker = await Worker.connect(ports.gear, b"reverse")
        client = await Client.connect(ports.http)
        await client.request(b"POST", b"/reverse", b"hello")
        handle, function, data = await worker.grab()
        assert (function, data) == (b"reverse", b"hello")
        await worker.answer(PT.WORK_COMPLETE, handle, data[::-1])
        reply = await client.response()
        assert reply.status == 200 and reply.body == b"olleh"
        assert reply.header(b"X-Gearman-Job-Handle") == handle
        assert reply.header(b"X-Gearman-Command") == b"WORK_COMPLETE"
        assert reply.header(b"Content-Length") == b"5"
        assert reply.header(b"Server").startswith(b"Gearman/")


@pytest.mark.parametrize("method", [b"GET", b"PUT"])
async def test_get_ignores_the_body_put_sends_it(ports: Ports, method: bytes) -> None:
    with trio.fail_after(5):
        worker = await Worker.connect(ports.gear, b"echo")
        client = await Client.connect(ports.http)
        await client.request(method, b"/echo", b"payload")
        handle, _, data = await worker.grab()
        assert data == (b"" if method == b"GET" else b"payload")
        await worker.answer(PT.WORK_COMPLETE, handle, b"[" + data + b"]")
        reply = await client.response()
        assert reply.status == 200
        assert reply.body == (b"[]" if method == b"GET" else b"[payload]")


async def test_background_answers_job_created_at_once(ports: Ports) -> None:
    with trio.fail_after(5):
        client = await Client.connect(ports.http)
        reply = await client.fetch(b"POST", b"/later", b"work",
                                   [(b"X-Gearman-Background", b"true")])
        assert (reply.status, reply.body) == (200, b"")
        assert reply.header(b"X-Gearman-Command") == b"JOB_CREATED"
        assert reply.header(b"Content-Length") == b"0"
        # Queued with no worker around; it runs later.
        worker = await Worker.connect(ports.gear, b"later")
        handle, _, data = await worker.grab()
        assert (handle, data) == (reply.header(b"X-Gearman-Job-Handle"), b"work")


async def test_background_with_a_store_is_acknowledged_after_commit(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    config = ServerConfig(listen=("127.0.0.1",), port=0, protocols=("http",), http_port=0,
                          queue_type="libsqlite3",
                          queue_options=(("libsqlite3-db", str(tmp_path / "q.db")),))
    srv = Server(config)
    await nursery.start(srv.serve)
    try:
        with trio.fail_after(5):
            client = await Client.connect(srv.http_addresses[0][1])
            reply = await client.fetch(b"POST", b"/kept", b"x",
                                       [(b"X-Gearman-Background", b"true")])
            assert reply.status == 200
            assert reply.header(b"X-Gearman-Command") == b"JOB_CREATED"
    finally:
        srv.shutdown()


async def test_unique_header_coalesces_and_the_default_does_not(ports: Ports) -> None:
    with trio.fail_after(5):
        worker = await Worker.connect(ports.gear, b"f")
        one, two = await Client.connect(ports.http), await Client.connect(ports.http)
        same = [(b"X-Gearman-Unique", b"u-1")]
        await one.request(b"POST", b"/f", b"a", same)
        handle, _, _ = await worker.grab()
        await two.request(b"POST", b"/f", b"a", same)
        # Both clients wait for the one job: its result reaches both.
        while not any(len(j.clients) == 2 for j in ports.server.manager.jobs.values()):
            await trio.sleep(0.01)
        await worker.answer(PT.WORK_COMPLETE, handle, b"shared")
        for client in (one, two):
            reply = await client.response()
            assert (reply.body, reply.header(b"X-Gearman-Job-Handle")) == (b"shared", handle)
        # decisions.md: no X-Gearman-Unique, no coalescing (the reference merges same bodies).
        await one.request(b"POST", b"/f", b"same")
        await two.request(b"POST", b"/f", b"same")
        first, _, _ = await worker.grab()
        second, _, _ = await worker.grab()
        assert first != second
        await worker.answer(PT.WORK_COMPLETE, first, b"1")
        await worker.answer(PT.WORK_COMPLETE, second, b"2")
        assert {(await one.response()).body, (await two.response()).body} == {b"1", b"2"}


async def test_priority_header_orders_the_queue(ports: Ports) -> None:
    with trio.fail_after(5):
        client = await Client.connect(ports.http)
        for data, priority in [(b"low", b"low"), (b"normal", None), (b"high", b"HIGH")]:
            headers = [(b"X-Gearman-Background", b"true")]
            if priority is not None:
                headers.append((b"X-Gearman-Priority", priority))
            assert (await client.fetch(b"POST", b"/p", data, headers)).status == 200
        worker = await Worker.connect(ports.gear, b"p")
        order = [(await worker.grab())[2] for _ in range(3)]
        assert order == [b"high", b"normal", b"low"]


# ---------------------------------------------------------------------- work packets


async def test_work_data_is_streamed_chunked_on_http11(ports: Ports) -> None:
    with trio.fail_after(5):
        worker = await Worker.connect(ports.gear, b"stream")
        client = await Client.connect(ports.http)
        await client.request(b"POST", b"/stream", b"go")
        handle, _, _ = await worker.grab()
        await worker.answer(PT.WORK_DATA, handle, b"part1,")
        # The headers and the first chunk arrive while the job still runs.
        reply = await client.head()
        assert reply.status == 200
        assert reply.header(b"Transfer-Encoding") == b"chunked"
        assert reply.header(b"X-Gearman-Job-Handle") == handle
        assert reply.header(b"X-Gearman-Command") == b"WORK_DATA"
        first = await client.event()
        assert isinstance(first, h11.Data) and first.data == b"part1,"
        await worker.answer(PT.WORK_STATUS, handle, b"1", b"2")
        await worker.answer(PT.WORK_DATA, handle, b"part2,")
        await worker.answer(PT.WORK_COMPLETE, handle, b"done")
        reply = await client.rest(reply)
        assert b"part1," + reply.body == b"part1,part2,done"
        assert reply.trailers[b"x-gearman-command"] == [b"WORK_COMPLETE"]
        assert reply.trailers[b"x-gearman-work-status"] == [b"1/2"]


async def test_work_data_is_collected_on_http10(ports: Ports) -> None:
    with trio.fail_after(5):
        worker = await Worker.connect(ports.gear, b"stream")
        async with trio.open_nursery() as nursery:
            raw: list[bytes] = []

            async def ask() -> None:
                raw.append(await raw_exchange(
                    ports.http, b"POST /stream HTTP/1.0\r\nContent-Length: 2\r\n\r\ngo"))

            nursery.start_soon(ask)
            handle, _, data = await worker.grab()
            assert data == b"go"
            await worker.answer(PT.WORK_DATA, handle, b"a")
            await worker.answer(PT.WORK_DATA, handle, b"b")
            await worker.answer(PT.WORK_COMPLETE, handle, b"c")
        status, headers, body = parse_raw(raw[0])
        assert re.fullmatch(rb"HTTP/1\.[01] 200 OK", status)
        assert headers[b"x-gearman-command"] == [b"WORK_COMPLETE"]
        assert headers[b"content-length"] == [b"3"] and body == b"abc"
        assert b"transfer-encoding" not in headers


async def test_status_and_warnings_do_not_end_the_answer(ports: Ports) -> None:
    with trio.fail_after(5):
        worker = await Worker.connect(ports.gear, b"slow")
        client = await Client.connect(ports.http)
        await client.request(b"POST", b"/slow", b"x")
        handle, _, _ = await worker.grab()
        await worker.answer(PT.WORK_STATUS, handle, b"1", b"3")
        await worker.answer(PT.WORK_WARNING, handle, b"careful\r\n100%")
        await worker.answer(PT.WORK_STATUS, handle, b"2", b"3")
        await worker.answer(PT.WORK_WARNING, handle, b"again")
        with trio.move_on_after(0.2):
            await client.head()
            pytest.fail("answered before the job ended")
        await worker.answer(PT.WORK_COMPLETE, handle, b"result")
        reply = await client.response()
        assert (reply.status, reply.body) == (200, b"result")
        assert reply.header(b"X-Gearman-Command") == b"WORK_COMPLETE"
        assert reply.headers[b"x-gearman-work-status"] == [b"2/3"]
        # Header values cannot hold CR/LF: everything but printable ASCII (and %) is %XX.
        assert reply.headers[b"x-gearman-work-warning"] == [b"careful%0D%0A100%25", b"again"]


async def test_work_fail_is_500_with_the_whole_handle(ports: Ports) -> None:
    with trio.fail_after(5):
        worker = await Worker.connect(ports.gear, b"bad")
        client = await Client.connect(ports.http)
        await client.request(b"POST", b"/bad", b"x")
        handle, _, _ = await worker.grab()
        await worker.answer(PT.WORK_FAIL, handle)
        reply = await client.response()
        assert (reply.status, reply.body) == (500, b"")
        assert reply.header(b"X-Gearman-Command") == b"WORK_FAIL"
        assert reply.header(b"X-Gearman-Job-Handle") == handle  # the reference cuts a byte


async def test_exception_is_500_with_its_text(ports: Ports) -> None:
    # The server does not give every connection exceptions; HTTP asks for them itself.
    assert not ports.server.config.exceptions
    with trio.fail_after(5):
        worker = await Worker.connect(ports.gear, b"raise")
        client = await Client.connect(ports.http)
        await client.request(b"POST", b"/raise", b"x")
        handle, _, _ = await worker.grab()
        await worker.answer(PT.WORK_EXCEPTION, handle, b"ValueError: no")
        reply = await client.response()
        assert (reply.status, reply.body) == (500, b"ValueError: no")
        assert reply.header(b"X-Gearman-Command") == b"WORK_EXCEPTION"


# ---------------------------------------------------------------------- errors


async def test_empty_function_is_404_and_other_methods_405(ports: Ports) -> None:
    with trio.fail_after(5):
        client = await Client.connect(ports.http)
        for method in (b"GET", b"POST", b"PUT"):
            reply = await client.fetch(method, b"/", b"x")
            assert (reply.status, reply.body) == (404, b"")
        for method in (b"DELETE", b"HEAD", b"TRACE", b"OPTIONS"):
            reply = await client.fetch(method, b"/f")
            assert reply.status == 405
            assert reply.header(b"Allow") == b"GET, POST, PUT"
        # None of these submitted anything.
        assert not ports.server.manager.jobs


async def test_full_queue_is_503(ports: Ports) -> None:
    with trio.fail_after(5):
        client = await Client.connect(ports.http)
        bg = [(b"X-Gearman-Background", b"true")]
        assert (await client.fetch(b"POST", b"/capped", b"1", bg)).status == 200
        # maxqueue applies to a function the server knows (as the reference).
        assert await admin(ports.gear, b"maxqueue capped 1") == b"OK\r\n"
        reply = await client.fetch(b"POST", b"/capped", b"2", bg)
        assert reply.status == 503
        assert reply.header(b"X-Gearman-Command") == b"ERROR"
        assert reply.header(b"X-Gearman-Error") == b"QUEUE_ERROR"
        assert reply.body == b"Job queue is full"
        # Foreground too, and the connection stays usable.
        assert (await client.fetch(b"POST", b"/capped", b"3")).status == 503


async def test_too_long_unique_is_400(ports: Ports) -> None:
    with trio.fail_after(5):
        client = await Client.connect(ports.http)
        reply = await client.fetch(b"POST", b"/f", b"x", [(b"X-Gearman-Unique", b"u" * 65)])
        assert reply.status == 400
        assert reply.header(b"X-Gearman-Error") == b"ARGUMENT_TOO_LARGE"


async def test_body_larger_than_a_packet_is_413(ports: Ports) -> None:
    with trio.fail_after(5):
        raw = await raw_exchange(
            ports.http, b"POST /f HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (2 << 20))
        assert raw.startswith(b"HTTP/1.1 413 ")
        assert not ports.server.manager.jobs


async def test_garbage_is_400_and_the_server_lives_on(ports: Ports) -> None:
    with trio.fail_after(5):
        raw = await raw_exchange(ports.http, b"\x00\x01 not http\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 400 ")
        client = await Client.connect(ports.http)
        assert (await client.fetch(b"GET", b"/")).status == 404


# ---------------------------------------------------------------------- connections


async def test_keep_alive_serves_several_requests(ports: Ports) -> None:
    with trio.fail_after(5):
        worker = await Worker.connect(ports.gear, b"n")
        client = await Client.connect(ports.http)
        for i in range(3):
            await client.request(b"POST", b"/n", b"%d" % i)
            handle, _, data = await worker.grab()
            await worker.answer(PT.WORK_COMPLETE, handle, data + b"!")
            assert (await client.response()).body == b"%d!" % i
        assert (await client.fetch(b"POST", b"/", b"")).status == 404


async def test_pipelined_requests_are_answered_in_order(ports: Ports) -> None:
    with trio.fail_after(5):
        worker = await Worker.connect(ports.gear, b"n")
        stream = await trio.open_tcp_stream("127.0.0.1", ports.http)
        one = b"POST /n HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n1"
        two = b"POST /n HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\n2"
        await stream.send_all(one + two)
        for _ in range(2):
            handle, _, data = await worker.grab()
            await worker.answer(PT.WORK_COMPLETE, handle, b"r" + data)
        out = b""
        while data := await stream.receive_some(65536):
            out += data
        assert out.count(b"HTTP/1.1 200 OK") == 2
        assert out.index(b"\r\n\r\nr1") < out.index(b"\r\n\r\nr2")


async def test_client_leaving_detaches_from_its_job(ports: Ports) -> None:
    manager = ports.server.manager
    with trio.fail_after(5):
        # Queued, nobody else waits: the job goes with the client (spec §2.8).
        client = await Client.connect(ports.http)
        await client.request(b"POST", b"/gone", b"x")
        while not manager.jobs:
            await trio.sleep(0.01)
        await client.aclose()
        while manager.jobs:
            await trio.sleep(0.01)
        # Running: the worker's late answer is harmless; the server goes on.
        worker = await Worker.connect(ports.gear, b"gone")
        client = await Client.connect(ports.http)
        await client.request(b"POST", b"/gone", b"y")
        handle, _, _ = await worker.grab()
        await client.aclose()
        while any(j.clients for j in manager.jobs.values()):
            await trio.sleep(0.01)
        await worker.answer(PT.WORK_DATA, handle, b"late")
        await worker.answer(PT.WORK_COMPLETE, handle, b"late")
        client = await Client.connect(ports.http)
        await client.request(b"POST", b"/gone", b"z")
        handle, _, data = await worker.grab()
        assert data == b"z"
        await worker.answer(PT.WORK_COMPLETE, handle, b"ok")
        assert (await client.response()).body == b"ok"


async def test_client_that_stops_reading_is_dropped(nursery: trio.Nursery) -> None:
    config = ServerConfig(listen=("127.0.0.1",), port=0, protocols=("http",), http_port=0,
                          max_packet_size=64 * 1024, max_outgoing_buffer=16 * 1024)
    srv = Server(config)
    addresses = await nursery.start(srv.serve)
    try:
        with trio.fail_after(10):
            worker = await Worker.connect(addresses[0][1], b"flood")
            stream = await trio.open_tcp_stream("127.0.0.1", srv.http_addresses[0][1])
            await stream.send_all(b"POST /flood HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            handle, _, _ = await worker.grab()
            chunk = encode_req(PT.WORK_DATA, handle, b"x" * 30000)
            # The client never reads: the server streams until its write blocks, buffers
            # up to the bound, then drops the client instead of buffering without end.
            while srv.manager.jobs[handle].clients:
                await worker.send(chunk)
                await trio.sleep(0.001)
            await stream.aclose()
    finally:
        srv.shutdown()


async def test_shutdown_before_serve_still_reports_and_stops() -> None:
    srv = Server(ServerConfig(listen=("127.0.0.1",), port=0, protocols=("http",),
                              http_port=0))
    srv.shutdown()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(srv.serve)
    assert srv.http_addresses
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", srv.http_addresses[0][1])


# ---------------------------------------------------------------------- processes


def _http_job_over_sockets(gear_port: int, http_port: int, request: bytes,
                           answer: Callable[[bytes], bytes]) -> bytes:
    """Send ``request`` over HTTP, run the job with a raw Gear worker, return the answer."""
    worker = socket.create_connection(("127.0.0.1", gear_port), timeout=5)
    http = socket.create_connection(("127.0.0.1", http_port), timeout=5)
    with worker, http:
        worker.sendall(encode_req(PT.CAN_DO, b"reverse"))
        http.sendall(request)
        parser = Parser()

        def next_packet() -> Packet:  # the socket's timeout bounds every read
            while (event := parser.next_event()) is NEED_DATA:
                data = worker.recv(65536)
                assert data, "the server closed the worker's connection"
                parser.receive_data(data)
            assert isinstance(event, Packet)
            return event

        for _ in range(50):
            worker.sendall(encode_req(PT.GRAB_JOB))
            event = next_packet()
            if event.type == PT.JOB_ASSIGN:
                break
            assert event.type == PT.NO_JOB, event
            # Sleep until the server wakes us for the job, as a real worker does.
            worker.sendall(encode_req(PT.PRE_SLEEP))
            assert next_packet().type == PT.NOOP
        else:
            raise AssertionError("the job never reached the worker")
        handle, _, data = event.args
        worker.sendall(encode_req(PT.WORK_COMPLETE, handle, answer(data)))
        out = b""
        while chunk := http.recv(65536):
            out += chunk
        return out


def test_gearmand_process_answers_http(start_server: Callable[..., RunningServer]) -> None:
    http_port = free_port()
    srv = start_server("ours", "-r", "http", "--http-port", str(http_port))
    wait_for_port(http_port)
    request = (b"POST /reverse HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
               b"Connection: close\r\n\r\nhello")
    status, headers, body = parse_raw(
        _http_job_over_sockets(srv.port, http_port, request, lambda d: d[::-1]))
    assert (status, body) == (b"HTTP/1.1 200 OK", b"olleh")
    assert headers[b"x-gearman-command"] == [b"WORK_COMPLETE"]


@pytest.mark.reference
def test_same_answer_shape_as_the_reference(
        start_server: Callable[..., RunningServer]) -> None:
    need_reference()
    request = b"POST /reverse HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello"
    shapes = []
    for kind in ("reference", "ours"):
        http_port = free_port()
        srv = start_server(kind, "-r", "http", "--http-port", str(http_port))
        wait_for_port(http_port)
        raw = _http_job_over_sockets(srv.port, http_port, request, lambda d: d[::-1])
        status, headers, body = parse_raw(raw)
        assert re.fullmatch(rb"HTTP/1\.[01] 200 OK", status), raw
        assert body == b"olleh"
        assert headers[b"content-length"] == [b"5"]
        assert headers[b"server"][0].startswith(b"Gearman/")
        assert re.fullmatch(rb"H:[^:]+:\d+", headers[b"x-gearman-job-handle"][0])
        shapes.append((status[9:], sorted(n for n in headers if n.startswith(b"x-gearman-")),
                       headers[b"x-gearman-command"]))
    assert shapes[0] == shapes[1]

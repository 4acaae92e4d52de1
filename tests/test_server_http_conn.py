"""The HTTP front-end's connection handling: answers written in the core's call, the
reading task woken when an answer ends a connection or lets a pipelined request go on,
and the one timer per connection re-armed across requests (server/http.py)."""

from __future__ import annotations

import socket
import time

import trio

from protocol import NEED_DATA, Packet, PacketType, Parser, encode_req
from server.app import Server
from server.config import ServerConfig
from tests.test_server_http import Client, Ports, Worker, ports
from tests.test_tls import Pki, Start, pki

PT = PacketType
__all__ = ["pki", "ports"]  # the fixtures


async def read_to_eof(stream: trio.SocketStream) -> bytes:
    out = b""
    while data := await stream.receive_some(65536):
        out += data
    return out


async def test_http10_and_connection_close_end_after_a_later_answer(ports: Ports) -> None:
    with trio.fail_after(5):
        worker = await Worker.connect(ports.gear, b"late")
        for request in (b"POST /late HTTP/1.0\r\nContent-Length: 1\r\n\r\na",
                        b"POST /late HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                        b"Content-Length: 1\r\n\r\na"):
            stream = await trio.open_tcp_stream("127.0.0.1", ports.http)
            await stream.send_all(request)
            handle, _, _ = await worker.grab()
            await trio.sleep(0.05)  # the server is waiting in its read by now
            await worker.answer(PT.WORK_COMPLETE, handle, b"done")
            out = await read_to_eof(stream)
            assert out.startswith(b"HTTP/1.") and out.endswith(b"\r\n\r\ndone")
            await stream.aclose()


async def test_requests_pipelined_while_a_job_runs_are_answered_in_order(
        ports: Ports) -> None:
    with trio.fail_after(5):
        worker = await Worker.connect(ports.gear, b"p")
        stream = await trio.open_tcp_stream("127.0.0.1", ports.http)
        request = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n%d"
        await stream.send_all(request % 1 + request % 2)
        handle, _, data = await worker.grab()
        await stream.send_all(request % 3)  # read while the first job runs
        await trio.sleep(0.05)
        await worker.answer(PT.WORK_COMPLETE, handle, b"r" + data)
        for _ in range(2):
            handle, _, data = await worker.grab()
            await worker.answer(PT.WORK_COMPLETE, handle, b"r" + data)
        out = b""
        while out.count(b"HTTP/1.1 200 OK") < 3 or not out.endswith(b"r3"):
            out += await stream.receive_some(65536)
        assert out.index(b"\r\n\r\nr1") < out.index(b"\r\n\r\nr2") < out.index(b"\r\n\r\nr3")
        await stream.aclose()


async def test_expect_100_continue_then_the_answer(ports: Ports) -> None:
    with trio.fail_after(5):
        worker = await Worker.connect(ports.gear, b"c")
        stream = await trio.open_tcp_stream("127.0.0.1", ports.http)
        await stream.send_all(b"POST /c HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                              b"Content-Length: 2\r\n\r\n")
        assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 100 ")
        await stream.send_all(b"hi")
        handle, _, data = await worker.grab()
        assert data == b"hi"
        await worker.answer(PT.WORK_COMPLETE, handle, data)
        out = b""
        while not out.endswith(b"\r\n\r\nhi"):
            out += await stream.receive_some(65536)
        assert out.startswith(b"HTTP/1.1 200 ")
        await stream.aclose()


async def test_idle_and_request_timeouts_count_from_the_last_answer(
        nursery: trio.Nursery) -> None:
    config = ServerConfig(listen=("127.0.0.1",), port=0, protocols=("http",), http_port=0,
                          http_idle_timeout=0.5, http_request_timeout=0.3)
    srv = Server(config)
    addresses = await nursery.start(srv.serve)
    try:
        with trio.fail_after(10):
            worker = await Worker.connect(addresses[0][1], b"t")
            client = await Client.connect(srv.http_addresses[0][1])
            for _ in range(3):  # busy longer than the idle timeout: not closed
                await client.request(b"POST", b"/t", b"x")
                handle, _, _ = await worker.grab()
                await trio.sleep(0.3)
                await worker.answer(PT.WORK_COMPLETE, handle, b"y")
                assert (await client.response()).body == b"y"
            # Half a request after an answer: 408 once the request timeout passes.
            await client.stream.send_all(b"POST /t HTTP/1.1\r\nHost: x\r\n")
            started = trio.current_time()
            out = await read_to_eof(client.stream)
            assert out.startswith(b"HTTP/1.1 408 ")
            assert 0.25 < trio.current_time() - started < 2
    finally:
        srv.shutdown()


def test_keep_alive_and_streaming_over_tls(pki: Pki, start_inprocess: Start) -> None:
    """Over TLS every answer goes through the connection's writer task."""
    srv = start_inprocess(*pki.server_args("-r", "http", "--http-port", "0"))
    http_port = srv.server.frontend_addresses["http"][0][1]
    context = pki.client_context()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw_w, \
            context.wrap_socket(raw_w, server_hostname="127.0.0.1") as worker, \
            socket.create_connection(("127.0.0.1", http_port), timeout=5) as raw_h, \
            context.wrap_socket(raw_h, server_hostname="127.0.0.1") as http:
        parser = Parser()

        def packet() -> Packet:
            while (event := parser.next_event()) is NEED_DATA:
                parser.receive_data(worker.recv(65536))
            assert isinstance(event, Packet)
            return event

        worker.sendall(encode_req(PT.CAN_DO, b"s"))
        for body, streamed in ((b"one", False), (b"two", True)):
            http.sendall(b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n" + body)
            while True:
                worker.sendall(encode_req(PT.GRAB_JOB))
                job = packet()
                if job.type == PT.JOB_ASSIGN:
                    break
                time.sleep(0.01)
            handle = job.args[0]
            if streamed:
                worker.sendall(encode_req(PT.WORK_DATA, handle, b"part"))
            worker.sendall(encode_req(PT.WORK_COMPLETE, handle, job.args[2] + b"!"))
            reply = b""
            end = b"WORK_COMPLETE\r\n\r\n" if streamed else body + b"!"
            while not reply.endswith(end):
                reply += http.recv(65536)
            assert reply.startswith(b"HTTP/1.1 200 ")
            if streamed:
                assert b"Transfer-Encoding: chunked" in reply and b"\r\n4\r\npart\r\n" in reply
                assert b"4\r\ntwo!\r\n0\r\nX-Gearman-Command: WORK_COMPLETE" in reply

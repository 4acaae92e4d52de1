"""A Gearman load generator in Python (selectors): the fallback when loadgen.c cannot be built.

Every scenario checks correctness: each job completes exactly once with its payload
intact, so a fast wrong answer cannot pass. Used by ``bench_server.py`` when gcc is missing
(or with ``--loadgen python``); it is slower than either server, so ``loadgen.c`` is the
default.
"""

from __future__ import annotations

import os
import selectors
import socket
import statistics
import time
from collections import deque
from dataclasses import dataclass

from protocol import NEED_DATA, Packet, PacketType, Parser, encode_req

PT = PacketType


def connect(port: int, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@dataclass
class Result:
    jobs: int
    seconds: float
    cpu_seconds: float
    errors: int = 0
    latencies: list[float] | None = None


def run_workers(port: int, count: int, function: bytes, stop_after: float,
                done_file: str | None = None) -> int:
    """Echo workers: ``count`` connections, each grabbing and completing jobs until idle.

    Returns the number of jobs completed. Stops when ``done_file`` exists (the clients
    finished) or after ``stop_after`` seconds.
    """
    sel = selectors.DefaultSelector()
    conns = []
    for _ in range(count):
        sock = connect(port)
        sock.setblocking(False)
        sock.sendall(encode_req(PT.CAN_DO, function) + encode_req(PT.GRAB_JOB))
        parser = Parser()
        sel.register(sock, selectors.EVENT_READ, parser)
        conns.append(sock)
    grab = encode_req(PT.GRAB_JOB)
    pre_sleep = encode_req(PT.PRE_SLEEP)
    done = 0
    deadline = time.monotonic() + stop_after
    last_check = 0.0
    while True:
        now = time.monotonic()
        if now > deadline:
            break
        if done_file and now - last_check > 0.1:
            last_check = now
            if os.path.exists(done_file):
                break
        for key, _ in sel.select(0.1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            parser = key.data
            try:
                data = sock.recv(262144)
            except BlockingIOError:
                continue
            if not data:
                sel.unregister(sock)
                continue
            parser.receive_data(data)
            out = bytearray()
            while True:
                ev = parser.next_event()
                if ev is NEED_DATA:
                    break
                assert isinstance(ev, Packet)
                t = ev.type
                if t is PT.JOB_ASSIGN:
                    handle, _fn, payload = ev.args
                    out += encode_req(PT.WORK_COMPLETE, handle, payload)
                    out += grab
                    done += 1
                elif t is PT.NO_JOB:
                    out += pre_sleep
                elif t is PT.NOOP:
                    out += grab
            if out:
                sock.sendall(out)
    for sock in conns:
        sock.close()
    return done


def run_clients(port: int, connections: int, in_flight: int, jobs: int, function: bytes,
                payload_size: int = 16) -> Result:
    """Foreground jobs, ``in_flight`` pipelined per connection; checks every result."""
    sel = selectors.DefaultSelector()
    per_conn = jobs // connections
    state = []
    start_cpu = time.process_time()
    start = time.perf_counter()
    for c in range(connections):
        sock = connect(port)
        sock.setblocking(False)
        st = {
            "parser": Parser(),
            "next": 0,
            "limit": per_conn,
            "pending": deque(),  # payloads awaiting JOB_CREATED, FIFO
            "by_handle": {},
            "done": 0,
            "id": c,
        }
        out = bytearray()
        for _ in range(min(in_flight, per_conn)):
            out += _submit(st, function, payload_size)
        sock.sendall(out)
        sel.register(sock, selectors.EVENT_READ, st)
        state.append((sock, st))
    errors = 0
    remaining = connections
    while remaining:
        for key, _ in sel.select(10):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            st = key.data
            data = sock.recv(262144)
            if not data:
                raise RuntimeError("server closed a client connection")
            parser = st["parser"]
            parser.receive_data(data)
            out = bytearray()
            while True:
                ev = parser.next_event()
                if ev is NEED_DATA:
                    break
                assert isinstance(ev, Packet)
                t = ev.type
                if t is PT.JOB_CREATED:
                    st["by_handle"][ev.args[0]] = st["pending"].popleft()
                elif t is PT.WORK_COMPLETE:
                    handle, result = ev.args
                    expected = st["by_handle"].pop(handle, None)
                    if expected != result:
                        errors += 1
                    st["done"] += 1
                    if st["next"] < st["limit"]:
                        out += _submit(st, function, payload_size)
                    if st["done"] == st["limit"]:
                        remaining -= 1
                elif t in (PT.WORK_FAIL, PT.ERROR):
                    errors += 1
                    st["done"] += 1
                    if st["done"] == st["limit"]:
                        remaining -= 1
            if out:
                sock.sendall(out)
    seconds = time.perf_counter() - start
    cpu = time.process_time() - start_cpu
    total = sum(st["done"] for _, st in state)
    for sock, _ in state:
        sock.close()
    return Result(total, seconds, cpu, errors)


def _submit(st: dict[str, object], function: bytes, payload_size: int) -> bytes:
    n = st["next"]
    assert isinstance(n, int)
    st["next"] = n + 1
    payload = (b"%d-%d-" % (st["id"], n)).ljust(payload_size, b"x")
    pending = st["pending"]
    assert isinstance(pending, deque)
    pending.append(payload)
    return encode_req(PT.SUBMIT_JOB, function, b"", payload)


def run_background(port: int, jobs: int, function: bytes, unique: bool,
                   payload_size: int = 100, window: int = 1000) -> Result:
    """Background submits pipelined on one connection; counts JOB_CREATED replies."""
    sock = connect(port)
    parser = Parser()
    payload = b"x" * payload_size
    start_cpu = time.process_time()
    start = time.perf_counter()
    sent = created = errors = 0
    handles: set[bytes] = set()
    while created + errors < jobs:
        out = bytearray()
        while sent < jobs and sent - created - errors < window:
            uniq = b"u%d" % sent if unique else b""
            out += encode_req(PT.SUBMIT_JOB_BG, function, uniq, payload)
            sent += 1
        if out:
            sock.sendall(out)
        data = sock.recv(262144)
        if not data:
            raise RuntimeError("server closed the connection")
        parser.receive_data(data)
        while True:
            ev = parser.next_event()
            if ev is NEED_DATA:
                break
            assert isinstance(ev, Packet)
            if ev.type is PT.JOB_CREATED:
                created += 1
                handles.add(ev.args[0])
            else:
                errors += 1
    seconds = time.perf_counter() - start
    cpu = time.process_time() - start_cpu
    sock.close()
    if len(handles) != jobs:
        errors += jobs - len(handles)
    return Result(created, seconds, cpu, errors)


def run_latency(port: int, jobs: int, function: bytes) -> Result:
    """One client, one job at a time; returns each round trip's latency."""
    sock = connect(port)
    parser = Parser()
    lat: list[float] = []
    errors = 0
    start = time.perf_counter()
    for i in range(jobs):
        payload = b"lat-%d" % i
        t0 = time.perf_counter()
        sock.sendall(encode_req(PT.SUBMIT_JOB, function, b"", payload))
        got = None
        while got is None:
            parser.receive_data(sock.recv(65536))
            while True:
                ev = parser.next_event()
                if ev is NEED_DATA:
                    break
                assert isinstance(ev, Packet)
                if ev.type is PT.WORK_COMPLETE:
                    got = ev.args[1]
                elif ev.type in (PT.WORK_FAIL, PT.ERROR):
                    got = b""
        lat.append(time.perf_counter() - t0)
        if got != payload:
            errors += 1
    seconds = time.perf_counter() - start
    sock.close()
    return Result(jobs, seconds, 0.0, errors, lat)


def median_us(values: list[float]) -> float:
    return statistics.median(values) * 1e6

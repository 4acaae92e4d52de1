"""The Python load generator's helpers for ``bench_server.py`` (``--loadgen python``, or
no gcc): worker processes, the CPU it used, and the idle workers of the idle scenario."""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import loadgen

from protocol import NEED_DATA, Packet, PacketType, Parser, encode_req


def pin_self() -> None:
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))


def workers_proc(port: int, count: int, fn: bytes, done_file: str, q: mp.Queue[int]) -> None:
    pin_self()
    q.put(loadgen.run_workers(port, count, fn, 120, done_file))


def with_workers(port: int, workers: int, fn: bytes,
                  body: Callable[[], loadgen.Result]) -> tuple[loadgen.Result, int]:
    done_file = tempfile.mktemp()
    q: mp.Queue[int] = mp.Queue()
    procs = []
    per = max(1, workers // 2) if workers >= 2 else workers
    left = workers
    while left > 0:
        n = min(per, left)
        p = mp.Process(target=workers_proc, args=(port, n, fn, done_file, q))
        p.start()
        procs.append(p)
        left -= n
    time.sleep(0.3)
    try:
        result = body()
    finally:
        Path(done_file).touch()
        done = sum(q.get(timeout=30) for _ in procs)
        for p in procs:
            p.join(10)
        os.unlink(done_file)
    return result, done


def py_cpu() -> float:
    """CPU seconds of this process plus its reaped children (the Python load generator)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def admin_workers(port: int, function: str) -> int:
    """Workers of ``function`` in the admin protocol's ``status`` (0 when not listed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"status\n")
        buf = b""
        while not (buf == b".\n" or buf.endswith(b"\n.\n")):
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("admin connection closed during status")
            buf += chunk
    for line in buf.decode(errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) == 4 and parts[0] == function:
            return int(parts[3])
    return 0


def wait_workers(port: int, function: str, want: int, timeout: float = 10) -> int:
    """Poll ``status`` until ``function`` shows ``want`` workers; the last count seen."""
    deadline = time.monotonic() + timeout
    got = admin_workers(port, function)
    while got != want and time.monotonic() < deadline:
        time.sleep(0.02)
        got = admin_workers(port, function)
    return got


class IdleWorkers:
    """``--loadgen python``: ``count`` workers that CAN_DO ``function``, PRE_SLEEP and wait.

    They connect 32 at a time (the servers' default listen backlog), each batch
    registered and asleep (its ECHO_RES back) before the next. ``check()`` afterwards
    counts what else reached them: a NOOP, or any packet, is a failure.
    """

    def __init__(self, port: int, count: int, function: bytes) -> None:
        self.socks: list[socket.socket] = []
        self.parsers: list[Parser] = []
        hello = (encode_req(PacketType.CAN_DO, function) + encode_req(PacketType.PRE_SLEEP)
                 + encode_req(PacketType.ECHO_REQ, b"asleep"))
        try:
            for first in range(0, count, 32):
                batch = []
                for _ in range(min(32, count - first)):
                    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                    sock.sendall(hello)
                    self.socks.append(sock)
                    self.parsers.append(Parser())
                    batch.append(len(self.socks) - 1)
                for i in batch:
                    noops, other = self._until_echo(i)
                    if noops or other:
                        raise RuntimeError(f"idle worker {i} got {noops} NOOPs, {other} "
                                           "other packets before it was asleep")
        except BaseException:
            self.close()
            raise

    def _until_echo(self, i: int) -> tuple[int, int]:
        """Read idle connection ``i`` up to its next ECHO_RES; (NOOPs, other packets)."""
        noops = other = 0
        while True:
            ev = self.parsers[i].next_event()
            if ev is NEED_DATA:
                data = self.socks[i].recv(65536)
                if not data:
                    raise RuntimeError(f"server closed idle worker {i}")
                self.parsers[i].receive_data(data)
                continue
            assert isinstance(ev, Packet)
            if ev.type is PacketType.ECHO_RES:
                return noops, other
            if ev.type is PacketType.NOOP:
                noops += 1
            else:
                other += 1

    def check(self) -> tuple[int, int]:
        """One more ECHO_REQ each; (NOOPs, other packets) that arrived before the answers."""
        echo = encode_req(PacketType.ECHO_REQ, b"check")
        for sock in self.socks:
            sock.sendall(echo)
        noops = other = 0
        for i in range(len(self.socks)):
            n, o = self._until_echo(i)
            noops += n
            other += o
        return noops, other

    def close(self) -> None:
        for sock in self.socks:
            sock.close()

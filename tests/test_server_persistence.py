"""Background jobs survive a crash or a restart of our gearmand, exactly once, in order.

Real processes: the server is started with a persistent queue, killed, started again on
the same store, and drained by a raw protocol worker.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from protocol import NEED_DATA, Packet, PacketType, Parser, encode_req
from tests.conftest import RunningServer

PT = PacketType


class RawPeer:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.parser = Parser()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def packets(self, count: int) -> list[Packet]:
        out: list[Packet] = []
        while len(out) < count:
            ev = self.parser.next_event()
            if ev is NEED_DATA:
                data = self.sock.recv(262144)
                if not data:
                    raise EOFError(f"server closed after {len(out)} of {count} packets")
                self.parser.receive_data(data)
                continue
            assert isinstance(ev, Packet)
            out.append(ev)
        return out

    def close(self) -> None:
        self.sock.close()


def submit_background(port: int, jobs: list[tuple[PacketType, bytes, bytes, bytes]]) -> None:
    """Pipeline every submit; return once every JOB_CREATED has arrived."""
    peer = RawPeer(port)
    peer.send(b"".join(encode_req(t, fn, uniq, data) for t, fn, uniq, data in jobs))
    replies = peer.packets(len(jobs))
    assert all(p.type is PT.JOB_CREATED for p in replies), replies[:3]
    peer.close()


def drain(port: int, function: bytes, expect: int) -> list[bytes]:
    """Grab jobs one at a time until NO_JOB; return the workloads in order."""
    peer = RawPeer(port)
    peer.send(encode_req(PT.CAN_DO, function))
    got: list[bytes] = []
    while True:
        peer.send(encode_req(PT.GRAB_JOB))
        (reply,) = peer.packets(1)
        if reply.type is PT.NO_JOB:
            break
        assert reply.type is PT.JOB_ASSIGN
        got.append(reply.args[2])
        peer.send(encode_req(PT.WORK_COMPLETE, reply.args[0], b""))
        assert len(got) <= expect + 10, "more jobs than were submitted"
    peer.close()
    return got


STORES: dict[str, Callable[[Path], list[str]]] = {
    "libsqlite3": lambda d: ["-q", "libsqlite3", "--libsqlite3-db", str(d / "q.db")],
    "flatfile": lambda d: ["-q", "flatfile", "--flatfile-file", str(d / "q.journal")],
}


@pytest.mark.parametrize("store", sorted(STORES))
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_thousand_jobs_survive_restart_exactly_once(
        start_server: Callable[..., RunningServer], tmp_path: Path, store: str,
        sig: signal.Signals) -> None:
    args = STORES[store](tmp_path)
    first = start_server("ours", *args)
    jobs = [(PT.SUBMIT_JOB_BG, b"persist", b"", b"job-%d" % i) for i in range(1000)]
    submit_background(first.port, jobs)
    first.proc.send_signal(sig)
    first.proc.wait(10)
    second = start_server("ours", *args)
    got = drain(second.port, b"persist", 1000)
    assert sorted(got) == sorted(j[3] for j in jobs)
    assert len(got) == len(set(got)) == 1000
    # In submit order (one priority, one function: FIFO survives the restart).
    assert got == [j[3] for j in jobs]
    # Completed jobs are gone from the store: a third start has nothing to replay.
    # (A clean stop flushes pending removals; after a crash, a job whose removal was not
    # yet committed runs again: at-least-once, as in the reference.)
    second.proc.send_signal(signal.SIGTERM)
    second.proc.wait(10)
    third = start_server("ours", *args)
    assert drain(third.port, b"persist", 0) == []


@pytest.mark.parametrize("store", sorted(STORES))
def test_replay_keeps_priority_order_and_uniques(
        start_server: Callable[..., RunningServer], tmp_path: Path, store: str) -> None:
    args = STORES[store](tmp_path)
    first = start_server("ours", *args)
    jobs = [
        (PT.SUBMIT_JOB_LOW_BG, b"p", b"", b"low-1"),
        (PT.SUBMIT_JOB_BG, b"p", b"", b"normal-1"),
        (PT.SUBMIT_JOB_HIGH_BG, b"p", b"", b"high-1"),
        (PT.SUBMIT_JOB_LOW_BG, b"p", b"", b"low-2"),
        (PT.SUBMIT_JOB_HIGH_BG, b"p", b"", b"high-2"),
        (PT.SUBMIT_JOB_BG, b"p", b"-", b"dash-a"),
        (PT.SUBMIT_JOB_BG, b"p", b"-", b"dash-b"),
        (PT.SUBMIT_JOB_BG, b"p", b"u1", b"unique-1"),
    ]
    submit_background(first.port, jobs)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    second = start_server("ours", *args)
    # A new submit with a replayed unique coalesces onto the replayed job.
    peer = RawPeer(second.port)
    peer.send(encode_req(PT.SUBMIT_JOB_BG, b"p", b"u1", b"ignored"))
    assert peer.packets(1)[0].type is PT.JOB_CREATED
    peer.close()
    got = drain(second.port, b"p", len(jobs))
    assert got == [b"high-1", b"high-2", b"normal-1", b"dash-a", b"dash-b", b"unique-1",
                   b"low-1", b"low-2"]


def test_foreground_jobs_are_not_stored(start_server: Callable[..., RunningServer],
                                        tmp_path: Path) -> None:
    args = STORES["libsqlite3"](tmp_path)
    first = start_server("ours", *args)
    peer = RawPeer(first.port)
    peer.send(encode_req(PT.SUBMIT_JOB, b"fg", b"", b"foreground"))
    assert peer.packets(1)[0].type is PT.JOB_CREATED
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    second = start_server("ours", *args)
    assert drain(second.port, b"fg", 0) == []


def _rows(db: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return sum(conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0]
                   for t in tables if not t.startswith("sqlite_"))
    finally:
        conn.close()


def test_store_queue_on_shutdown(start_server: Callable[..., RunningServer],
                                 tmp_path: Path) -> None:
    """--store-queue-on-shutdown: nothing written while running, every background job
    written at a clean stop, replayed at the next start, then the store emptied."""
    db = tmp_path / "q.db"
    args = ["-q", "libsqlite3", "--libsqlite3-db", str(db), "--store-queue-on-shutdown"]
    first = start_server("ours", *args)
    submit_background(first.port, [(PT.SUBMIT_JOB_BG, b"s", b"", b"job-%d" % i)
                                   for i in range(50)])
    assert _rows(db) == 0
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(10) == -signal.SIGTERM  # a clean stop, then death by the signal
    assert _rows(db) == 50
    second = start_server("ours", *args)
    assert drain(second.port, b"s", 50) == [b"job-%d" % i for i in range(50)]
    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(10) == -signal.SIGTERM
    assert _rows(db) == 0

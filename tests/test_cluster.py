"""A gearmand cluster on the live PostgreSQL service: three servers on one database,
clients on A, workers only on C (docs/cluster.md).

Each test has its own table and cluster name, dropped at the end. The lease is short (2 s)
so that takeovers happen within the test; no assertion is about time.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from protocol import NEED_DATA, Packet, PacketType, Parser, encode_req
from tests.conftest import IN_CI, RunningServer, free_port

pytestmark = pytest.mark.slow

PT = PacketType
CONNINFO = "host=127.0.0.1 port=5432 dbname=test user=postgres"
LEASE = "2"


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class Peer:
    """A raw Gear connection (client or worker)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
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


def submit(port: int, jobs: list[tuple[PacketType, bytes, bytes, bytes]]) -> list[Packet]:
    """Pipeline the submits; every reply, in order."""
    peer = Peer(port)
    try:
        peer.send(b"".join(encode_req(t, fn, uniq, data) for t, fn, uniq, data in jobs))
        return peer.packets(len(jobs))
    finally:
        peer.close()


def handles(replies: list[Packet]) -> list[bytes]:
    assert all(p.type is PT.JOB_CREATED for p in replies), [
        p for p in replies if p.type is not PT.JOB_CREATED][:3]
    return [p.args[0] for p in replies]


@dataclass
class Worker:
    """A raw worker in a thread: grabs, optionally completes, records every job's data."""

    port: int
    function: bytes
    complete: bool = True
    got: list[bytes] = field(default_factory=list)
    handles: list[bytes] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    error: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.peer = Peer(self.port)
        self.peer.sock.settimeout(0.2)
        self.peer.send(encode_req(PT.CAN_DO, self.function))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _next(self) -> Packet | None:
        while True:
            ev = self.peer.parser.next_event()
            if ev is not NEED_DATA:
                assert isinstance(ev, Packet)
                return ev
            try:
                data = self.peer.sock.recv(65536)
            except TimeoutError:
                return None
            if not data:
                raise EOFError("server closed the worker's connection")
            self.peer.parser.receive_data(data)

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                self.peer.send(encode_req(PT.GRAB_JOB))
                reply = None
                while reply is None and not self.stop.is_set():
                    reply = self._next()
                if reply is None:
                    return
                if reply.type is PT.NO_JOB:
                    self.peer.send(encode_req(PT.PRE_SLEEP))
                    noop = None
                    while noop is None and not self.stop.is_set():
                        noop = self._next()
                    continue
                assert reply.type is PT.JOB_ASSIGN, reply
                self.handles.append(reply.args[0])
                self.got.append(reply.args[2])
                if self.complete:
                    self.peer.send(encode_req(PT.WORK_COMPLETE, reply.args[0], b"done"))
        except BaseException as exc:  # reported by wait()
            self.error.append(exc)

    def wait_for(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.got) < count and time.monotonic() < deadline and not self.error:
            time.sleep(0.02)
        if self.error:
            raise self.error[0]
        assert len(self.got) >= count, f"{len(self.got)} of {count} jobs after {timeout}s"

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.peer.close()


class Cluster:
    """Servers of one cluster on a fresh table."""

    def __init__(self, start_server: Callable[..., RunningServer],
                 conninfo: str = CONNINFO) -> None:
        self._start = start_server
        self.conninfo = conninfo
        suffix = secrets.token_hex(4)
        self.table = f"gearman_cl_{suffix}"
        self.name = f"test-{suffix}"
        self.workers: list[Worker] = []
        #: Where the test looks at the tables (not through a proxy).
        self.admin_conninfo = CONNINFO

    def args(self) -> list[str]:
        return ["-q", "postgres", "--libpq-conninfo", self.conninfo, "--libpq-table",
                self.table, "--cluster", self.name, "--cluster-lease", LEASE]

    def server(self) -> RunningServer:
        return self._start("ours", *self.args())

    def worker(self, server: RunningServer, function: bytes, complete: bool = True) -> Worker:
        w = Worker(server.port, function, complete)
        self.workers.append(w)
        return w

    def rows(self, where: str = "TRUE") -> int:
        import psycopg
        with psycopg.connect(self.admin_conninfo, autocommit=True) as conn:
            row = conn.execute(f"SELECT count(*) FROM {self.table}_cluster WHERE {where}"
                               ).fetchone()
            assert row is not None
            return int(row[0])

    def wait_empty(self, timeout: float = 10) -> int:
        """Rows left once the table is empty or ``timeout`` passed (removals are
        committed with the member's next group commit, after the results went out)."""
        deadline = time.monotonic() + timeout
        while (left := self.rows()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return left

    def drop(self) -> None:
        import psycopg
        for w in self.workers:
            w.close()
        with psycopg.connect(CONNINFO, autocommit=True) as conn:
            for suffix in ("", "_members", "_relay"):
                conn.execute(f"DROP TABLE IF EXISTS {self.table}_cluster{suffix}")


@pytest.fixture
def cluster(start_server: Callable[..., RunningServer]) -> Iterator[Cluster]:
    if not _reachable(5432):
        if IN_CI:
            pytest.fail("PostgreSQL on 127.0.0.1:5432 is not reachable")
        pytest.skip("PostgreSQL on 127.0.0.1:5432 is not reachable")
    c = Cluster(start_server)
    yield c
    c.drop()


def bg(function: bytes, data: bytes, unique: bytes = b"",
       ptype: PacketType = PT.SUBMIT_JOB_BG) -> tuple[PacketType, bytes, bytes, bytes]:
    return (ptype, function, unique, data)


# --------------------------------------------------------------------------- tests


def test_background_jobs_from_a_run_on_workers_of_c(cluster: Cluster) -> None:
    a, _b, c = cluster.server(), cluster.server(), cluster.server()
    worker = cluster.worker(c, b"fn")  # sleeping on C before anything is submitted
    time.sleep(0.3)
    jobs = [bg(b"fn", b"job-%d" % i) for i in range(300)]
    created = handles(submit(a.port, jobs))
    assert len(set(created)) == 300
    worker.wait_for(300)
    assert sorted(worker.got) == sorted(j[3] for j in jobs)
    assert len(set(worker.got)) == 300
    # The worker saw the handles the client was given (one name per job, cluster-wide).
    assert set(worker.handles) == set(created)
    assert cluster.wait_empty() == 0


def test_unique_keys_coalesce_across_servers(cluster: Cluster) -> None:
    a, b, c = cluster.server(), cluster.server(), cluster.server()
    first = handles(submit(a.port, [bg(b"fn", b"x", b"same"), bg(b"fn", b"payload", b"-")]))
    second = handles(submit(b.port, [bg(b"fn", b"y", b"same"), bg(b"fn", b"payload", b"-"),
                                     bg(b"fn", b"other", b"-")]))
    assert second[0] == first[0]
    assert second[1] == first[1]
    assert second[2] not in first
    assert cluster.rows() == 3
    worker = cluster.worker(c, b"fn")
    worker.wait_for(3)
    time.sleep(0.5)
    assert sorted(worker.got) == [b"other", b"payload", b"x"]


def test_priorities_and_fifo_hold_across_servers(cluster: Cluster) -> None:
    a, b, c = cluster.server(), cluster.server(), cluster.server()
    handles(submit(a.port, [bg(b"fn", b"low-%d" % i, ptype=PT.SUBMIT_JOB_LOW_BG)
                            for i in range(5)]))
    handles(submit(b.port, [bg(b"fn", b"normal-%d" % i) for i in range(5)]))
    handles(submit(a.port, [bg(b"fn", b"high-%d" % i, ptype=PT.SUBMIT_JOB_HIGH_BG)
                            for i in range(5)]))
    worker = cluster.worker(c, b"fn")
    worker.wait_for(15)
    assert worker.got == ([b"high-%d" % i for i in range(5)]
                          + [b"normal-%d" % i for i in range(5)]
                          + [b"low-%d" % i for i in range(5)])


def test_scheduled_job_runs_on_another_server_at_its_time(cluster: Cluster) -> None:
    a, c = cluster.server(), cluster.server()
    worker = cluster.worker(c, b"later")
    when = int(time.time()) + 2
    peer = Peer(a.port)
    peer.send(encode_req(PT.SUBMIT_JOB_EPOCH, b"later", b"", b"%d" % when, b"tick"))
    assert peer.packets(1)[0].type is PT.JOB_CREATED
    peer.close()
    worker.wait_for(1, timeout=30)
    assert time.time() >= when - 0.05  # not before its time (one clock: this machine's)
    assert worker.got == [b"tick"]


def test_kill_9_of_a_server_holding_claims(cluster: Cluster) -> None:
    """B's worker holds claimed jobs (some done, some not) when B is killed: every job
    runs on C, the unfinished ones after the lease; none is lost."""
    a, b, c = cluster.server(), cluster.server(), cluster.server()
    jobs = [bg(b"fn", b"job-%d" % i) for i in range(40)]
    handles(submit(a.port, jobs))
    stuck = cluster.worker(b, b"fn", complete=False)  # grabs, never answers
    stuck.wait_for(1)
    claimed_by_b = cluster.rows("owner IS NOT NULL")
    assert claimed_by_b >= 1
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(10)
    stuck.close()
    worker = cluster.worker(c, b"fn")
    worker.wait_for(40, timeout=30)
    time.sleep(0.5)
    counts = Counter(worker.got)
    assert set(counts) == {j[3] for j in jobs}
    assert all(n == 1 for n in counts.values()), [k for k, n in counts.items() if n > 1]
    assert cluster.wait_empty() == 0
    # A restarted B rejoins: it claims new work for its workers.
    b2 = cluster.server()
    worker.close()
    again = cluster.worker(b2, b"fn")
    handles(submit(a.port, [bg(b"fn", b"after")]))
    again.wait_for(1)
    assert again.got == [b"after"]


def test_kill_9_after_completions_not_yet_committed(cluster: Cluster) -> None:
    """At-least-once window: a worker on B completes jobs and B dies before the removals
    are committed; those jobs run again on C. Every job runs; the only duplicates are
    jobs B's worker completed."""
    a, b, c = cluster.server(), cluster.server(), cluster.server()
    jobs = [bg(b"fn", b"job-%d" % i) for i in range(2000)]
    handles(submit(a.port, jobs))
    fast = cluster.worker(b, b"fn")
    fast.wait_for(200)
    # Stopped mid-stream: completions the worker sends now are never read by B.
    b.proc.send_signal(signal.SIGSTOP)
    time.sleep(0.2)
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(10)
    fast.close()
    ran_on_b = set(fast.got)
    worker = cluster.worker(c, b"fn")
    deadline = time.monotonic() + 60
    while set(worker.got) | ran_on_b != {j[3] for j in jobs}:
        assert time.monotonic() < deadline, "jobs lost"
        time.sleep(0.05)
    time.sleep(0.5)
    on_c = Counter(worker.got)
    assert all(n == 1 for n in on_c.values())
    assert len(fast.got) == len(ran_on_b)  # B handed out no job twice
    # Jobs run twice: only jobs B held when it died (their removal died with B), so no
    # more than B's claim for its one worker (16).
    again = ran_on_b & set(on_c)
    assert len(again) <= 16
    print(f"B completed {len(ran_on_b)} jobs before kill -9; {len(again)} ran again on C")


def test_ten_thousand_jobs_through_the_cluster(cluster: Cluster) -> None:
    a, b, c = cluster.server(), cluster.server(), cluster.server()
    workers = [cluster.worker(c, b"fn") for _ in range(3)]
    jobs = [bg(b"fn", b"%d" % i) for i in range(10_000)]
    senders = [threading.Thread(target=lambda port, part: handles(submit(port, part)),
                                args=(port, jobs[i::2]))
               for i, port in enumerate((a.port, b.port))]
    for t in senders:
        t.start()
    for t in senders:
        t.join(60)
    deadline = time.monotonic() + 60
    while sum(len(w.got) for w in workers) < 10_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    got = Counter(x for w in workers for x in w.got)
    assert len(got) == 10_000
    assert all(n == 1 for n in got.values())
    assert cluster.wait_empty() == 0


def test_foreground_job_from_a_runs_on_c_and_its_packets_come_back_in_order(
        cluster: Cluster) -> None:
    a, _b, c = cluster.server(), cluster.server(), cluster.server()
    worker = Peer(c.port)
    worker.send(encode_req(PT.CAN_DO, b"fg"))
    client = Peer(a.port)
    client.send(encode_req(PT.OPTION_REQ, b"exceptions"))
    assert client.packets(1)[0].type is PT.OPTION_RES
    big = bytes(range(256)) * 400  # 100 KiB: too large for a notification
    results: dict[bytes, list[Packet]] = {}
    for data, ending in ((b"ok", PT.WORK_COMPLETE), (b"no", PT.WORK_FAIL),
                         (b"oops", PT.WORK_EXCEPTION)):
        client.send(encode_req(PT.SUBMIT_JOB, b"fg", b"", data))
        (created,) = client.packets(1)
        assert created.type is PT.JOB_CREATED
        handle = created.args[0]
        worker.send(encode_req(PT.GRAB_JOB))
        assign = worker.packets(1)[0]
        while assign.type is PT.NO_JOB:  # not claimed yet: sleep until woken
            worker.send(encode_req(PT.PRE_SLEEP))
            assert worker.packets(1)[0].type is PT.NOOP
            worker.send(encode_req(PT.GRAB_JOB))
            assign = worker.packets(1)[0]
        assert assign.type is PT.JOB_ASSIGN and assign.args[1:] == (b"fg", data)
        assert assign.args[0] == handle  # one name for the job in the whole cluster
        sent = [encode_req(PT.WORK_DATA, handle, b"part-1"),
                encode_req(PT.WORK_WARNING, handle, b"careful"),
                encode_req(PT.WORK_STATUS, handle, b"1", b"2"),
                encode_req(PT.WORK_DATA, handle, big)]
        if ending is PT.WORK_FAIL:
            sent.append(encode_req(PT.WORK_FAIL, handle))
        else:
            sent.append(encode_req(ending, handle, data.upper()))
        worker.send(b"".join(sent))
        results[data] = client.packets(5)
    for data, packets in results.items():
        assert [p.type for p in packets[:4]] == [PT.WORK_DATA, PT.WORK_WARNING,
                                                 PT.WORK_STATUS, PT.WORK_DATA]
        assert packets[0].args[1] == b"part-1"
        assert packets[1].args[1] == b"careful"
        assert packets[2].args[1:] == (b"1", b"2")
        assert packets[3].args[1] == big
        end = packets[4]
        if data == b"ok":
            assert end.type is PT.WORK_COMPLETE and end.args[1] == b"OK"
        elif data == b"no":
            assert end.type is PT.WORK_FAIL
        else:
            assert end.type is PT.WORK_EXCEPTION and end.args[1] == b"OOPS"
    client.close()
    worker.close()
    assert cluster.wait_empty() == 0


def test_get_status_on_a_for_jobs_running_on_c(cluster: Cluster) -> None:
    a, c = cluster.server(), cluster.server()
    (bg_handle,) = handles(submit(a.port, [bg(b"st", b"background")]))
    client = Peer(a.port)
    client.send(encode_req(PT.SUBMIT_JOB, b"st", b"", b"foreground"))
    (created,) = client.packets(1)
    fg_handle = created.args[0]
    worker = Peer(c.port)
    worker.send(encode_req(PT.CAN_DO, b"st"))
    assigned: dict[bytes, bytes] = {}
    while len(assigned) < 2:
        worker.send(encode_req(PT.GRAB_JOB))
        reply = worker.packets(1)[0]
        if reply.type is PT.NO_JOB:
            worker.send(encode_req(PT.PRE_SLEEP))
            worker.packets(1)
            continue
        assigned[reply.args[2]] = reply.args[0]
    assert assigned == {b"background": bg_handle, b"foreground": fg_handle}
    worker.send(encode_req(PT.WORK_STATUS, fg_handle, b"3", b"4"))
    assert client.packets(1)[0].type is PT.WORK_STATUS
    asker = Peer(a.port)
    asker.send(encode_req(PT.GET_STATUS, bg_handle) + encode_req(PT.GET_STATUS, fg_handle)
               + encode_req(PT.GET_STATUS, b"H:nowhere:1"))
    first, second, third = asker.packets(3)
    assert first.args == (bg_handle, b"1", b"1", b"0", b"0")
    assert second.args == (fg_handle, b"1", b"1", b"3", b"4")
    assert third.args == (b"H:nowhere:1", b"0", b"0", b"0", b"0")
    worker.send(encode_req(PT.WORK_COMPLETE, bg_handle, b"")
                + encode_req(PT.WORK_COMPLETE, fg_handle, b"done"))
    assert client.packets(1)[0].type is PT.WORK_COMPLETE
    assert cluster.wait_empty() == 0
    asker.send(encode_req(PT.GET_STATUS, bg_handle))
    assert asker.packets(1)[0].args == (bg_handle, b"0", b"0", b"0", b"0")
    for peer in (asker, client, worker):
        peer.close()


def admin(port: int, command: bytes) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(command + b"\n")
        data = b""
        while not data.endswith(b".\n"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    return data.splitlines()[:-1]


def test_admin_status_shows_cluster_wide_queued_jobs(cluster: Cluster) -> None:
    a, b, c = cluster.server(), cluster.server(), cluster.server()
    handles(submit(a.port, [bg(b"counted", b"%d" % i) for i in range(7)]))
    handles(submit(b.port, [bg(b"counted", b"b%d" % i) for i in range(3)]))
    stuck = cluster.worker(c, b"counted", complete=False)
    stuck.wait_for(1)

    def status(port: int) -> list[bytes]:
        deadline = time.monotonic() + 10
        while True:  # the counts are refreshed when asked for once they are 1 s old
            lines = [line for line in admin(port, b"status") if line.startswith(b"counted")]
            if (lines and lines[0].startswith(b"counted\t10\t")) or (
                    time.monotonic() > deadline):
                return lines
            time.sleep(0.3)

    # Every server: the ten jobs of the cluster; its own running jobs and workers.
    assert status(a.port) == [b"counted\t10\t0\t0"]
    assert status(b.port) == [b"counted\t10\t0\t0"]
    # (The worker that never answers grabbed every job C claimed for it.)
    time.sleep(0.5)
    assert status(c.port) == [b"counted\t10\t%d\t1" % len(stuck.got)]
    assert len(stuck.got) >= 1


class Proxy:
    """A TCP proxy in front of PostgreSQL that the test can cut: established connections
    are closed and new ones refused until ``restore``, as when the database restarts."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = True
        self.pairs: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", 5432))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.pairs += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for s in pairs:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_relayed_jobs_fail_when_their_results_cannot_be_heard(
        start_server: Callable[..., RunningServer]) -> None:
    """A's LISTEN connection breaks while its client's job runs on C: the client hears
    WORK_FAIL (not a wait for ever); once the database is back, relaying works again."""
    if not _reachable(5432):
        if IN_CI:
            pytest.fail("PostgreSQL on 127.0.0.1:5432 is not reachable")
        pytest.skip("PostgreSQL on 127.0.0.1:5432 is not reachable")
    proxy = Proxy()
    cluster = Cluster(start_server, f"host=127.0.0.1 port={proxy.port} dbname=test "
                      "user=postgres")
    try:
        a, c = cluster.server(), cluster.server()
        worker = Peer(c.port)
        worker.send(encode_req(PT.CAN_DO, b"fg"))
        client = Peer(a.port)

        def run_one(data: bytes) -> Packet:
            client.send(encode_req(PT.SUBMIT_JOB, b"fg", b"", data))
            assert client.packets(1)[0].type is PT.JOB_CREATED
            while True:
                worker.send(encode_req(PT.GRAB_JOB))
                reply = worker.packets(1)[0]
                if reply.type is PT.JOB_ASSIGN:
                    return reply
                worker.send(encode_req(PT.PRE_SLEEP))
                assert worker.packets(1)[0].type is PT.NOOP

        first = run_one(b"one")
        proxy.cut()
        (failed,) = client.packets(1)
        assert failed.type is PT.WORK_FAIL and failed.args[0] == first.args[0]
        proxy.restore()
        worker.send(encode_req(PT.WORK_COMPLETE, first.args[0], b"late"))
        time.sleep(1.5)  # the members reconnect (back-off from 0.2 s)
        second = run_one(b"two")
        worker.send(encode_req(PT.WORK_COMPLETE, second.args[0], b"TWO"))
        (done,) = client.packets(1)
        assert done.type is PT.WORK_COMPLETE and done.args == (second.args[0], b"TWO")
        client.close()
        worker.close()
    finally:
        proxy.close()
        cluster.drop()


def test_postgres_unreachable_under_load(start_server: Callable[..., RunningServer]) -> None:
    """The database goes away twice while clients submit and a worker drains: every
    submit is answered (JOB_CREATED or QUEUE_ERROR), every acknowledged job runs, the
    worker keeps its connection, and each server logs the outage once per change."""
    if not _reachable(5432):
        if IN_CI:
            pytest.fail("PostgreSQL on 127.0.0.1:5432 is not reachable")
        pytest.skip("PostgreSQL on 127.0.0.1:5432 is not reachable")
    proxy = Proxy()
    cluster = Cluster(start_server, f"host=127.0.0.1 port={proxy.port} dbname=test "
                      "user=postgres")
    try:
        a, c = cluster.server(), cluster.server()
        worker = cluster.worker(c, b"fn")
        acked: list[bytes] = []
        refused = 0
        stop = threading.Event()

        def load() -> None:
            nonlocal refused
            i = 0
            peer = Peer(a.port)
            while not stop.is_set():
                batch = [b"job-%d" % (i + k) for k in range(20)]
                i += 20
                peer.send(b"".join(encode_req(PT.SUBMIT_JOB_BG, b"fn", b"", d)
                                   for d in batch))
                for data, reply in zip(batch, peer.packets(len(batch)), strict=True):
                    if reply.type is PT.JOB_CREATED:
                        acked.append(data)
                    else:
                        assert reply.type is PT.ERROR and reply.args[0] == b"QUEUE_ERROR"
                        refused += 1
                time.sleep(0.01)
            peer.close()

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        for _ in range(2):
            time.sleep(1.0)
            proxy.cut()
            time.sleep(1.5)
            proxy.restore()
        time.sleep(1.0)
        stop.set()
        loader.join(30)
        assert acked and refused
        deadline = time.monotonic() + 60
        while not set(acked) <= set(worker.got):
            assert time.monotonic() < deadline, (
                f"{len(set(acked) - set(worker.got))} acknowledged jobs never ran")
            assert not worker.error, worker.error
            time.sleep(0.05)
        assert not worker.error  # the worker's connection survived the outages
        print(f"{len(acked)} acknowledged, {refused} refused with QUEUE_ERROR, "
              f"{len(worker.got) - len(set(worker.got))} ran twice")
        for srv in (a, c):
            srv.proc.send_signal(signal.SIGTERM)
            srv.proc.wait(15)
            log = srv.log.read_text()
            downs = log.count("PostgreSQL unreachable")
            ups = log.count("PostgreSQL reachable again")
            if srv is c:
                assert 1 <= downs <= 2 and ups == downs, (downs, ups)
    finally:
        proxy.close()
        cluster.drop()


class PrivatePostgres:
    """A PostgreSQL of our own (initdb in a temporary directory, a free port), so the test
    can stop and start it without touching the machine's shared service."""

    def __init__(self) -> None:
        import glob
        import shutil
        import tempfile
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not bins:
            message = "PostgreSQL server binaries (pg_ctl, initdb) not installed"
            if IN_CI:
                pytest.fail(message)
            pytest.skip(message)
        self.bin = Path(bins[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="gearman-pg-"))
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.dir, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        self._run("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        import subprocess
        subprocess.run([*self.as_user, str(self.bin / tool), *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w",
                  "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
                  " -c fsync=off", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    @property
    def conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} dbname=postgres user=postgres"

    def close(self) -> None:
        import shutil
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def test_postgres_restarted_under_load(start_server: Callable[..., RunningServer]) -> None:
    """A real restart: our own PostgreSQL is stopped (fast: every session is cut) for a
    second and started again, twice, while clients submit on A and a worker drains on C.
    Every acknowledged job runs; refused submits heard QUEUE_ERROR; the worker's
    connection survives."""
    pg = PrivatePostgres()
    cluster = Cluster(start_server, pg.conninfo)
    cluster.admin_conninfo = pg.conninfo
    try:
        a, c = cluster.server(), cluster.server()
        worker = cluster.worker(c, b"fn")
        acked: list[bytes] = []
        refused = [0]
        stop = threading.Event()

        def load() -> None:
            i = 0
            peer = Peer(a.port)
            while not stop.is_set():
                batch = [b"job-%d" % (i + k) for k in range(20)]
                i += 20
                peer.send(b"".join(encode_req(PT.SUBMIT_JOB_BG, b"fn", b"", d)
                                   for d in batch))
                for data, reply in zip(batch, peer.packets(len(batch)), strict=True):
                    if reply.type is PT.JOB_CREATED:
                        acked.append(data)
                    else:
                        assert reply.type is PT.ERROR and reply.args[0] == b"QUEUE_ERROR"
                        refused[0] += 1
                time.sleep(0.01)
            peer.close()

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        for _ in range(2):
            time.sleep(1.0)
            pg.stop()
            time.sleep(1.0)
            pg.start()
        time.sleep(1.0)
        stop.set()
        loader.join(30)
        assert acked and refused[0]
        deadline = time.monotonic() + 60
        while not set(acked) <= set(worker.got):
            assert time.monotonic() < deadline, (
                f"{len(set(acked) - set(worker.got))} acknowledged jobs never ran")
            assert not worker.error, worker.error
            time.sleep(0.05)
        assert not worker.error
        assert cluster.wait_empty() == 0
        print(f"{len(acked)} acknowledged, {refused[0]} refused with QUEUE_ERROR, "
              f"{len(worker.got) - len(set(worker.got))} ran twice")
    finally:
        for w in cluster.workers:
            w.close()
        cluster.workers.clear()
        pg.close()


def test_cluster_options_are_checked(start_server: Callable[..., RunningServer]) -> None:
    import subprocess
    import sys
    for extra, message in ((["--cluster-lease", "0"], "--cluster-lease"),
                           (["--cluster-lease", "soon"], "--cluster-lease"),
                           (["--store-queue-on-shutdown"], "--store-queue-on-shutdown")):
        proc = subprocess.run(
            [sys.executable, "-m", "server", "-p", "0", "-q", "postgres", "--libpq-conninfo",
             CONNINFO, "--cluster", "x", *extra], capture_output=True, text=True,
            timeout=30, env={**os.environ})
        assert proc.returncode != 0
        assert message in proc.stderr, proc.stderr

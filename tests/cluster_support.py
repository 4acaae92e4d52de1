"""Helpers of the cluster tests (test_cluster.py, test_cluster_outages.py): raw Gear
peers and workers, servers of one cluster on a fresh table, a cuttable proxy in front of
PostgreSQL, and a PostgreSQL of our own that can be restarted."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from protocol import NEED_DATA, Packet, PacketType, Parser, encode_req
from tests.conftest import IN_CI, RunningServer, free_port

PT = PacketType
CONNINFO = "host=127.0.0.1 port=5432 dbname=test user=postgres"
LEASE = "2"


def reachable(port: int) -> bool:
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
        #: --cluster-lease of the servers started from now on.
        self.lease = LEASE
        #: Where the test looks at the tables (not through a proxy).
        self.admin_conninfo = CONNINFO

    def args(self) -> list[str]:
        return ["-q", "postgres", "--libpq-conninfo", self.conninfo, "--libpq-table",
                self.table, "--cluster", self.name, "--cluster-lease", self.lease]

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
    if not reachable(5432):
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


def admin(port: int, command: bytes) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(command + b"\n")
        data = b""
        while not data.endswith(b".\n"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    return data.splitlines()[:-1]


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



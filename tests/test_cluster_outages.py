"""The cluster when PostgreSQL goes away: cut behind a proxy, or (our own instance)
really restarted, under load; and the options a member refuses (docs/cluster.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from protocol import Packet, PacketType, encode_req
from tests.cluster_support import (
    CONNINFO,
    IN_CI,
    Cluster,
    Peer,
    PrivatePostgres,
    Proxy,
    reachable,
)
from tests.conftest import RunningServer

pytestmark = pytest.mark.slow

PT = PacketType


def test_relayed_jobs_fail_when_their_results_cannot_be_heard(
        start_server: Callable[..., RunningServer]) -> None:
    """A's LISTEN connection breaks while its client's job runs on C: the client hears
    WORK_FAIL (not a wait for ever); once the database is back, relaying works again."""
    if not reachable(5432):
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
    if not reachable(5432):
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
    for extra, message in ((["--cluster-lease", "0"], "--cluster-lease"),
                           (["--cluster-lease", "soon"], "--cluster-lease"),
                           (["--store-queue-on-shutdown"], "--store-queue-on-shutdown")):
        proc = subprocess.run(
            [sys.executable, "-m", "server", "-p", "0", "-q", "postgres", "--libpq-conninfo",
             CONNINFO, "--cluster", "x", *extra], capture_output=True, text=True,
            timeout=30, env={**os.environ})
        assert proc.returncode != 0
        assert message in proc.stderr, proc.stderr

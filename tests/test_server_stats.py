"""Statistics (issue 15): the core's counters and histograms, the admin ``stats`` and
``stats json`` replies, and ``/metrics`` (Prometheus text format).

The counting is driven through ``Manager`` with explicit ``now`` values (an injected
clock), so histogram buckets are checked against known durations; the wire is checked
with our server in-process on port 0 (the fast layer).
"""

from __future__ import annotations

import json

import pytest
import trio
from fake_peer import FakePeer
from prometheus_client.parser import text_string_to_metric_families
from test_server_manager import World

from protocol import PacketType, encode_req, parse_admin_line
from server.admin import AdminContext, handle_admin
from server.app import Server
from server.cli import CliError, parse_args
from server.config import ServerConfig
from server.jobs import BUCKETS, FunctionStats, StatsTable
from server.metrics import render
from server.retry import RetryPolicies, RetryPolicy

PT = PacketType


def bucket(seconds: float) -> int:
    """Index of the bucket ``seconds`` falls in (its upper bound is the first >= it)."""
    return next((i for i, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))


def admin(w: World, line: bytes) -> bytes:
    ctx = AdminContext(manager=w.m, version="1.2.3", verbose="ERROR", pid=1,
                       shutdown=lambda graceful: None, clock=lambda: w.clock.now,
                       started=w.clock.now - 100)
    conn = w.m.connect(FakePeer(), "127.0.0.1")
    return handle_admin(ctx, conn, parse_admin_line(line))


def a_day(w: World) -> World:
    """A known sequence: f has 2 completed (waits 0.5 s and 2 s, runs 3 s and 0.25 s),
    1 failed, 1 exception, 1 coalesced submit, 1 requeued (worker left), 1 cancelled,
    and 1 job still queued 10 s; g has one background job queued."""
    client, worker = w.end(), w.end()
    worker.can_do(b"f")
    h1 = client.submit(b"f", b"u1", ptype=PT.SUBMIT_JOB)
    client.submit(b"f", b"u1", ptype=PT.SUBMIT_JOB_BG)  # joins h1: coalesced
    w.clock.now += 0.5
    assert worker.grab_handle() == h1  # waited 0.5
    w.clock.now += 3
    worker.send(PT.WORK_COMPLETE, h1, b"ok")  # ran 3
    client.take()
    h2 = client.submit(b"f", ptype=PT.SUBMIT_JOB_HIGH)
    w.clock.now += 2
    assert worker.grab_handle() == h2  # waited 2
    w.clock.now += 0.25
    worker.send(PT.WORK_COMPLETE, h2, b"ok")  # ran 0.25
    client.take()
    h3 = client.submit(b"f", ptype=PT.SUBMIT_JOB_LOW_BG)
    assert worker.grab_handle() == h3  # waited 0
    w.clock.now += 1
    worker.send(PT.WORK_FAIL, h3)  # ran 1
    client.take()
    h4 = client.submit(b"f")
    assert worker.grab_handle() == h4
    worker.send(PT.WORK_EXCEPTION, h4, b"boom")  # ran 0
    client.take()
    h5 = client.submit(b"f", ptype=PT.SUBMIT_JOB_BG)
    assert worker.grab_handle() == h5
    worker.close()  # h5 requeued
    h6 = client.submit(b"f", ptype=PT.SUBMIT_JOB_BG)
    assert w.m.cancel(h6)
    client.submit(b"g", ptype=PT.SUBMIT_JOB_BG)
    client.take()
    w.clock.now += 10  # h5 (requeued) and g's job have waited 10 s now
    return w


def test_counters_after_a_known_sequence() -> None:
    w = a_day(World())
    st = w.m.stats[b"f"]
    # high fg, normal fg, low fg, high bg, normal bg, low bg
    assert st.submitted == [1, 2, 0, 0, 2, 1]
    assert (st.coalesced, st.completed, st.failed, st.exceptions) == (1, 2, 1, 1)
    assert (st.requeued, st.timed_out, st.cancelled) == (1, 0, 1)


def test_histograms_count_known_durations() -> None:
    w = a_day(World())
    st = w.m.stats[b"f"]
    wait = [0] * (len(BUCKETS) + 1)
    for seconds in (0.5, 2, 0, 0, 0):  # h1, h2, h3, h4, h5 (first assignment)
        wait[bucket(seconds)] += 1
    assert st.wait == wait and st.wait_sum == 2.5
    run = [0] * (len(BUCKETS) + 1)
    for seconds in (3, 0.25, 1, 0):
        run[bucket(seconds)] += 1
    assert st.run == run and st.run_sum == 4.25
    # Bounds are inclusive (Prometheus' le): exactly 0.5 s is in the 0.5 bucket.
    assert st.wait[BUCKETS.index(0.5)] == 1 and st.run[BUCKETS.index(0.25)] == 1
    assert st.wait[BUCKETS.index(2.5)] == 1 and st.run[BUCKETS.index(1.0)] == 1


def test_timeout_counts_and_retry_restarts_the_wait() -> None:
    w = World()
    w.m.retry = RetryPolicies({b"t": RetryPolicy(2, 0.001, 0.001)})
    client, worker = w.end(), w.end()
    worker.send(PT.CAN_DO_TIMEOUT, b"t", b"1000")
    h = client.submit(b"t", ptype=PT.SUBMIT_JOB_BG)
    w.clock.now += 7
    assert worker.grab_handle() == h  # waited 7
    w.clock.now += 1.5
    w.m.tick(w.clock.now)  # timed out: retried after its back-off (at most 1 ms)
    w.clock.now += 0.002
    w.m.tick(w.clock.now)  # due again: queued
    w.clock.now += 0.002
    other = w.end()
    other.can_do(b"t")
    assert other.grab_handle() == h  # waited 0.002 since it was queued again
    st = w.m.stats[b"t"]
    assert (st.timed_out, st.requeued, st.failed) == (1, 1, 0)
    assert st.wait[bucket(7)] == 1 and st.wait[bucket(0.002)] == 1 and sum(st.wait) == 2


def test_stats_survive_the_function_being_freed() -> None:
    w = World()
    client, worker = w.end(), w.end()
    worker.can_do(b"gone")
    h = client.submit(b"gone")
    assert worker.grab_handle() == h
    worker.send(PT.WORK_COMPLETE, h, b"")
    worker.close()
    assert b"gone" not in w.m.functions
    assert w.m.stats[b"gone"].completed == 1
    assert admin(w, b"stats").startswith(
        b"gone\t1\t0\t1\t0\t0\t0\t0\t0\t0\t0\t0\t0.000\t0.000000\t0.000000\n")


def test_freed_functions_stats_are_bounded() -> None:
    table = StatsTable()
    for i in range(3 * StatsTable.KEEP_FREED):
        table.take(b"f%d" % i).live = False
    table.take(b"live")
    assert len(table) <= 2 * StatsTable.KEEP_FREED + 1
    assert b"live" in table and b"f%d" % (3 * StatsTable.KEEP_FREED - 1) in table
    assert isinstance(table[b"live"], FunctionStats)


def test_admin_stats_bytes() -> None:
    w = a_day(World())
    assert admin(w, b"stats") == (
        b"f\t6\t1\t2\t1\t1\t1\t0\t1\t1\t0\t0\t10.000\t0.500000\t1.062500\n"
        b"g\t1\t0\t0\t0\t0\t0\t0\t0\t1\t0\t0\t10.000\t0.000000\t0.000000\n"
        b".\n")
    assert admin(w, b"stats extra").startswith(b"ERR INVALID_ARGUMENTS")


def test_admin_stats_json_parses() -> None:
    w = a_day(World())
    reply = admin(w, b"stats json")
    assert reply.endswith(b"}\n.\n") and reply.count(b"\n") == 2
    doc = json.loads(reply[:-3])
    assert doc["version"] == "1.2.3" and doc["uptime_seconds"] == 100
    assert doc["buckets"] == [*BUCKETS, "+Inf"]
    f = doc["functions"]["f"]
    assert f["submitted"]["normal"] == {"foreground": 2, "background": 2}
    assert f["submitted"]["high"] == {"foreground": 1, "background": 0}
    assert (f["completed"], f["failed"], f["exceptions"], f["coalesced"]) == (2, 1, 1, 1)
    assert (f["queued"], f["running"], f["workers"]) == (1, 0, 0)
    assert f["oldest_queued_age_seconds"] == 10
    assert f["run_seconds"]["count"] == 4 and f["run_seconds"]["sum"] == 4.25
    assert f["queue_wait_seconds"]["counts"][bucket(2)] == 1
    assert doc["functions"]["g"]["queued"] == 1


def metrics_of(page: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(page.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_page_parses_with_the_values() -> None:
    w = a_day(World())
    ctx = AdminContext(manager=w.m, version="1.2.3", verbose="ERROR", pid=1,
                       shutdown=lambda graceful: None, clock=lambda: w.clock.now,
                       started=w.clock.now - 100)
    m = metrics_of(render(ctx))
    f = (("function", "f"),)
    assert m[("gearman_jobs_submitted_total", (("background", "true"), ("function", "f"),
                                               ("priority", "normal")))] == 2
    assert m[("gearman_jobs_completed_total", f)] == 2
    assert m[("gearman_jobs_failed_total", f)] == 1
    assert m[("gearman_jobs_exceptions_total", f)] == 1
    assert m[("gearman_jobs_requeued_total", f)] == 1
    assert m[("gearman_jobs_coalesced_total", f)] == 1
    assert m[("gearman_jobs_cancelled_total", f)] == 1
    assert m[("gearman_queued_jobs", f)] == 1
    assert m[("gearman_running_jobs", f)] == 0
    assert m[("gearman_workers", f)] == 0
    assert m[("gearman_oldest_queued_job_age_seconds", f)] == 10
    assert m[("gearman_job_run_seconds_count", f)] == 4
    assert m[("gearman_job_run_seconds_sum", f)] == 4.25
    # Cumulative buckets: runs of 0, 0.25, 1 and 3 s.
    assert m[("gearman_job_run_seconds_bucket", (*f, ("le", "0.1")))] == 1
    assert m[("gearman_job_run_seconds_bucket", (*f, ("le", "0.25")))] == 2
    assert m[("gearman_job_run_seconds_bucket", (*f, ("le", "1.0")))] == 3
    assert m[("gearman_job_run_seconds_bucket", (*f, ("le", "2.5")))] == 3
    assert m[("gearman_job_run_seconds_bucket", (*f, ("le", "5.0")))] == 4
    assert m[("gearman_job_run_seconds_bucket", (*f, ("le", "+Inf")))] == 4
    assert m[("gearman_job_queue_wait_seconds_bucket", (*f, ("le", "0.5")))] == 4
    assert m[("gearman_job_queue_wait_seconds_count", f)] == 5
    assert m[("gearman_uptime_seconds", ())] == 100
    assert m[("gearman_build_info", (("version", "1.2.3"),))] == 1
    assert m[("gearman_connections", ())] == len(w.m.conns)


# ---------------------------------------------------------------- over the wire


async def _http_get(port: int, target: bytes) -> tuple[bytes, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET " + target + b" HTTP/1.0\r\nHost: x\r\n\r\n")
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    await stream.aclose()
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


async def _admin_line(port: int, line: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(line + b"\r\n")
    data = b""
    while not data.endswith(b".\n"):
        data += await stream.receive_some(65536)
    await stream.aclose()
    return data


async def test_stats_and_metrics_over_the_wire(nursery: trio.Nursery) -> None:
    config = ServerConfig(listen=("127.0.0.1",), port=0, protocols=("http",), http_port=0,
                          metrics_port=0)
    srv = Server(config)
    (addr, *_) = await nursery.start(srv.serve)
    port = addr[1]
    # Two background jobs and a coalesced one, over the Gear port.
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(encode_req(PT.SUBMIT_JOB_BG, b"rev", b"k", b"a")
                          + encode_req(PT.SUBMIT_JOB_BG, b"rev", b"k", b"a")
                          + encode_req(PT.SUBMIT_JOB_LOW_BG, b"rev", b"", b"b"))
    got = b""
    while got.count(b"\0RES") < 3:
        got += await stream.receive_some(65536)
    reply = await _admin_line(port, b"stats")
    cells = reply.split(b"\n")[0].split(b"\t")
    assert cells[:12] == [b"rev", b"2", b"1", b"0", b"0", b"0", b"0", b"0", b"0", b"2", b"0",
                          b"0"]
    assert reply.endswith(b"\n.\n") and reply.count(b"\n") == 2
    doc = json.loads((await _admin_line(port, b"stats json"))[:-3])
    assert doc["functions"]["rev"]["submitted"]["low"]["background"] == 1
    # The reference's commands keep their bytes.
    assert await _admin_line(port, b"status") == b"rev\t2\t0\t0\n.\n"
    for where in (srv.metrics_addresses[0][1], srv.http_addresses[0][1]):
        head, body = await _http_get(where, b"/metrics")
        assert head.startswith(b"HTTP/1.1 200 ") and b"text/plain" in head
        m = metrics_of(body)
        assert m[("gearman_queued_jobs", (("function", "rev"),))] == 2
        assert m[("gearman_jobs_coalesced_total", (("function", "rev"),))] == 1
        assert m[("gearman_connections_opened_total", ())] >= 3
    head, _ = await _http_get(srv.metrics_addresses[0][1], b"/rev")
    assert head.startswith(b"HTTP/1.1 404 ")
    assert b"rev" in srv.manager.functions and srv.manager.functions[b"rev"].queued == 2
    await stream.aclose()
    srv.shutdown()


def test_metrics_port_flag() -> None:
    assert parse_args([], {}).config.metrics_port is None
    assert parse_args(["--metrics-port", "0"], {}).config.metrics_port == 0
    assert parse_args(["--metrics-port=9100"], {}).config.metrics_port == 9100
    with pytest.raises(CliError):
        parse_args(["--metrics-port", "70000"], {})


async def test_server_counters_traffic_store_connections_and_workers(
        nursery: trio.Nursery, tmp_path: object) -> None:
    """Per server: Gear packets and bytes in and out, store commits (count, batch sizes,
    commit-time histogram), connections by kind, each worker's running job and since
    when, and bytes queued per function; in `stats json` and in /metrics."""
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    config = ServerConfig(listen=("127.0.0.1",), port=0, metrics_port=0,
                          queue_type="libsqlite3",
                          queue_options=(("libsqlite3-db", str(tmp_path / "q.db")),))
    srv = Server(config)
    (addr, *_) = await nursery.start(srv.serve)
    port = addr[1]
    with trio.fail_after(20):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(b"".join(encode_req(PT.SUBMIT_JOB_BG, b"q", b"", b"x" * 10)
                                       for _ in range(5)))
        got = b""
        while got.count(b"\0RES") < 5:
            got += await client.receive_some(65536)
        worker = await trio.open_tcp_stream("127.0.0.1", port)
        await worker.send_all(encode_req(PT.CAN_DO, b"q") + encode_req(PT.GRAB_JOB))
        assigned = b""
        while b"xxxxxxxxxx" not in assigned:
            assigned += await worker.receive_some(65536)
        doc = json.loads((await _admin_line(port, b"stats json"))[:-3])
        server = doc["server"]
        assert server["gear"]["packets_in"] >= 7  # 5 submits, CAN_DO, GRAB_JOB
        assert server["gear"]["packets_out"] >= 6  # 5 JOB_CREATED, JOB_ASSIGN
        assert server["gear"]["bytes_in"] > 0 and server["gear"]["bytes_out"] > 0
        store = server["store"]
        assert store["commits"] >= 1 and store["batch_jobs_sum"] == 5
        assert store["commit_seconds"]["count"] == store["commits"]
        assert sum(store["commit_seconds"]["counts"]) == store["commits"]
        assert doc["connections_by_kind"]["worker"] == 1
        assert doc["connections_by_kind"]["client"] == 1
        assert doc["connections_by_kind"]["admin"] == 1  # this one
        (entry,) = doc["workers"]
        assert entry["functions"] == ["q"] and len(entry["jobs"]) == 1
        assert entry["jobs"][0]["function"] == "q" and entry["jobs"][0]["running_seconds"] >= 0
        assert doc["functions"]["q"]["bytes_queued"] == 4 * 10
        _, body = await _http_get(srv.metrics_addresses[0][1], b"/metrics")
        m = metrics_of(body)
        assert m[("gearman_queued_bytes", (("function", "q"),))] == 40
        assert m[("gearman_gear_packets_in_total", ())] >= 7
        assert m[("gearman_store_commits_total", ())] >= 1
        assert m[("gearman_store_committed_jobs_total", ())] == 5
        assert m[("gearman_store_commit_seconds_count", ())] >= 1
        assert m[("gearman_connections_by_kind", (("kind", "worker"),))] == 1
        await client.aclose()
        await worker.aclose()
    srv.shutdown()

"""Retries, dead letters and results through the whole server, in-process on port 0 with
real time and our client, worker and admin libraries; HTTP pages with h11."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import h11
import pytest
import trio

from gearman_cli import AdminError, AsyncAdmin, AsyncClient, AsyncWorker, Client, Job
from server.app import Server
from server.config import ServerConfig
from server.metrics import render
from server.retry import RetryPolicy
from tests.test_server_stats import metrics_of


@pytest.fixture
async def srv(nursery: trio.Nursery) -> AsyncIterator[Server]:
    config = ServerConfig(
        listen=("127.0.0.1",), port=0, protocols=("http",), http_port=0,
        retry_policies=((b"flaky", RetryPolicy(3, 0.05, 0.1)),
                        (b"doomed", RetryPolicy(2, 0.05, 0.05))),
        result_ttls=((None, 60.0),))
    server = Server(config)
    await nursery.start(server.serve)
    yield server
    server.shutdown()


def gear(server: Server) -> str:
    return f"127.0.0.1:{server.addresses[0][1]}"


async def http_get(port: int, target: str) -> tuple[int, Any]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        await stream.send_all(conn.send(h11.Request(
            method="GET", target=target, headers=[("Host", "x"), ("Connection", "close")])))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        status, body = 0, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, json.loads(body)


async def wait_until(predicate: Any) -> None:
    while not predicate():
        await trio.sleep(0.01)


async def test_flaky_job_is_retried_and_its_result_kept(srv: Server) -> None:
    attempts: list[int | None] = []

    async def flaky(job: Job) -> bytes:
        attempts.append(job.attempt)
        if len(attempts) < 3:
            raise RuntimeError(f"try {len(attempts)} failed")
        return job.data.upper()

    with trio.fail_after(20):
        async with AsyncClient(gear(srv)) as client:
            handle = await client.do_background("flaky", b"hello", unique="k1")
        worker = AsyncWorker(gear(srv), attempts=True)
        worker.add_function("flaky", flaky)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.work_forever)
            async with AsyncAdmin(gear(srv)) as admin:
                while (await admin.result(handle)).state != "done":
                    await trio.sleep(0.02)
                done = await admin.result(function="flaky", unique="k1")
            worker.stop()
        assert attempts == [1, 2, 3]
        assert (done.state, done.attempts, done.data) == ("done", 3, b"HELLO")
        async with AsyncClient(gear(srv)) as client:
            assert (await client.result(handle)).data == b"HELLO"
        status, doc = await http_get(srv.http_addresses[0][1], "/jobs/" + handle.decode())
        assert status == 200 and doc["state"] == "done" and doc["attempts"] == 3
        assert base64.b64decode(doc["data"]) == b"HELLO"
        status, doc = await http_get(srv.http_addresses[0][1], "/jobs/H:nope:1")
        assert status == 404 and doc["state"] == "unknown"
        stats = srv.manager.stats[b"flaky"]
        assert (stats.requeued, stats.completed, stats.failed) == (2, 1, 0)


async def test_doomed_job_becomes_a_dead_letter_then_is_retried(srv: Server) -> None:
    runs: list[bytes] = []

    async def doomed(job: Job) -> bytes:
        runs.append(job.data)
        if job.data == b"bad":
            raise ValueError("cannot do bad")
        return b"fine"

    with trio.fail_after(20):
        async with AsyncClient(gear(srv)) as client:
            bad = await client.do_background("doomed", b"bad", unique="u-bad")
        worker = AsyncWorker(gear(srv))
        worker.add_function("doomed", doomed)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.work_forever)
            await wait_until(lambda: len(srv.manager.dead_letters) == 1)
            async with AsyncAdmin(gear(srv)) as admin:
                (letter,) = await admin.show_dead()
                assert (letter.function, letter.handle, letter.unique, letter.attempts) == (
                    b"doomed", bad, b"u-bad", 2)
                assert "cannot do bad" in letter.error
                assert letter.first_failed <= letter.last_failed
                assert await admin.show_dead("other") == []
                failed = await admin.result(bad)
                assert failed.state == "failed" and b"cannot do bad" in (failed.data or b"")
                status, doc = await http_get(srv.http_addresses[0][1], "/dead")
                assert status == 200 and [d["handle"] for d in doc] == [bad.decode()]
                m = metrics_of(render(srv.admin))
                assert m[("gearman_dead_letters", (("function", "doomed"),))] == 1
                assert m[("gearman_results_recorded_total", ())] >= 1
                with pytest.raises(AdminError, match="UNKNOWN_JOB"):
                    await admin.retry_dead("doomed", "H:nope:9")
                assert await admin.retry_dead("doomed") == 1
                await wait_until(lambda: len(srv.manager.dead_letters) == 1 and len(runs) == 4)
                assert await admin.drop_dead("doomed", "all") == 1
                assert await admin.show_dead() == []
            worker.stop()
        assert runs == [b"bad"] * 4


async def test_blocking_client_result_from_a_thread(srv: Server) -> None:
    async def ok(job: Job) -> bytes:
        return b"ok:" + job.data

    with trio.fail_after(20):
        async with AsyncClient(gear(srv)) as client:
            handle = await client.do_background("plain", b"x", unique="p1")
        worker = AsyncWorker(gear(srv))
        worker.add_function("plain", ok)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.work_forever)
            await wait_until(lambda: handle not in srv.manager.jobs)
            worker.stop()

        def fetch() -> tuple[str, bytes | None, str]:
            with Client(gear(srv)) as blocking:
                by_handle = blocking.result(handle)
                by_unique = blocking.result("plain", unique="p1")
                return by_handle.state, by_handle.data, by_unique.state

        assert await trio.to_thread.run_sync(fetch) == ("done", b"ok:x", "done")

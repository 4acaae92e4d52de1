"""The trio worker: job fields, concurrency (async and threaded), sleep/wake, timeouts,
CANT_DO, reconnect with re-registration, back-off, and a worker killed mid-job."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import free_port

from gearman_cli import AsyncAdmin, AsyncClient, AsyncWorker, Job, JobFailedError
from protocol import Packet, PacketType
from tests.lib_support import (
    FakePeer,
    FakeServer,
    addr,
    running_worker,
    wait_for_workers,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server(any_server: Any) -> Any:
    """The server these tests run against: ours and the reference (``reference_server``
    for the reference alone)."""
    return any_server


async def test_job_fields_and_app_data(server: Any) -> None:
    seen: list[tuple[bytes, bytes, bytes, bytes, Any]] = []

    async def record(job: Job) -> str:
        seen.append((job.function, job.unique, job.workload, job.handle, job.app_data))
        return "ok"

    with trio.fail_after(10):
        worker = AsyncWorker(addr(server), client_id="lib-test")
        worker.add_function("fields", record, app_data={"k": 1})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.work_forever)
            async with AsyncClient(addr(server)) as client:
                task = client.add_task("fields", b"w\0x", unique="uniq-1")
                await client.run_tasks()
            async with AsyncAdmin(addr(server)) as admin:
                ids = [w.client_id for w in await admin.workers()]
            nursery.cancel_scope.cancel()
    assert task.result == b"ok"
    assert seen == [(b"fields", b"uniq-1", b"w\0x", task.handle, {"k": 1})]
    assert b"lib-test" in ids


async def test_work_count_returns_after_that_many_jobs(server: Any) -> None:
    with trio.fail_after(10):
        async with AsyncClient(addr(server)) as client:
            for i in range(5):
                await client.do_background("count", b"%d" % i)
        worker = AsyncWorker(addr(server), concurrency=2)
        done: list[bytes] = []

        async def take(job: Job) -> bytes:
            done.append(job.data)
            return b""

        worker.add_function("count", take)
        assert await worker.work(3) == 3
        assert len(done) == 3
        assert await worker.work(2) == 2
        assert sorted(done) == [b"0", b"1", b"2", b"3", b"4"]


@pytest.mark.parametrize("threaded", [False, True], ids=["async", "threads"])
async def test_concurrency_runs_n_jobs_at_once(server: Any, threaded: bool) -> None:
    n = 4
    if threaded:
        barrier = threading.Barrier(n, timeout=5)

        def callback(job: Job) -> bytes:
            job.send_status(1, 2)  # from a thread
            barrier.wait()  # only passes when all n jobs run at the same time
            return job.data
    else:
        arrived = 0
        all_here = trio.Event()

        async def callback(job: Job) -> bytes:  # type: ignore[misc]
            nonlocal arrived
            arrived += 1
            if arrived == n:
                all_here.set()
            await all_here.wait()
            return job.data

    with trio.fail_after(10):
        async with running_worker(
            addr(server), {"par": callback}, concurrency=n
        ), AsyncClient(addr(server)) as client:
            tasks = [client.add_task("par", b"%d" % i) for i in range(n)]
            await client.run_tasks()
    assert [t.result for t in tasks] == [b"%d" % i for i in range(n)]


async def test_sleeps_with_pre_sleep_and_wakes_on_noop() -> None:
    """Protocol-level: registration, GRAB_JOB_UNIQ, PRE_SLEEP after NO_JOB, silence until
    NOOP, then a grab and the job's WORK_COMPLETE."""
    script: list[str] = []
    finished = trio.Event()

    async def handler(peer: FakePeer) -> None:
        assert (await peer.next()).type is PacketType.SET_CLIENT_ID
        reg = await peer.next()
        assert reg == Packet.req(PacketType.CAN_DO_TIMEOUT, b"f", b"2500")
        assert (await peer.next()).type is PacketType.GRAB_JOB_UNIQ
        await peer.send(Packet.res(PacketType.NO_JOB))
        assert (await peer.next()).type is PacketType.PRE_SLEEP
        with pytest.raises(trio.TooSlowError):
            await peer.next(timeout=0.3)  # asleep: no polling
        script.append("slept")
        await peer.send(Packet.res(PacketType.NOOP))
        assert (await peer.next()).type is PacketType.GRAB_JOB_UNIQ
        await peer.send(Packet.res(PacketType.JOB_ASSIGN_UNIQ, b"H:1", b"f", b"u", b"data"))
        done = await peer.next()
        assert done == Packet.req(PacketType.WORK_COMPLETE, b"H:1", b"atad")
        script.append("completed")
        finished.set()
        await trio.sleep_forever()

    async def rev(job: Job) -> bytes:
        return job.data[::-1]

    with trio.fail_after(10):
        async with FakeServer(handler).serving() as fake:
            worker = AsyncWorker(fake.address, client_id="w")
            worker.add_function("f", rev, timeout=2.5)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker.work_forever)
                await finished.wait()
                nursery.cancel_scope.cancel()
    assert script == ["slept", "completed"]


async def test_a_slot_freed_by_no_job_grabs_again_once_a_job_comes_after_all() -> None:
    """Pipelined grabs answered NO_JOB, then JOB_ASSIGN (the jobs arrived between them):
    the slot the NO_JOB freed stayed idle, and the worker neither grabbed nor slept, so
    no NOOP could come. Seen against the reference server under CI: the fourth of four
    jobs waited until the first three gave up."""
    finished = trio.Event()
    release = trio.Event()

    async def handler(peer: FakePeer) -> None:
        assert (await peer.next()).type is PacketType.CAN_DO
        for _ in range(2):
            assert (await peer.next()).type is PacketType.GRAB_JOB_UNIQ
        await peer.send(Packet.res(PacketType.NO_JOB))
        await peer.send(Packet.res(PacketType.JOB_ASSIGN_UNIQ, b"H:1", b"f", b"", b"a"))
        again = await peer.next(timeout=2)  # the slot the NO_JOB freed
        assert again.type is PacketType.GRAB_JOB_UNIQ
        await peer.send(Packet.res(PacketType.JOB_ASSIGN_UNIQ, b"H:2", b"f", b"", b"b"))
        done = set()
        while len(done) < 2:  # (with the grabs of the slots the jobs free)
            packet = await peer.next()
            if packet.type is PacketType.WORK_COMPLETE:
                done.add(packet.args)
        assert done == {(b"H:1", b"a"), (b"H:2", b"b")}
        finished.set()
        await trio.sleep_forever()

    async def both(job: Job) -> bytes:
        if job.data == b"b":
            release.set()
        await release.wait()  # done only once both run at the same time
        return job.data

    with trio.fail_after(10):
        async with FakeServer(handler).serving() as fake, running_worker(
                fake.address, {"f": both}, concurrency=2):
            await finished.wait()


async def test_idle_worker_picks_up_a_later_job(server: Any) -> None:
    with trio.fail_after(10):
        async with running_worker(addr(server), {"late": _reverse}):
            await wait_for_workers(addr(server), "late")
            await trio.sleep(0.2)  # the worker is asleep (PRE_SLEEP) by now
            async with AsyncClient(addr(server)) as client:
                with trio.fail_after(2):
                    assert await client.do("late", b"abc") == b"cba"


async def _reverse(job: Job) -> bytes:
    return job.data[::-1]


async def test_remove_function_sends_cant_do(server: Any) -> None:
    with trio.fail_after(10):
        async with running_worker(addr(server), {"a": _reverse, "b": _reverse}) as worker:
            await wait_for_workers(addr(server), "b")
            worker.remove_function("b")
            worker.add_function("c", _reverse)

            async def changed() -> bool:
                async with AsyncAdmin(addr(server)) as admin:
                    rows = {r.function: r.workers for r in await admin.status()}
                # Ours frees a function nothing refers to any more; the reference
                # keeps it with 0 workers.
                return rows.get(b"b", 0) == 0 and rows.get(b"c") == 1

            await wait_until(changed)
            async with AsyncClient(addr(server)) as client:
                assert await client.do("c", b"xy") == b"yx"
            assert worker.functions == [b"a", b"c"]


async def test_timeout_fails_the_job_or_requeues_it(server: Any) -> None:
    # decisions.md "Job life": ours fails a job past its CAN_DO_TIMEOUT (the client hears
    # WORK_FAIL); the 1.1.20 reference gives it to another worker.
    ours = server.kind == "ours"
    calls: list[str] = []

    async def first(job: Job) -> bytes:
        calls.append("first")
        await trio.sleep(5)
        return b"late"

    async def second(job: Job) -> bytes:
        calls.append("second")
        return b"in time"

    with trio.fail_after(10):
        async with AsyncClient(addr(server)) as client:
            slow = AsyncWorker(addr(server))
            slow.add_function("t", first, timeout=1)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow.work_forever)
                await wait_for_workers(addr(server), "t")
                task = client.add_task("t", b"x")
                async with trio.open_nursery() as inner:
                    inner.start_soon(client.run_tasks)
                    await wait_until(lambda: _true(calls == ["first"]))
                    # The reference was seen not to wake a sleeping worker after a
                    # CAN_DO_TIMEOUT requeue: the fast worker also polls.
                    fast = AsyncWorker(addr(server), idle_poll=0.5)
                    fast.add_function("t", second)
                    inner.start_soon(fast.work_forever)
                    if ours:
                        with pytest.raises(JobFailedError):
                            await task.wait()
                    else:
                        await task.wait()
                    inner.cancel_scope.cancel()
                nursery.cancel_scope.cancel()
    if ours:
        assert calls == ["first"]
        return
    assert task.result == b"in time"
    # The reference's CAN_DO_TIMEOUT timer is not cancelled when a job ends (§2.7): a stale
    # timer may take the job back once more, so "second" can run twice there.
    assert calls[:2] == ["first", "second"] and set(calls[2:]) <= {"second"}


async def _true(value: bool) -> bool:
    return value


async def test_exception_packet_fail_option(server: Any) -> None:
    def raises(job: Job) -> bytes:
        raise ValueError("x")

    with trio.fail_after(10):
        async with running_worker(
            addr(server), {"r": raises}, exception_packet="fail"
        ), AsyncClient(addr(server)) as client:
            with pytest.raises(JobFailedError) as failed:
                await client.do("r", b"")
            assert type(failed.value) is JobFailedError


async def test_reconnects_with_backoff_and_registers_again(start_server: Any) -> None:
    srv = start_server("reference")
    port = srv.port
    with trio.fail_after(20):
        async with running_worker(
            addr(srv), {"again": _reverse}, reconnect_delay=0.1, reconnect_max=0.5
        ):
            await wait_for_workers(addr(srv), "again")
            await trio.to_thread.run_sync(srv.stop)
            await trio.sleep(0.3)
            again = await trio.to_thread.run_sync(_restart_on, start_server, port)
            assert again.port == port
            await wait_for_workers(addr(again), "again")
            async with AsyncClient(addr(again)) as client:
                assert await client.do("again", b"123") == b"321"


def _restart_on(start_server: Any, port: int) -> Any:
    import conftest

    original = conftest.free_port
    conftest.free_port = lambda: port
    try:
        return start_server("reference")
    finally:
        conftest.free_port = original


async def test_no_server_means_backoff_not_a_busy_loop(caplog: pytest.LogCaptureFixture) -> None:
    dead = f"127.0.0.1:{free_port()}"
    caplog.set_level(logging.DEBUG, logger="gearman_cli.worker")
    with trio.fail_after(5):
        worker = AsyncWorker(dead, reconnect_delay=0.05, reconnect_max=0.2)
        worker.add_function("f", _reverse)
        with trio.move_on_after(0.8):
            await worker.work_forever()
    attempts = [r for r in caplog.records if "cannot connect" in r.getMessage()]
    # 0.05, 0.1, 0.2, 0.2, ... (±20 %): about 5 attempts in 0.8 s, never hundreds.
    assert 2 <= len(attempts) <= 8
    # ... and at most one warning per second.
    assert sum(r.levelno == logging.WARNING for r in attempts) == 1


WORKER_SCRIPT = """
import sys, time
from gearman_cli import Worker

def slow(job):
    print("started", job.handle.decode(), flush=True)
    time.sleep(60)
    return b"never"

worker = Worker(sys.argv[1])
worker.add_function("doomed", slow)
worker.work_forever()
"""


async def test_worker_killed_mid_job_the_job_completes_elsewhere(server: Any) -> None:
    with trio.fail_after(20):
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", WORKER_SCRIPT, addr(server)],
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        try:
            await wait_for_workers(addr(server), "doomed")
            async with AsyncClient(addr(server)) as client:
                task = client.add_task("doomed", b"payload")
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client.run_tasks)
                    assert proc.stdout is not None
                    line = await proc.stdout.receive_some(1000)
                    assert line.startswith(b"started")
                    proc.kill()
                    await proc.wait()
                    async with running_worker(addr(server), {"doomed": _reverse}):
                        assert await task.wait() == b"daolyap"
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


async def test_idle_poll_grabs_again_without_a_noop() -> None:
    grabs_after_sleep = trio.Event()

    async def handler(peer: FakePeer) -> None:
        assert (await peer.next()).type is PacketType.CAN_DO
        for _ in range(2):
            assert (await peer.next()).type is PacketType.GRAB_JOB_UNIQ
            await peer.send(Packet.res(PacketType.NO_JOB))
            assert (await peer.next()).type is PacketType.PRE_SLEEP
        grabs_after_sleep.set()
        await trio.sleep_forever()

    with trio.fail_after(5):
        async with FakeServer(handler).serving() as fake, running_worker(
                fake.address, {"f": _reverse}, idle_poll=0.2):
            await grabs_after_sleep.wait()


async def test_grabs_are_pipelined_and_pre_sleep_waits_for_every_answer() -> None:
    """concurrency=3: three GRABs in one go; an empty answer does not put the worker to
    sleep while other GRABs are out; a job that comes after an empty answer keeps it
    grabbing, with the slot the empty answer freed at once; PRE_SLEEP only once every
    outstanding GRAB came back empty."""
    finished = trio.Event()
    seen: list[PacketType] = []

    async def handler(peer: FakePeer) -> None:
        assert (await peer.next()).type is PacketType.CAN_DO
        for _ in range(3):
            assert (await peer.next()).type is PacketType.GRAB_JOB_UNIQ
        await peer.send(
            Packet.res(PacketType.NO_JOB),
            Packet.res(PacketType.JOB_ASSIGN_UNIQ, b"H:1", b"f", b"", b"one"),
        )
        # A GRAB for the slot the empty answer freed (a job came after it), the job's
        # result, a GRAB for the slot the job freed (no PRE_SLEEP: GRABs are still out).
        while len(seen) < 3:
            seen.append((await peer.next()).type)
        await peer.send(*[Packet.res(PacketType.NO_JOB)] * 3)
        seen.append((await peer.next()).type)
        with pytest.raises(trio.TooSlowError):
            await peer.next(timeout=0.3)  # asleep: no more grabs
        finished.set()
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with FakeServer(handler).serving() as fake, running_worker(
                fake.address, {"f": _reverse}, concurrency=3):
            await finished.wait()
    assert seen == [
        PacketType.GRAB_JOB_UNIQ,
        PacketType.WORK_COMPLETE,
        PacketType.GRAB_JOB_UNIQ,
        PacketType.PRE_SLEEP,
    ]


async def test_job_sequence_is_the_assignment_order_and_inline_runs_in_it(
    server: Any,
) -> None:
    n = 50
    inline_seen: list[tuple[int, bytes]] = []
    async_seen: list[tuple[int, bytes]] = []

    def inline(job: Job) -> bytes:
        inline_seen.append((job.sequence, job.data))
        return job.data[::-1]

    async def in_task(job: Job) -> bytes:
        async_seen.append((job.sequence, job.data))
        return job.data

    with trio.fail_after(15):
        async with AsyncClient(addr(server)) as client:
            for i in range(n):
                await client.do_background("seq_inline", b"%d" % i)
                await client.do_background("seq_task", b"%d" % i)
        worker = AsyncWorker(addr(server), concurrency=8)
        worker.add_function("seq_inline", inline, inline=True)
        worker.add_function("seq_task", in_task)
        assert await worker.work(2 * n) == 2 * n
    # Inline callbacks run one after another in assignment order; task callbacks may
    # start in any order, but their sequence numbers still give the assignment order.
    assert [seq for seq, _ in inline_seen] == sorted(seq for seq, _ in inline_seen)
    both = sorted(inline_seen + async_seen)
    assert [seq for seq, _ in both] == list(range(2 * n))
    assert sorted(int(d) for _, d in inline_seen) == list(range(n))
    assert [d for _, d in sorted(inline_seen)] == [b"%d" % i for i in range(n)]


def test_inline_needs_a_plain_function() -> None:
    worker = AsyncWorker("127.0.0.1:1")
    with pytest.raises(ValueError, match="inline"):
        worker.add_function("f", _reverse, inline=True)


async def test_inline_callback_results_and_exceptions(server: Any) -> None:
    def inline(job: Job) -> bytes:
        if job.data == b"boom":
            raise ValueError("inline boom")
        return job.data[::-1]

    with trio.fail_after(10):
        worker = AsyncWorker(addr(server))
        worker.add_function("inl", inline, inline=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.work_forever)
            async with AsyncClient(addr(server)) as client:
                assert await client.do("inl", b"abc") == b"cba"
                with pytest.raises(JobFailedError):
                    await client.do("inl", b"boom")
            nursery.cancel_scope.cancel()


async def test_work_forever_returns_after_stop(server: Any) -> None:
    with trio.fail_after(10):
        worker = AsyncWorker(addr(server))
        worker.add_function("stopper", _reverse)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.work_forever)
            await wait_for_workers(addr(server), "stopper")
            worker.stop()
        # Reaching this line means work_forever returned (no AssertionError, no hang).
        worker.stop()
        await worker.work_forever()  # a pending stop() makes the next run return at once

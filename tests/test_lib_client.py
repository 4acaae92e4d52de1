"""The trio client against a real gearmand: one job, many pipelined tasks, callbacks,
status, failures, big and binary payloads, scheduled jobs, and a scripted fake server
for pipelining and reply matching."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

from gearman_cli import (
    AsyncClient,
    AsyncWorker,
    Job,
    JobExceptionError,
    JobFailedError,
    NoServerError,
    ServerError,
    Task,
    TaskState,
)
from protocol import Packet, PacketType, Priority
from tests.lib_support import FakePeer, FakeServer, addr, running_worker, wait_until


@pytest.fixture
def server(any_server: Any) -> Any:
    """The server these tests run against: ours and the reference (``reference_server``
    for the reference alone)."""
    return any_server


async def reverse(job: Job) -> bytes:
    return job.data[::-1]


async def test_hello_world_reverse(server: Any) -> None:
    with trio.fail_after(10):
        async with running_worker(addr(server), {"reverse": reverse}), AsyncClient(
            addr(server)
        ) as client:
            assert await client.do("reverse", b"Hello") == b"olleH"
            assert await client.do_high("reverse", "abc") == b"cba"
            assert await client.do_low("reverse", b"xyz", unique="u1") == b"zyx"


async def test_priorities_pick_the_submit_packet(server: Any) -> None:
    """Queued before any worker exists, HIGH runs before NORMAL before LOW."""
    order: list[bytes] = []

    async def record(job: Job) -> bytes:
        order.append(job.data)
        return b""

    with trio.fail_after(10):
        async with AsyncClient(addr(server)) as client:
            await client.do_low_background("prio", b"low")
            await client.do_background("prio", b"normal")
            await client.do_high_background("prio", b"high")
            async with running_worker(addr(server), {"prio": record}):
                await wait_until(_len_is(order, 3))
    assert order == [b"high", b"normal", b"low"]


def _len_is(items: list[Any], n: int) -> Any:
    async def check() -> bool:
        return len(items) >= n

    return check


async def test_background_job_status_and_status_task(server: Any) -> None:
    release = trio.Event()
    started = trio.Event()

    async def slow(job: Job) -> bytes:
        job.send_status(1, 4)
        started.set()
        await release.wait()
        return b"done"

    with trio.fail_after(10):
        async with AsyncClient(addr(server)) as client:
            handle = await client.do_background("slow", b"x", unique="bg-1")
            assert handle
            queued = await client.job_status(handle)
            assert queued.known and not queued.running
            assert (queued.numerator, queued.denominator) == (0, 0)
            by_unique = await client.job_status_unique("bg-1")
            assert by_unique.known and by_unique.waiting == 0
            async with running_worker(addr(server), {"slow": slow}):
                await started.wait()

                async def running() -> bool:
                    status = await client.job_status(handle)
                    return status.running and status.numerator == 1

                await wait_until(running)
                status_task = client.add_task_status(handle)
                seen: list[Task] = []
                await client.run_tasks(on_status=seen.append)
                assert seen == [status_task]
                assert status_task.status == (True, True, 1, 4, None)
                release.set()

                async def gone() -> bool:
                    return not (await client.job_status(handle)).known

                await wait_until(gone)
            unknown = await client.job_status(b"H:nowhere:1")
            assert unknown == (False, False, 0, 0, None)


async def test_fail_and_exception_raise_and_worker_keeps_running(server: Any) -> None:
    def fails(job: Job) -> None:
        job.send_fail()

    def raises(job: Job) -> bytes:
        raise ValueError("bad input")

    with trio.fail_after(10):
        async with running_worker(
            addr(server), {"fails": fails, "raises": raises, "reverse": reverse}
        ), AsyncClient(addr(server)) as client:
            with pytest.raises(JobFailedError) as failed:
                await client.do("fails", b"x")
            assert not isinstance(failed.value, JobExceptionError)
            with pytest.raises(JobExceptionError) as raised:
                await client.do("raises", b"x")
            assert raised.value.data == b"ValueError: bad input"
            assert await client.do("reverse", b"still alive") == b"evila llits"


async def test_exception_without_the_option_is_a_failure(server: Any) -> None:
    """A client that did not ask for exceptions gets WORK_FAIL (the reference appends a
    NUL to that handle, §1.3); it must not hang."""

    def raises(job: Job) -> bytes:
        raise RuntimeError("boom")

    with trio.fail_after(10):
        async with running_worker(addr(server), {"raises": raises}), AsyncClient(
            addr(server), exceptions=False
        ) as client:
            with pytest.raises(JobFailedError) as failed:
                await client.do("raises", b"x")
            assert not isinstance(failed.value, JobExceptionError)


async def test_run_tasks_callbacks_and_app_data(server: Any) -> None:
    async def chatty(job: Job) -> bytes:
        if job.data == b"fail":
            job.send_fail()
            return b""
        if job.data == b"raise":
            raise KeyError("k")
        job.send_data(b"d1")
        job.send_warning(b"w1")
        job.send_status(2, 3)
        job.send_data(b"d2")
        return b"result:" + job.data

    events: list[tuple[str, Any, bytes]] = []

    def on(name: str) -> Any:
        return lambda t: events.append((name, t.app_data, _last(name, t)))

    with trio.fail_after(10):
        async with running_worker(addr(server), {"chatty": chatty}), AsyncClient(
            addr(server)
        ) as client:
            ok = client.add_task("chatty", b"ok", app_data="A")
            failing = client.add_task_high("chatty", b"fail", app_data="B")
            raising = client.add_task_low("chatty", b"raise", app_data="C")
            tasks = await client.run_tasks(
                on_created=on("created"),
                on_data=on("data"),
                on_warning=on("warning"),
                on_status=on("status"),
                on_complete=on("complete"),
                on_fail=on("fail"),
                on_exception=on("exception"),
            )
    assert tasks == [ok, failing, raising]
    assert ok.state is TaskState.COMPLETE and ok.result == b"result:ok"
    assert ok.data_chunks == [b"d1", b"d2"] and ok.warnings == [b"w1"]
    assert (ok.numerator, ok.denominator) == (2, 3)
    assert failing.state is TaskState.FAILED
    assert raising.state is TaskState.EXCEPTION and raising.exception == b"KeyError: 'k'"
    a_events = [(n, v) for n, app, v in events if app == "A"]
    assert a_events == [
        ("created", ok.handle),
        ("data", b"d1"),
        ("warning", b"w1"),
        ("status", b"2/3"),
        ("data", b"d2"),
        ("complete", b"result:ok"),
    ]
    assert [n for n, app, _ in events if app == "B"] == ["created", "fail"]
    assert [n for n, app, _ in events if app == "C"] == ["created", "exception"]
    with pytest.raises(JobFailedError):
        failing.outcome()


def _last(name: str, task: Task) -> bytes:
    if name == "created":
        return task.handle or b""
    if name == "data":
        return task.data_chunks[-1]
    if name == "warning":
        return task.warnings[-1]
    if name == "status":
        return f"{task.numerator}/{task.denominator}".encode()
    if name == "complete":
        return task.result or b""
    return b""


async def test_ten_thousand_pipelined_tasks(server: Any) -> None:
    with trio.fail_after(30):
        async with running_worker(
            addr(server), {"reverse": reverse}, concurrency=32
        ), AsyncClient(addr(server)) as client:
            tasks = [client.add_task("reverse", b"%05d" % i) for i in range(10_000)]
            done = await client.run_tasks()
    assert done == tasks
    assert all(t.state is TaskState.COMPLETE for t in tasks)
    assert all(t.result == (b"%05d" % i)[::-1] for i, t in enumerate(tasks))
    assert len({t.handle for t in tasks}) == 10_000


async def test_sixteen_mib_and_binary_payloads(server: Any) -> None:
    big = bytes(range(256)) * (16 * 1024 * 1024 // 256)
    binary = b"\0a\0\0b\xff\0"

    async def echo(job: Job) -> bytes:
        job.send_data(job.data[:5])
        return job.data

    with trio.fail_after(30):
        async with running_worker(addr(server), {"echo": echo}), AsyncClient(
            addr(server)
        ) as client:
            assert await client.do("echo", binary) == binary
            assert await client.do("echo", b"") == b""
            task = Task("echo", big)
            await client.submit(task)
            assert await task.wait() == big
            assert task.data_chunks == [big[:5]]
            assert await client.echo(binary) == binary


async def test_unique_jobs_coalesce(server: Any) -> None:
    runs: list[bytes] = []
    both_created = trio.Event()

    async def once(job: Job) -> bytes:
        runs.append(job.unique)
        await both_created.wait()
        return b"shared"

    created: list[Task] = []

    def on_created(task: Task) -> None:
        created.append(task)
        if len(created) == 2:
            both_created.set()

    with trio.fail_after(10):
        async with running_worker(addr(server), {"once": once}), AsyncClient(
            addr(server)
        ) as client:
            a = client.add_task("once", b"1", unique="same-key")
            b = client.add_task("once", b"2", unique="same-key")
            await client.run_tasks(on_created=on_created)
    assert a.handle == b.handle
    assert a.result == b.result == b"shared"
    assert runs == [b"same-key"]


async def test_scheduled_epoch_job_waits_for_its_time(server: Any) -> None:
    ran_at: list[float] = []

    async def record(job: Job) -> bytes:
        ran_at.append(time.time())
        return b""

    with trio.fail_after(10):
        async with AsyncClient(addr(server)) as client:
            when = int(time.time()) + 2
            handle = await client.do_background("sched", b"later", when=when)
            assert handle
            with pytest.raises(ValueError):
                Task("sched", b"", when=when)  # an epoch job must be a background job
            async with running_worker(addr(server), {"sched": record}):
                await trio.sleep(0.5)
                assert ran_at == []
                # The 1.1.20 reference wakes nobody when an epoch job falls due (§2.5),
                # so poke sleeping workers with another job once it is due.
                await trio.sleep(max(0.0, when - time.time()) + 0.2)
                await client.do_background("sched", b"poke")
                await wait_until(_len_is(ran_at, 2))
    assert min(ran_at) >= when


async def test_dead_server_is_skipped_and_all_dead_raises(server: Any) -> None:
    from conftest import free_port

    dead = f"127.0.0.1:{free_port()}"
    with trio.fail_after(10):
        async with running_worker(addr(server), {"reverse": reverse}):
            async with AsyncClient(f"{dead},{addr(server)}") as client:
                for i in range(4):  # round-robin would hit the dead one half the time
                    assert await client.do("reverse", b"ab%d" % i) == b"%dba" % i
                    assert await client.do("reverse", b"k", unique=f"key{i}") == b"k"
            async with AsyncClient(dead) as client:
                with pytest.raises(NoServerError):
                    await client.do("reverse", b"x")
                task = client.add_task("reverse", b"x")
                await client.run_tasks()
                assert task.state is TaskState.ERROR
                assert isinstance(task.error, NoServerError)


async def test_failover_when_a_server_stops_mid_run(start_server: Any) -> None:
    first = start_server("reference")
    second = start_server("reference")
    both = f"{addr(first)},{addr(second)}"

    async def slow_reverse(job: Job) -> bytes:
        await trio.sleep(0.005)
        return job.data[::-1]

    completed = 0
    stopped = trio.Event()

    def on_complete(task: Task) -> None:
        nonlocal completed
        completed += 1
        if completed == 40:
            stopped.set()

    with trio.fail_after(30):
        async with running_worker(
            both, {"rev": slow_reverse}, concurrency=4, reconnect_max=1.0
        ), AsyncClient(both) as client:
            tasks = [client.add_task("rev", b"job%03d" % i) for i in range(200)]
            tasks += [client.add_task("rev", b"u%03d" % i, unique=f"u{i}") for i in range(40)]
            async with trio.open_nursery() as nursery:

                async def stop_first() -> None:
                    await stopped.wait()
                    await trio.to_thread.run_sync(first.stop)

                nursery.start_soon(stop_first)
                await client.run_tasks(on_complete=on_complete)
            assert stopped.is_set()
            assert [t.state for t in tasks] == [TaskState.COMPLETE] * len(tasks)
            assert all(t.result == t.data[::-1] for t in tasks)
            assert any(t.server is not None and t.server.port == second.port for t in tasks)
            # Tasks the stopped server held were resubmitted to the other one.
            assert any(t.attempts > 1 for t in tasks)
            # The stopped server is skipped from now on.
            assert await client.do("rev", b"after") == b"retfa"


async def test_server_error_fails_the_task(server: Any) -> None:
    with trio.fail_after(10):
        async with AsyncClient(addr(server)) as client:
            with pytest.raises(ServerError) as error:
                await client.do_background("f", b"x", unique="u" * 65)
            assert error.value.code == "ARGUMENT_TOO_LARGE"
            # The connection keeps working after an ERROR.
            assert await client.echo(b"ok") == b"ok"


# -- a scripted server: pipelining and reply matching, independent of any gearmand --


async def test_submissions_are_pipelined_and_matched_fifo_then_by_handle() -> None:
    """The fake server reads all N submissions before answering anything (a client that
    waited for JOB_CREATED per task would deadlock), then completes them in reverse."""
    n = 500

    async def handler(peer: FakePeer) -> None:
        first = await peer.next()
        assert first.type is PacketType.OPTION_REQ
        await peer.send(Packet.res(PacketType.OPTION_RES, b"exceptions"))
        submits = [await peer.next() for _ in range(n)]
        assert {p.type for p in submits} == {PacketType.SUBMIT_JOB}
        await peer.send(
            *(Packet.res(PacketType.JOB_CREATED, b"H:fake:%d" % i) for i in range(n))
        )
        await peer.send(
            *(
                Packet.res(PacketType.WORK_COMPLETE, b"H:fake:%d" % i, submits[i].args[2] + b"!")
                for i in reversed(range(n))
            )
        )
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with FakeServer(handler).serving() as fake, AsyncClient(fake.address) as client:
            tasks = [client.add_task("f", b"%d" % i) for i in range(n)]
            await client.run_tasks()
    assert [t.handle for t in tasks] == [b"H:fake:%d" % i for i in range(n)]
    assert [t.result for t in tasks] == [b"%d!" % i for i in range(n)]


async def test_connection_lost_before_job_created_resubmits_elsewhere(
    server: Any,
) -> None:
    """A server that accepts submissions and then drops the connection: the tasks go to
    the other server."""

    async def handler(peer: FakePeer) -> None:
        await peer.next()  # OPTION_REQ
        await peer.next()  # SUBMIT_JOB
        # ... and close without answering.

    with trio.fail_after(10):
        async with FakeServer(handler).serving() as fake, running_worker(
            addr(server), {"reverse": reverse}
        ), AsyncClient(f"{fake.address},{addr(server)}") as client:
            tasks = [client.add_task("reverse", b"t%d" % i) for i in range(6)]
            await client.run_tasks()
            assert [t.result for t in tasks] == [b"%dt" % i for i in range(6)]
            assert all(t.server is not None and t.server.port == server.port for t in tasks)
            assert fake.connections == 1  # in back-off, not retried at once


async def test_cancelled_while_waiting_leaves_cleanly() -> None:
    """Leaving ``async with AsyncClient`` because of a cancellation must not hang."""

    async def silent(peer: FakePeer) -> None:
        await trio.sleep_forever()

    with trio.fail_after(5):
        async with FakeServer(silent).serving() as fake:
            with trio.move_on_after(0.2) as scope:
                async with AsyncClient(fake.address) as client:
                    await client.do("f", b"x")
            assert scope.cancelled_caught


# -- background batches --


async def test_background_batch_queues_every_payload_in_order(server: Any) -> None:
    payloads = [b"line %d\n" % i for i in range(2000)] + [b"", b"nul\0inside"]
    seen: list[tuple[int, bytes]] = []
    with trio.fail_after(20):
        async with AsyncClient(addr(server)) as client:
            batch = await client.submit_background_batch(
                "batch_fn",
                payloads,
                priority=Priority.HIGH,
                on_created=lambda b, i, h: seen.append((i, h)),
            )
            assert await batch.wait() is batch
            assert batch.successful and batch.answered == len(payloads)
            assert all(h is not None for h in batch.handles)
            assert [i for i, _ in seen] == list(range(len(payloads)))
            assert [h for _, h in seen] == batch.handles
            status = await client.job_status(batch.handles[0] or b"")
            assert status.known and not status.running
        got: list[bytes] = []

        async def take(job: Job) -> bytes:
            got.append(job.data)
            return b""

        worker = AsyncWorker(addr(server))
        worker.add_function("batch_fn", take)
        assert await worker.work(len(payloads)) == len(payloads)
    assert got == payloads  # one worker, one queue: first in, first out


async def test_background_batch_error_reply_lands_on_its_payload() -> None:
    async def handler(peer: FakePeer) -> None:
        assert (await peer.next()).type is PacketType.OPTION_REQ
        await peer.send(Packet.res(PacketType.OPTION_RES, b"exceptions"))
        submits = [await peer.next() for _ in range(3)]
        assert [p.type for p in submits] == [PacketType.SUBMIT_JOB_LOW_BG] * 3
        assert [p.args for p in submits] == [(b"f", b"u", b"%d" % i) for i in range(3)]
        await peer.send(
            Packet.res(PacketType.JOB_CREATED, b"H:0"),
            Packet.res(PacketType.ERROR, b"QUEUE_ERROR", b"full"),
            Packet.res(PacketType.JOB_CREATED, b"H:2"),
        )
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with FakeServer(handler).serving() as fake, AsyncClient(fake.address) as client:
            batch = await client.submit_background_batch(
                "f", [b"0", b"1", b"2"], unique="u", priority=Priority.LOW
            )
            await batch.wait()
    assert batch.handles == [b"H:0", None, b"H:2"]
    assert [(i, type(e), str(e)) for i, e in batch.errors] == [
        (1, ServerError, "QUEUE_ERROR: full")
    ]
    assert not batch.successful


async def test_background_batch_unanswered_jobs_go_to_another_server(server: Any) -> None:
    """The first server answers two of five submissions and drops the connection: the
    other three are resubmitted to the next server."""

    async def handler(peer: FakePeer) -> None:
        await peer.next()  # OPTION_REQ
        await peer.send(Packet.res(PacketType.OPTION_RES, b"exceptions"))
        for _ in range(5):
            await peer.next()
        await peer.send(
            Packet.res(PacketType.JOB_CREATED, b"H:fake:0"),
            Packet.res(PacketType.JOB_CREATED, b"H:fake:1"),
        )

    with trio.fail_after(10):
        async with FakeServer(handler).serving() as fake, AsyncClient(
            f"{fake.address},{addr(server)}"
        ) as client:
            batch = await client.submit_background_batch(
                "failover_bg", [b"%d" % i for i in range(5)]
            )
            await batch.wait()
            assert batch.successful
            assert batch.handles[:2] == [b"H:fake:0", b"H:fake:1"]
            assert all(h and not h.startswith(b"H:fake") for h in batch.handles[2:])
            got: list[bytes] = []

            async def take(job: Job) -> bytes:
                got.append(job.data)
                return b""

            worker = AsyncWorker(addr(server))
            worker.add_function("failover_bg", take)
            assert await worker.work(3) == 3
    assert got == [b"2", b"3", b"4"]


async def test_background_batch_without_a_server_fails_every_payload() -> None:
    from conftest import free_port

    with trio.fail_after(10):
        async with AsyncClient(f"127.0.0.1:{free_port()}") as client:
            batch = await client.submit_background_batch("f", [b"a", b"b"])
            await batch.wait()
    assert batch.handles == [None, None]
    assert [i for i, _ in batch.errors] == [0, 1]
    assert all(isinstance(e, NoServerError) for _, e in batch.errors)

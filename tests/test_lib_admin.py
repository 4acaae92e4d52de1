"""The admin helper against a real gearmand, plus a scripted server that answers slowly
(replies are read to their terminator, never cut at a silence)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from gearman_cli import (
    AdminError,
    AsyncAdmin,
    AsyncClient,
    Job,
    ServerError,
)
from tests.lib_support import FakeServer, addr, running_worker, wait_for_workers


@pytest.fixture
def server(any_server: Any) -> Any:
    """The server these tests run against: ours and the reference (``reference_server``
    for the reference alone)."""
    return any_server


async def _noop(job: Job) -> bytes:
    return b""


async def test_status_workers_priority_and_jobs(server: Any) -> None:
    with trio.fail_after(10):
        async with AsyncClient(addr(server)) as client:
            h1 = await client.do_high_background("adm", b"1", unique="one")
            await client.do_background("adm", b"2", unique="two")
            await client.do_low_background("adm", b"3")
            await client.do_low_background("adm", b"4")
        async with AsyncAdmin(addr(server)) as admin:
            status = {r.function: r for r in await admin.status()}
            assert (status[b"adm"].total, status[b"adm"].running) == (4, 0)
            assert status[b"adm"].workers == 0
            prio = {r.function: r for r in await admin.prioritystatus()}
            assert (prio[b"adm"].high, prio[b"adm"].normal, prio[b"adm"].low) == (1, 1, 2)
            jobs = await admin.show_jobs()
            assert h1 in {j.handle for j in jobs}
            assert all(j.queued and not j.ignore and j.retries == 0 for j in jobs)
            uniques = await admin.show_unique_jobs()
            assert {b"one", b"two"} <= set(uniques)
            async with running_worker(addr(server), {"adm": _noop, "other": _noop}):
                await wait_for_workers(addr(server), "other")
                workers = await admin.workers()
                mine = [w for w in workers if b"adm" in w.functions]
                assert len(mine) == 1 and set(mine[0].functions) == {b"adm", b"other"}
                assert mine[0].address == b"127.0.0.1"


async def test_version_getpid_verbose(server: Any) -> None:
    with trio.fail_after(10):
        async with AsyncAdmin(addr(server)) as admin:
            version = await admin.version()
            assert version and "\n" not in version
            assert await admin.getpid() == server.proc.pid
            assert await admin.verbose() in {
                "FATAL", "ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFO", "DEBUG",
            }


async def test_cancel_create_drop_and_errors(server: Any) -> None:
    with trio.fail_after(10):
        async with AsyncClient(addr(server)) as client:
            handle = await client.do_background("cancelme", b"x")
        async with AsyncAdmin(addr(server)) as admin:
            await admin.cancel_job(handle)
            with pytest.raises(AdminError, match="UNKNOWN_JOB"):
                await admin.cancel_job("H:nope:99")
            await admin.create_function("madeup")
            assert b"madeup" in {r.function for r in await admin.status()}
            await admin.drop_function("madeup")
            assert b"madeup" not in {r.function for r in await admin.status()}
            with pytest.raises(AdminError, match="function not found"):
                await admin.drop_function("madeup")
            reply = await admin.raw("no_such_command")
            assert reply.kind == "err" and not reply.ok
            assert reply.lines[0].startswith(b"ERR UNKNOWN_COMMAND")
            with pytest.raises(AdminError):
                await admin.command("show nonsense")
            # The connection is still usable after ERR replies.
            assert await admin.getpid() == server.proc.pid


async def test_maxqueue_limits_submissions(server: Any) -> None:
    with trio.fail_after(10):
        async with AsyncAdmin(addr(server)) as admin, AsyncClient(addr(server)) as client:
            # The reference ignores maxqueue for a function it does not know yet (§3.2).
            await client.do_background("limited", b"1")
            await admin.maxqueue("limited", 1)
            with pytest.raises(ServerError) as full:
                await client.do_background("limited", b"2")
            assert full.value.code == "QUEUE_ERROR"
            await admin.maxqueue("limited")  # back to unlimited
            await client.do_background("limited", b"3")
            assert {r.function: r.total for r in await admin.status()}[b"limited"] == 2


async def test_shutdown(server: Any) -> None:
    with trio.fail_after(10):
        async with AsyncAdmin(addr(server)) as admin:
            if server.kind == "reference":
                # The C gearmand has no shutdown command (§2.12).
                with pytest.raises(AdminError, match="UNKNOWN_COMMAND"):
                    await admin.shutdown()
                return
            await admin.shutdown()
        await trio.to_thread.run_sync(server.proc.wait, 10)


async def test_long_list_read_to_its_terminator(server: Any) -> None:
    with trio.fail_after(10):
        async with AsyncAdmin(addr(server)) as admin:
            for i in range(300):
                await admin.create_function(f"fn{i:03d}")
            names = {r.function for r in await admin.status()}
            assert {f"fn{i:03d}".encode() for i in range(300)} <= names


async def test_slow_reply_is_not_cut_at_a_silence() -> None:
    async def handler(peer: Any) -> None:
        line = await peer.stream.receive_some(100)
        assert line == b"status\r\n"
        for chunk in (b"a\t1\t0", b"\t2\n", b"b\t0\t0\t0\n", b".", b"\n"):
            await peer.stream.send_all(chunk)
            await trio.sleep(0.05)  # far longer than gearadmin's 5 ms
        line = await peer.stream.receive_some(100)
        assert line == b"version\r\n"
        await peer.stream.send_all(b"OK 9.9\n")
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with FakeServer(handler).serving() as fake, AsyncAdmin(fake.address) as admin:
            rows = await admin.status()
            assert [(r.function, r.total, r.running, r.workers) for r in rows] == [
                (b"a", 1, 0, 2),
                (b"b", 0, 0, 0),
            ]
            assert await admin.version() == "9.9"

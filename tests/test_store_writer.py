"""StoreWriter: group commit, order, errors to add() callers, flush on cancellation."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from server.store import StoredJob, StoreError
from server.store.sqlite import SqliteStore
from server.store.writer import StoreWriter


class FakeStore:
    """Records every commit; can hold commits at a gate and fail chosen ones."""

    def __init__(self) -> None:
        self.commits: list[tuple[list[str], list[str]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_when: set[str] = set()  # a commit adding one of these keys fails
        self.fail_all = False
        self.closed = False
        self.jobs: dict[str, StoredJob] = {}
        self.entered = 0  # commits begun (counted before the gate)

    def commit(self, added: Sequence[StoredJob], done: Sequence[str]) -> None:
        self.entered += 1
        self.gate.wait(10)
        keys = [j.key for j in added]
        if self.fail_all or self.fail_when & set(keys):
            raise RuntimeError("disk on fire")
        self.commits.append((keys, list(done)))
        for j in added:
            self.jobs[j.key] = j
        for k in done:
            self.jobs.pop(k, None)

    def replay(self) -> list[StoredJob]:
        return list(self.jobs.values())

    def close(self) -> None:
        self.closed = True


def job(n: int | str) -> StoredJob:
    return StoredJob(key=f"k{n}", function=b"f", unique=b"", priority=1, data=b"d")


async def wait_until(predicate: object) -> None:
    while not predicate():  # type: ignore[operator]
        await trio.sleep(0.001)


async def test_concurrent_adds_are_grouped_into_few_commits() -> None:
    store = FakeStore()
    writer = StoreWriter(store)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            store.gate.clear()
            nursery.start_soon(writer.add, job(0))
            await trio.testing.wait_all_tasks_blocked()
            assert writer.pending == 0  # k0 is in a (held) commit
            async with trio.open_nursery() as adders:
                for n in range(1, 101):
                    adders.start_soon(writer.add, job(n))
                await wait_until(lambda: writer.pending == 100)
                store.gate.set()
            nursery.cancel_scope.cancel()
    # (trio starts the adder tasks in no particular order, so compare as sets)
    assert [(set(adds), dones) for adds, dones in store.commits] == [
        ({"k0"}, []), ({f"k{n}" for n in range(1, 101)}, [])]
    assert store.closed


async def test_operations_are_applied_in_the_order_issued() -> None:
    store = FakeStore()
    writer = StoreWriter(store, max_batch=3)
    issued: list[tuple[str, str]] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            store.gate.clear()
            for n in range(10):
                nursery.start_soon(writer.add, job(n))
                issued.append(("add", f"k{n}"))
                await trio.testing.wait_all_tasks_blocked()
                if n % 2:
                    writer.done(f"k{n - 1}")
                    issued.append(("done", f"k{n - 1}"))
            store.gate.set()
            await wait_until(lambda: writer.pending == 0 and len(store.jobs) == 5)
            nursery.cancel_scope.cancel()
    applied = [(op, k) for adds, dones in store.commits
               for op, ks in (("add", adds), ("done", dones)) for k in ks]
    # A batch applies its adds before its dones; a done never precedes its job's add,
    # and the adds keep their order.
    assert [k for op, k in applied if op == "add"] == [f"k{n}" for n in range(10)]
    assert [k for op, k in applied if op == "done"] == [k for op, k in issued if op == "done"]
    for op, k in applied:
        if op == "done":
            assert applied.index(("add", k)) < applied.index(("done", k))
    assert max(len(adds) for adds, _ in store.commits) <= 3
    assert sorted(store.jobs) == ["k1", "k3", "k5", "k7", "k9"]


async def test_a_failed_commit_fails_its_adders_and_the_writer_keeps_going() -> None:
    store = FakeStore()
    writer = StoreWriter(store)
    errors: list[str] = []

    async def add(n: int) -> None:
        try:
            await writer.add(job(n))
        except StoreError as exc:
            errors.append(f"k{n}: {exc}")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            store.gate.clear()
            nursery.start_soon(add, 0)
            await trio.testing.wait_all_tasks_blocked()
            assert writer.pending == 0  # the first add is in a (held) commit
            store.fail_when = {"k2"}
            async with trio.open_nursery() as adders:
                for n in (1, 2, 3):
                    adders.start_soon(add, n)
                await wait_until(lambda: writer.pending == 3)
                store.gate.set()
            store.fail_when = set()
            await writer.add(job(4))
            nursery.cancel_scope.cancel()
    assert sorted(errors) == [f"k{n}: RuntimeError: disk on fire" for n in (1, 2, 3)]
    assert sorted(store.jobs) == ["k0", "k4"]
    assert writer.failures == 1


async def test_removals_of_a_failed_commit_are_retried() -> None:
    store = FakeStore()
    writer = StoreWriter(store, retry_delay=0.01)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await writer.add(job(1))
            store.fail_all = True
            writer.done("k1")
            await wait_until(lambda: writer.failures >= 2)
            store.fail_all = False
            await wait_until(lambda: not store.jobs)
            nursery.cancel_scope.cancel()


async def test_cancellation_flushes_pending_operations_and_closes_the_store() -> None:
    store = FakeStore()
    writer = StoreWriter(store)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await writer.add(job(1))
            store.gate.clear()
            nursery.start_soon(writer.add, job(2))
            await trio.testing.wait_all_tasks_blocked()
            assert writer.pending == 0  # the first add is in a (held) commit
            writer.done("k1")
            nursery.cancel_scope.cancel()
            store.gate.set()
    assert store.commits[-1] == ([], ["k1"])
    assert list(store.jobs) == ["k2"]
    assert store.closed
    with pytest.raises(StoreError, match="closed"):
        await writer.add(job(3))


async def test_close_flushes_and_returns() -> None:
    store = FakeStore()
    writer = StoreWriter(store)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await writer.add(job(1))
            writer.done("k1")
            writer.close()
    assert store.jobs == {} and store.closed


async def test_with_sqlite_many_concurrent_adds_survive_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    writer = StoreWriter(SqliteStore(path))
    jobs = [job(n) for n in range(300)]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            async with trio.open_nursery() as adders:
                for j in jobs:
                    adders.start_soon(writer.add, j)
            for j in jobs[:100]:
                writer.done(j.key)
            nursery.cancel_scope.cancel()
    assert writer.commits < 50
    store = SqliteStore(path)
    assert sorted(j.key for j in store.replay()) == sorted(j.key for j in jobs[100:])
    store.close()


async def test_abandon_gives_up_on_a_store_that_hangs() -> None:
    """At shutdown a commit that never returns must not keep the server alive."""
    store = FakeStore()
    store.gate.clear()  # every commit blocks (up to 10 s)
    writer = StoreWriter(store)
    errors: list[StoreError | None] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            writer.add_nowait(job(1), errors.append)
            writer.add_nowait(job(2), errors.append)
            await wait_until(lambda: store.entered)  # the first commit is stuck in its thread
            writer.close()
            await trio.testing.wait_all_tasks_blocked()  # all that close() alone does
            assert not errors  # close() alone waits for the store
            writer.abandon()
        # run() returned long before the stuck commit would have.
    assert len(errors) == 2 and all(isinstance(e, StoreError) for e in errors)
    assert not store.closed  # never closed under a thread still inside commit
    store.gate.set()

"""The reactor's wait outside trio (server/loopwait.py): it blocks only while trio has
nothing to do, and every other kind of work still runs on time."""

from __future__ import annotations

import os
import select
import socket
import time

import pytest
import trio
import trio.testing

from server.loopwait import LoopWait


@pytest.fixture(autouse=True)
def _loop_wait_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEARMAN_LOOP_WAIT", raising=False)


class Reactor:
    """A reactor like GearFrontEnd's: one epoll over a socket, read with LoopWait."""

    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.ours.setblocking(False)
        self.epoll = select.epoll()
        self.epoll.register(self.ours.fileno(), select.EPOLLIN)
        self.got: list[bytes] = []
        self.fast_rounds = 0

    async def run(self) -> None:
        wait = LoopWait.create(self.epoll.fileno())
        assert wait is not None
        ready = False
        while True:
            if not ready:
                await trio.lowlevel.wait_readable(self.epoll.fileno())
            else:
                self.fast_rounds += 1
            for _fd, _ in self.epoll.poll(0):
                self.got.append(self.ours.recv(100))
            ready = wait.wait()


async def test_it_is_used_under_a_real_clock_and_can_be_turned_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    epoll = select.epoll()
    assert LoopWait.create(epoll.fileno()) is not None
    monkeypatch.setenv("GEARMAN_LOOP_WAIT", "0")
    assert LoopWait.create(epoll.fileno()) is None


def test_a_mock_clock_turns_it_off() -> None:
    async def main() -> LoopWait | None:
        return LoopWait.create(select.epoll().fileno())

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) is None


async def test_the_reactor_reads_without_trio_turns_and_other_tasks_still_run() -> None:
    reactor = Reactor()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reactor.run)
        await trio.sleep(0.05)
        # A sleeping task (a deadline) wakes on time while the reactor blocks.
        started = time.monotonic()
        await trio.sleep(0.1)
        assert time.monotonic() - started < 0.5
        # Data from another thread reaches the reactor; the thread's result reaches us.
        started = time.monotonic()
        for n in range(20):
            await trio.to_thread.run_sync(reactor.theirs.send, b"%d" % n)
            for _ in range(100):
                if len(reactor.got) > n:
                    break
                await trio.sleep(0.001)
        assert reactor.got and b"".join(reactor.got).startswith(b"0123")
        assert time.monotonic() - started < 2  # not a blocked second per thread
        nursery.cancel_scope.cancel()


async def test_reads_come_without_trio_turns_while_trio_is_idle() -> None:
    import threading

    reactor = Reactor()

    def sender() -> None:
        for n in range(50):
            reactor.theirs.send(b"%d," % n)
            time.sleep(0.002)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reactor.run)
        await trio.sleep(0.05)
        thread = threading.Thread(target=sender)
        thread.start()
        await trio.sleep(0.5)
        thread.join()
        assert b"".join(reactor.got).split(b",")[:50] == [b"%d" % n for n in range(50)]
        assert reactor.fast_rounds > 25
        nursery.cancel_scope.cancel()


async def test_a_task_of_the_same_batch_is_not_held_up() -> None:
    """The bug it had: tasks resumed in the reactor's batch waited for its block (1 s)."""
    reactor = Reactor()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reactor.run)
        await trio.sleep(0.05)
        a, b = trio.socket.socketpair()
        started = time.monotonic()
        for _ in range(20):
            # This task and the reactor are woken by the same trio turn.
            reactor.theirs.send(b"x")
            await b.send(b"y")
            assert await a.recv(1) == b"y"
            await trio.lowlevel.checkpoint()
        assert time.monotonic() - started < 2  # not a blocked second per round
        nursery.cancel_scope.cancel()


async def test_a_signal_stops_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    reactor = Reactor()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reactor.run)
        with trio.open_signal_receiver(signal.SIGUSR2) as signals:
            await trio.sleep(0.05)
            started = time.monotonic()
            os.kill(os.getpid(), signal.SIGUSR2)
            with trio.fail_after(5):
                async for signum in signals:
                    assert signum == signal.SIGUSR2
                    break
            assert time.monotonic() - started < 0.5
        nursery.cancel_scope.cancel()

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
        self.on_data: list[trio.Event] = []

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
                if self.on_data:
                    self.on_data.pop().set()
                    # More is ready at once: trio resumes this reactor in the same
                    # batch as the task it woke.
                    self.theirs.send(b"y")
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


async def test_a_task_the_reactor_wakes_runs_at_once() -> None:
    """The bug it had: after a read without a trio turn, a task the reactor then woke
    made it go back to trio, where it met the reactor again in one batch, and the
    reactor (still counting itself settled) blocked while the task waited its turn."""
    import threading

    reactor = Reactor()
    stop = threading.Event()

    def sender() -> None:
        while not stop.is_set():
            reactor.theirs.send(b"x")
            time.sleep(0.0005)

    thread = threading.Thread(target=sender)
    worst = 0.0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reactor.run)
        thread.start()
        try:
            for _ in range(300):
                await trio.sleep(0.001)
                event = trio.Event()
                reactor.on_data.append(event)
                asked = time.monotonic()
                with trio.move_on_after(2):
                    await event.wait()
                worst = max(worst, time.monotonic() - asked)
        finally:
            stop.set()
            thread.join()
        nursery.cancel_scope.cancel()
    assert worst < 0.5


class _Task:
    def __init__(self) -> None:
        self._next_send_fn: object = None


class _Runner:
    """The parts of trio's runner that LoopWait reads."""

    def __init__(self) -> None:
        from collections import deque

        self.runq: deque[_Task] = deque()
        self.waiting_for_idle: dict[object, object] = {}
        self.instruments: dict[str, object] = {"_all": {}}
        self.tasks: set[_Task] = set()
        self.deadlines = self
        self.clock = self

    def next_deadline(self) -> float:
        return float("inf")

    def deadline_to_sleep_time(self, deadline: float) -> float:
        return deadline


def test_after_going_back_to_trio_it_looks_for_due_tasks_again() -> None:
    """A False answer sends the reactor back to trio; trio may resume it in one batch
    with other tasks (out of runq, marked due): it must not block while they wait."""
    runner = _Runner()
    me, mate = _Task(), _Task()
    runner.tasks = {me, mate}

    class Context:
        task = me

    reactor_r, reactor_w = socket.socketpair()
    trio_r, trio_w = socket.socketpair()
    wait = LoopWait(runner, Context, reactor_r.fileno(), trio_r.fileno())
    reactor_w.send(b"x")
    assert wait.wait() is True  # nothing else due: read on without trio
    runner.runq.append(mate)
    mate._next_send_fn = print
    assert wait.wait() is False  # a task to run: back to trio
    runner.runq.clear()  # trio took it into the batch that also resumes the reactor
    assert wait.wait() is False  # it is still due: no block
    mate._next_send_fn = None  # it ran
    assert wait.wait() is True
    trio_w.send(b"t")
    assert wait.wait() is False  # something of trio's is ready

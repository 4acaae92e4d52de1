"""Which sleeping workers to wake, and when: as many as there is work for (spec §2.5).

A worker that has nothing to do sends PRE_SLEEP and waits for a NOOP. Waking every
sleeping worker of a function for each new job (the reference's default) costs each of
them a NOOP, a GRAB_JOB, a NO_JOB and a PRE_SLEEP for one job only one can take: with
100 workers and a few jobs in flight that is most of the server's work. Here a function
wakes one sleeper per ready job it has beyond the workers already woken for it
(``Function.waking``), choosing the worker that went to sleep last (the warmest: its
process most likely still in memory and in cache).

No wake-up is lost. A woken worker *answers* when it asks for work (GRAB_JOB*), goes back
to sleep (PRE_SLEEP), gives the function up (CANT_DO, RESET_ABILITIES) or leaves; then
its function is rebalanced: if it still has more ready jobs than woken workers, the next
sleeper is woken. A woken worker that does not answer within ``GRACE`` seconds (a peer
gone silent without closing) stops counting, and another is woken in its place.

I/O-free like the rest of the core: the caller passes ``now`` and delivers through the
connection's ``Peer``.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from protocol import PacketType

from .jobs import Conn, Function

#: Seconds a woken worker has to answer its NOOP before another is woken in its place.
GRACE: Final = 1.0

_NOOP: Final = PacketType.NOOP


def ready(fn: Function) -> int:
    """Jobs of ``fn`` waiting in its ready queues."""
    live = fn.live
    return live[0] + live[1] + live[2]


class Wakeups:
    """The wake-up bookkeeping of one job core: who was woken for what, and until when."""

    __slots__ = ("functions", "pending")

    def __init__(self, functions: dict[bytes, Function]) -> None:
        self.functions = functions
        #: (deadline, worker, function) per wake-up, in deadline order (GRACE is fixed).
        self.pending: deque[tuple[float, Conn, Function]] = deque()

    def unsleep(self, conn: Conn) -> None:
        """Take a worker out of every function's sleepers."""
        conn.sleeping = False
        functions = self.functions
        for name in conn.abilities:
            fn = functions.get(name)
            if fn is not None:
                fn.sleepers.pop(conn, None)

    def wake(self, conn: Conn, fn: Function, now: float) -> None:
        """NOOP ``conn`` on behalf of ``fn`` (it has a ready job for it)."""
        if conn.sleeping:
            self.unsleep(conn)
        conn.noop_sent = True
        if conn.woken_for is None:
            conn.woken_for = fn
            conn.wake_deadline = now + GRACE
            fn.waking += 1
            self.pending.append((conn.wake_deadline, conn, fn))
        conn.peer.deliver(_NOOP)

    def arrived(self, fn: Function, now: float) -> None:
        """A job became ready in ``fn``: wake one more sleeper if it is owed one."""
        sleepers = fn.sleepers
        if sleepers and ready(fn) > fn.waking:
            self.wake(next(reversed(sleepers)), fn, now)

    def rebalance(self, fn: Function, now: float) -> None:
        """Wake sleepers of ``fn`` until it has as many woken workers as ready jobs."""
        sleepers = fn.sleepers
        while sleepers and ready(fn) > fn.waking:
            self.wake(next(reversed(sleepers)), fn, now)

    def answered(self, conn: Conn) -> Function | None:
        """``conn`` answered its wake-up (or can no longer): the function it was woken
        for, to rebalance once the caller has done what the answer asks, or None."""
        fn = conn.woken_for
        if fn is not None:
            conn.woken_for = None
            fn.waking -= 1
        return fn

    def next_deadline(self) -> float | None:
        pending = self.pending
        while pending and pending[0][1].woken_for is not pending[0][2]:
            pending.popleft()  # answered already
        return pending[0][0] if pending else None

    def expire(self, now: float) -> None:
        """Wake-ups not answered within GRACE stop counting; others are woken instead."""
        pending = self.pending
        while pending and pending[0][0] <= now:
            _, conn, fn = pending.popleft()
            if conn.woken_for is fn and conn.wake_deadline <= now:
                self.answered(conn)
                self.rebalance(fn, now)

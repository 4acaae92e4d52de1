"""Let the epoll reactor wait for its own connections while trio has nothing to do.

The reactor (``GearFrontEnd._reactor``) reads every Gear connection from one task: it
awaits ``trio.lowlevel.wait_readable`` on its epoll fd, reads what is ready, answers, and
awaits again. Each of those awaits is one turn of trio's run loop, which in pure Python
costs about as much as everything the server does for a packet: with one job at a time
(a client waiting for each result) most of the server's own CPU went to it.

``LoopWait.wait`` is called after each batch. When trio has no task due to run (none in
its run queue, and none left in the batch that resumed the reactor: ``_settle``), no
deadline due, no idle waiter (``wait_all_tasks_blocked``), no instrument, no guest host
and its real clock, it blocks in ``poll()`` on two fds: the reactor's epoll fd and trio's
own (readable when anything trio watches is: listeners, writers, other front-ends, a
thread's ``run_sync_soon``, a signal's wakeup fd), until trio's next deadline. It returns
True when only the reactor's connections are ready (the reactor reads them at once, with
no trio turn) and False in every other case (the reactor goes back to trio, which then
sees the same readiness: both epolls are level-triggered for these fds). Trio's epoll
cannot be added to the reactor's epoll (the reactor's is registered in trio's: a loop the
kernel refuses), hence ``poll()`` over both.

It reads trio's run-loop state through private attributes (``GLOBAL_RUN_CONTEXT.runner``).
If they are not all there (another trio version), ``LoopWait.create`` returns None and
the reactor takes the plain path; ``GEARMAN_LOOP_WAIT=0`` does the same on purpose.
"""

from __future__ import annotations

import logging
import math
import os
import select
from typing import Any

log = logging.getLogger(__name__)

#: Longest single block (seconds): a bound, should trio's state change some way this
#: module does not look at.
_MAX_BLOCK = 1.0
#: More tasks than this, and the reactor does not look for tasks due to run (``_settle``):
#: the scan would cost more than the trio turn it saves. A busy server, where it matters
#: least, goes through trio.
_MAX_SCAN = 64


class LoopWait:
    """Block in ``poll()`` on the reactor's and trio's epoll fds while trio is idle."""

    __slots__ = ("_poll", "_runner", "_deadlines", "_clock", "_reactor_fd", "_settled",
                 "_context")

    def __init__(self, runner: Any, context: Any, reactor_fd: int, trio_fd: int) -> None:
        self._runner = runner
        self._context = context
        #: No other task waits to run (see ``_settle``).
        self._settled = False
        self._deadlines = runner.deadlines
        self._clock = runner.clock
        self._reactor_fd = reactor_fd
        self._poll = select.poll()
        self._poll.register(reactor_fd, select.POLLIN)
        self._poll.register(trio_fd, select.POLLIN)

    @classmethod
    def create(cls, reactor_fd: int) -> LoopWait | None:
        """For the running trio loop, or None where it cannot be used."""
        if os.environ.get("GEARMAN_LOOP_WAIT", "1") == "0":
            return None
        try:
            from trio._core import _run

            runner = _run.GLOBAL_RUN_CONTEXT.runner
            trio_fd = runner.io_manager._epoll.fileno()
            usable = (isinstance(runner.clock, _run.SystemClock) and not runner.is_guest
                      and math.isinf(runner.clock_autojump_threshold))
            # Touch everything ``wait`` reads, so a renamed attribute shows here.
            runner.runq.__len__()
            runner.waiting_for_idle.__len__()
            runner.instruments.__len__()
            runner.deadlines.next_deadline()
            runner.clock.deadline_to_sleep_time(math.inf)
            for task in runner.tasks:
                task._next_send_fn  # noqa: B018
            _run.GLOBAL_RUN_CONTEXT.task  # noqa: B018
        except (AttributeError, ImportError, OSError, TypeError) as exc:
            log.info("the reactor waits through trio only (%s)", exc)
            return None
        if not usable:
            return None
        return cls(runner, _run.GLOBAL_RUN_CONTEXT, reactor_fd, trio_fd)

    def wait(self) -> bool:
        """Block while only the reactor's connections can need attention; True when
        they are ready to be read, False to go back to trio."""
        runner = self._runner
        # ``instruments`` always holds its "_all" key; a hook adds its own. Whenever the
        # answer is False, the reactor yields to trio: the next call must settle again.
        if (runner.runq or runner.waiting_for_idle or len(runner.instruments) > 1
                or not (self._settled or self._settle(runner))):
            self._settled = False
            return False
        timeout = self._clock.deadline_to_sleep_time(self._deadlines.next_deadline())
        if timeout <= 0:
            self._settled = False
            return False
        ready = self._poll.poll(min(timeout, _MAX_BLOCK) * 1000)
        self._settled = len(ready) == 1 and ready[0][0] == self._reactor_fd
        return self._settled

    def _settle(self, runner: Any) -> bool:
        """True when no other task waits to run. Just after trio resumed the reactor, tasks
        of the same batch may still be due to run after it: they are out of ``runq``
        but marked (``_next_send_fn``). Once checked, it stays true while the reactor
        does not yield: a task it wakes goes to ``runq``."""
        tasks = runner.tasks
        if len(tasks) > _MAX_SCAN:
            return False
        me = self._context.task
        for task in tasks:
            if task._next_send_fn is not None and task is not me:
                return False
        self._settled = True
        return True

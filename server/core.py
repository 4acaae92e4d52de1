"""The job core: every job, queue, worker ability and sleeper, and each job's whole life,
its stored copy included. Synchronous and I/O-free.

It imports neither trio nor socket and takes the time as a ``now`` argument. It reaches
connections only through ``Peer`` (``server.jobs``): it emits packets, and each front-end
encodes them for its own wire; it keeps stored copies through a ``JobStore``. Every
operation on a hot path is O(1) or O(functions of one worker): a deque per function per
priority, dicts by handle and by (function, unique), an ordered set of sleepers per
function. ``server.manager`` adds the translation of request packets onto it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import time
from typing import Final

from protocol import PacketType

from .jobs import (
    MAX_UNIQUE,
    Conn,
    Function,
    Job,
    JobStore,
    Limits,
    Peer,
    StatsTable,
    by_unique_add,
    by_unique_index,
    creation_order,
    index_key,
    log_job,
    name_problem,
)
from .results import ResultCache
from .retry import DeadLetters, RetryPolicies
from .wakeups import Wakeups

log = logging.getLogger(__name__)

PT = PacketType
#: Priority levels as plain ints (indexing with an IntEnum is slow on hot paths).
PRIORITIES: Final = (0, 1, 2)
#: Compact a queue once this many cancelled/abandoned jobs sit in it (and they are the majority).
_COMPACT_MIN: Final = 64


class JobCore:
    """All job state and its life cycle, driven by the request translator and the server."""

    def __init__(
        self,
        *,
        handle_prefix: str = "H:localhost",
        job_retries: int | None = None,
        worker_wakeup: int = 0,
        exceptions: bool = False,
        limits: Limits | None = None,
    ) -> None:
        self.limits = limits or Limits()
        #: Job life-cycle lines are logged (INFO), with payload previews (DEBUG). Read
        #: once: the checks sit on hot paths.
        self.log_jobs = log.isEnabledFor(logging.INFO)
        self.log_payloads = log.isEnabledFor(logging.DEBUG)
        self.handle_prefix = handle_prefix.encode() + b":"
        # HEAD semantics: None (or any negative value) = unlimited.
        self.job_retries = job_retries if job_retries is None or job_retries >= 0 else None
        self.worker_wakeup = worker_wakeup
        self.exceptions = exceptions
        self.functions: dict[bytes, Function] = {}
        self.wakeups = Wakeups(self.functions)
        self.jobs: dict[bytes, Job] = {}
        self.unique_index: dict[tuple[bytes, ...], Job] = {}
        #: unique -> the indexed job with that unique, or a list when several functions
        #: have one (for GET_STATUS_UNIQUE, which names no function: O(1), not a scan of
        #: functions). Built at the first such query and kept from then on, so a server
        #: that is never asked pays nothing on its submits.
        self.by_unique: dict[bytes, Job | list[Job]] | None = None
        #: Every open connection, by id.
        self.conns: dict[int, Conn] = {}
        self._handles = itertools.count(1)
        self._conn_ids = itertools.count(1)
        #: Each function name's counters (``FunctionStats``), kept when it is freed.
        self.stats = StatsTable()
        #: (when, seq, job) for jobs waiting for their time.
        self._scheduled: list[tuple[float, int, bytes]] = []
        #: (deadline, seq, job, assignment) for CAN_DO_TIMEOUT.
        self._timeouts: list[tuple[float, int, bytes, int]] = []
        self._seq = itertools.count()
        #: Where background jobs are kept (``attach_store``); None = memory only.
        self.store: JobStore | None = None
        self._store_prefix = f"{time.time_ns():x}.{os.getpid()}."
        self._store_keys = itertools.count(1)
        #: Retry policies, dead letters and the result cache (``server.outcomes``).
        self.retry = RetryPolicies()
        self.dead_letters = DeadLetters()
        self.results: ResultCache | None = None

    # ------------------------------------------------------------------ connections

    def connect(self, peer: Peer, address: str = "-", port: int = 0) -> Conn:
        """Register a new connection."""
        conn = Conn(next(self._conn_ids), peer, address, self.exceptions, port)
        self.conns[conn.id] = conn
        return conn

    def disconnect(self, conn: Conn, now: float) -> None:
        """Forget a connection: requeue its jobs, detach it from the jobs it waits for."""
        if conn.closed:
            return
        conn.closed = True
        self.conns.pop(conn.id, None)
        # Out of the sleepers before requeueing, so the requeue's NOOPs go to live workers.
        names = list(conn.abilities)
        for name in names:
            fn = self.functions.get(name)
            if fn is not None:
                fn.workers.pop(conn, None)
                fn.sleepers.pop(conn, None)
        conn.abilities.clear()
        conn.sleeping = False
        woke = self.wakeups.answered(conn)
        for job in list(conn.assigned.values()):
            self._lost(job, conn, now)
        for job in list(conn.attached):
            self._detach(job, conn)
        conn.attached.clear()
        if woke is not None:
            self.wakeups.rebalance(woke, now)
        for name in names:
            self._release(name)

    # ------------------------------------------------------------------ functions

    def function(self, name: bytes) -> Function:
        """The function record called ``name``, created if needed (unchecked: callers
        with a name from a peer use ``new_function``)."""
        fn = self.functions.get(name)
        if fn is None:
            fn = self.functions[name] = Function(name, self.stats.take(name))
        return fn

    def new_function(self, conn: Conn, name: bytes) -> Function | None:
        """The function called ``name``, created if the name is allowed and the bound on
        functions not reached; otherwise the peer is sent the protocol's ERROR."""
        fn = self.functions.get(name)
        if fn is not None:
            return fn
        problem = self.name_problem(name)
        if problem is not None:
            conn.peer.deliver(PT.ERROR, *problem)
            return None
        if len(self.functions) >= self.limits.max_functions:
            log.warning("connection %d: the server has %d functions, its limit; refused "
                        "a new one", conn.id, len(self.functions))
            conn.peer.deliver(PT.ERROR, b"TOO_MANY_FUNCTIONS",
                              b"The server has as many functions as it allows")
            return None
        fn = self.functions[name] = Function(name, self.stats.take(name))
        return fn

    def name_problem(self, name: bytes,
                     what: bytes = b"Function name") -> tuple[bytes, bytes] | None:
        """Why a function name (or client id) from a peer is refused (``jobs``), or None."""
        return name_problem(name, self.limits.max_name, what)

    def _release(self, name: bytes) -> None:
        """Free a function's record once nothing refers to it: no worker, no job, no
        limit set, not created by the admin (the reference keeps them for ever)."""
        fn = self.functions.get(name)
        if (fn is not None and not fn.workers and not fn.running and not fn.pinned
                and not (fn.live[0] or fn.live[1] or fn.live[2] or fn.scheduled
                         or fn.storing) and fn.maxqueue == [0, 0, 0]):
            fn.stats.live = False
            del self.functions[name]

    # ------------------------------------------------------------------ submit

    def submit(self, conn: Conn, function: bytes, unique: bytes, data: bytes,
               priority: int, background: bool, now: float, *, when: float = 0,
               reducer: bytes = b"") -> Job | None:
        """Create a job or coalesce onto an existing one (spec §2.2); answer JOB_CREATED.

        With a store, a background job is acknowledged only once it is committed, and so
        is every submit that coalesces onto it meanwhile (DESIGN.md, persistence).
        """
        if len(unique) > MAX_UNIQUE:
            conn.peer.deliver(PT.ERROR, b"ARGUMENT_TOO_LARGE", b"Unique value too large")
            return None
        # The unique index's key (spec §2.2), inline: this is the submit hot path.
        key: tuple[bytes, ...] | None
        if not unique:
            key = None
        elif unique == b"-":
            key = (function, b"-", data) if data else None
        else:
            key = (function, unique)
        if key is not None:
            existing = self.unique_index.get(key)
            if existing is not None:
                existing.function.stats.coalesced += 1
                self._join(existing, conn, background)
                return existing
        fn = self.functions.get(function) or self.new_function(conn, function)
        if fn is None:
            return None
        limit = fn.maxqueue[priority]
        if limit and fn.total >= limit:
            conn.peer.deliver(PT.ERROR, b"QUEUE_ERROR", b"Job queue is full")
            return None
        handle = self.handle_prefix + b"%d" % next(self._handles)
        job = Job(handle, fn, unique, data, priority, background, when, reducer)
        job.stamp = now
        fn.stats.submitted[priority + 3 if background else priority] += 1
        self.jobs[handle] = job
        if key is not None:
            job.index_key = key
            self.unique_index[key] = job
            if self.by_unique is not None and len(key) == 2:  # see _index
                by_unique_add(self.by_unique, unique, job)
        if self.log_jobs:
            kind = ", background" if background else ""
            self.job_log(job, f"submitted: function {function!r}, unique {unique!r}, "
                         f"priority {priority}{kind}", conn, data, now, "submitted")
        if not background:
            job.clients += (conn,)
            conn.attached.add(job)
        elif self.store is not None:
            job.stored = False
            fn.storing += 1
            job.acks = [(conn, conn.peer.hold(), True)]
            self._persist(job)
            return job
        self._enqueue(job, now)
        conn.peer.deliver(PT.JOB_CREATED, handle)
        return job

    def _join(self, job: Job, conn: Conn, background: bool) -> None:
        """A submit coalesces onto ``job``: attach, acknowledge (now or with the commit)."""
        if self.log_jobs:
            self.job_log(job, "joined by a %s submit" % (
                "background" if background else "foreground"), conn)
        if not background:
            job.clients += (conn,)
            conn.attached.add(job)
        if job.acks is not None:
            # Its commit is pending: this submit hears how it ends, never earlier.
            job.acks.append((conn, conn.peer.hold(), background))
            return
        if background and not job.background:
            job.background = True
            if self.store is not None and job.store_key is None:
                # A foreground job must now run even if the server dies: store it now,
                # and acknowledge once it is stored.
                job.acks = [(conn, conn.peer.hold(), True)]
                self._persist(job)
                return
        conn.peer.deliver(PT.JOB_CREATED, job.handle)

    def job_log(self, job: Job, event: str, conn: Conn | None = None, data: bytes | None = None,
                now: float = 0.0, kind: str = "") -> None:
        """One INFO line of a job's life, and event ``kind`` (``Manager``); check ``log_jobs``."""
        log_job(log, job, event, conn, data, self.log_payloads)

    def _index(self, job: Job, key: tuple[bytes, ...]) -> None:
        """Put ``job`` in the unique index, and in ``by_unique`` (``jobs.by_unique_add``)."""
        job.index_key = key
        self.unique_index[key] = job
        if self.by_unique is not None and len(key) == 2:
            by_unique_add(self.by_unique, key[1], job)

    def _unindex(self, job: Job) -> None:
        key = job.index_key
        if key is None:
            return
        job.index_key = None
        if self.unique_index.get(key) is job:
            del self.unique_index[key]
        if self.by_unique is not None and len(key) == 2:
            unique = key[1]
            same = self.by_unique.get(unique)
            if same is job:
                del self.by_unique[unique]
            elif isinstance(same, list) and job in same:
                same.remove(job)
                if len(same) == 1:
                    self.by_unique[unique] = same[0]

    def job_by_unique(self, unique: bytes) -> Job | None:
        """The job a submit with this unique would join, in any function; the oldest
        when several functions have one (as the reference's first match)."""
        if self.by_unique is None:
            self.by_unique = by_unique_index(self.unique_index)
        same = self.by_unique.get(unique)
        if isinstance(same, list):
            return min(same, key=creation_order)
        return same

    # ------------------------------------------------------------------ persistence

    def attach_store(self, store: JobStore) -> None:
        """Keep background jobs in ``store`` from now on (before serving)."""
        self.store = store

    def new_store_key(self) -> str:
        """A key no other job of any run of any server process uses."""
        return self._store_prefix + str(next(self._store_keys))

    def _persist(self, job: Job) -> None:
        assert self.store is not None
        job.store_key = self.new_store_key()
        self.store.persist(job)

    def persisted(self, job: Job, ok: bool, now: float) -> None:
        """The store committed ``job`` (or failed to): answer the submits that wait."""
        acks = job.acks or []
        job.acks = None
        fresh = not job.stored
        if fresh:
            job.stored = True
            job.function.storing -= 1
        if ok:
            if fresh and job.handle in self.jobs and not job.cancelled:
                self._enqueue(job, now)
            elif fresh:
                self._release(job.function.name)  # cancelled meanwhile: nothing holds fn
            for conn, hold, _ in acks:
                conn.peer.release(hold, PT.JOB_CREATED, job.handle)
            return
        job.store_key = None
        for conn, hold, background in acks:
            if background or fresh:
                conn.peer.release(hold, PT.ERROR, b"QUEUE_ERROR", b"QUEUE_ERROR")
                if not background:
                    job.unattach(conn)
            else:
                conn.peer.release(hold, PT.JOB_CREATED, job.handle)
        if fresh:
            self._forget(job)
            return
        # A foreground job that a background submit joined: it stays what it was, and is
        # dropped if no client waits for it any more.
        job.background = False
        if not job.clients:
            self._unwanted(job)

    def restore(self, function: bytes, unique: bytes, data: bytes, priority: int,
                when: float, reducer: bytes, store_key: str, now: float) -> Job:
        """Queue a background job replayed from the store (spec §5, restart)."""
        key = index_key(function, unique, data)
        if key is not None and key in self.unique_index:
            # A duplicate of a job already replayed: its stored copy is redundant.
            if self.store is not None:
                self.store.forget(store_key)
            return self.unique_index[key]
        fn = self.function(function)
        handle = self.handle_prefix + b"%d" % next(self._handles)
        job = Job(handle, fn, unique, data, priority, True, when, reducer)
        job.store_key, job.stamp = store_key, now
        self.jobs[handle] = job
        if key is not None:
            self._index(job, key)
        self._enqueue(job, now)
        return job

    def _enqueue(self, job: Job, now: float) -> None:
        """Put a job at the tail of its queue (or wait for its time) and wake workers."""
        fn = job.function
        if job.when > now:
            job.waiting = True
            fn.scheduled += 1
            # Handles, not jobs: a finished or cancelled job must not stay referenced
            # (with its data) until its time.
            heapq.heappush(self._scheduled, (job.when, next(self._seq), job.handle))
            return
        job.queued = True
        fn.queues[job.priority].append(job)
        fn.live[job.priority] += 1
        fn.bytes_queued += len(job.data)
        if fn.sleepers:
            self.wakeups.arrived(fn, now)

    # ------------------------------------------------------------------ time

    def next_deadline(self) -> float | None:
        """When ``tick`` next has something to do, or None."""
        best: float | None = None
        if self._scheduled:
            best = self._scheduled[0][0]
        if self._timeouts:
            t = self._timeouts[0][0]
            best = t if best is None or t < best else best
        wake = self.wakeups.next_deadline()
        if wake is not None and (best is None or wake < best):
            best = wake
        return best

    def tick(self, now: float) -> None:
        """Release jobs whose time has come (or whose retry is due); fail jobs that ran
        too long."""
        scheduled = self._scheduled
        jobs = self.jobs
        while scheduled and scheduled[0][0] <= now:
            _, _, handle = heapq.heappop(scheduled)
            job = jobs.get(handle)
            if job is None or not job.waiting:
                continue
            job.waiting = False
            job.function.scheduled -= 1
            job.when, job.stamp = 0.0, now
            self._enqueue(job, now)
        timeouts = self._timeouts
        while timeouts and timeouts[0][0] <= now:
            _, _, handle, assignment = heapq.heappop(timeouts)
            timed = jobs.get(handle)
            if timed is None:
                continue
            worker = timed.worker
            if worker is not None and timed.assignment == assignment:
                self._timed_out(timed, worker, now)
        self.wakeups.expire(now)

    # ------------------------------------------------------------------ workers

    def _register(self, conn: Conn, name: bytes, timeout: float | None, now: float) -> None:
        if name not in conn.abilities and len(conn.abilities) >= self.limits.max_worker_functions:
            conn.peer.deliver(PT.ERROR, b"TOO_MANY_FUNCTIONS",
                              b"This connection can do as many functions as allowed")
            return
        fn = self.new_function(conn, name)
        if fn is None:
            return
        conn.abilities.pop(name, None)
        conn.abilities[name] = timeout
        fn.workers[conn] = None
        if conn.sleeping and not conn.noop_sent:
            if fn.live[0] or fn.live[1] or fn.live[2]:
                self.wakeups.wake(conn, fn, now)
            else:
                fn.sleepers[conn] = None

    def _unregister(self, conn: Conn, name: bytes, now: float) -> None:
        if name not in conn.abilities:
            return
        del conn.abilities[name]
        fn = self.functions.get(name)
        if fn is not None:
            fn.workers.pop(conn, None)
            fn.sleepers.pop(conn, None)
        woke = self.wakeups.answered(conn) if conn.woken_for is fn else None
        # The reference requeues jobs of a function the worker gives up (spec §1.3).
        for job in [j for j in conn.assigned.values() if j.function.name == name]:
            self._lost(job, conn, now)
        if woke is not None:
            self.wakeups.rebalance(woke, now)
        self._release(name)

    def work_for(self, conn: Conn) -> Function | None:
        """A function of this connection's with a ready job, or None."""
        functions = self.functions
        for name in conn.abilities:
            fn = functions.get(name)
            if fn is not None and (fn.live[0] or fn.live[1] or fn.live[2]):
                return fn
        return None

    def grab(self, conn: Conn, now: float) -> Job | None:
        """Take the next job for a worker: global priority, FIFO, rotating between functions."""
        if conn.sleeping:
            self.wakeups.unsleep(conn)
        conn.noop_sent = False
        woke = conn.woken_for
        if woke is None:
            return self._take(conn, now)
        self.wakeups.answered(conn)
        job = self._take(conn, now)
        self.wakeups.rebalance(woke, now)  # it may have taken other work, or none
        return job

    def _take(self, conn: Conn, now: float) -> Job | None:
        names = list(conn.abilities)
        count = len(names)
        if not count:
            return None
        functions = self.functions
        start = conn.rotation % count
        for prio in PRIORITIES:
            for i in range(count):
                idx = (start + i) % count
                fn = functions.get(names[idx])
                if fn is None or not fn.live[prio]:
                    continue
                queue = fn.queues[prio]
                while queue:
                    job = queue.popleft()
                    if not job.queued:
                        fn.dead[prio] -= 1
                        continue
                    job.queued = False
                    fn.live[prio] -= 1
                    fn.bytes_queued -= len(job.data)
                    fn.running += 1
                    conn.rotation = idx + 1
                    self._assign(job, conn, now)
                    return job
        return None

    def _assign(self, job: Job, conn: Conn, now: float) -> None:
        if self.log_jobs:
            self.job_log(job, "assigned", conn, None, now, "started")
        job.function.stats.waited(now - job.stamp)
        job.worker, job.stamp = conn, now
        job.assignment += 1
        conn.assigned[job.handle] = job
        timeout = conn.abilities.get(job.function.name)
        if timeout:
            heapq.heappush(self._timeouts,
                           (now + timeout, next(self._seq), job.handle, job.assignment))

    # ------------------------------------------------------------------ work results

    def _broadcast(self, job: Job, ptype: PacketType, *args: bytes) -> None:
        for client in job.clients:
            client.peer.deliver(ptype, *args)

    def _finish(self, job: Job, now: float) -> None:
        """A running job ended (complete, fail, exception): forget it everywhere."""
        worker = job.worker
        if worker is not None:
            job.function.stats.ran(now - job.stamp)
            worker.assigned.pop(job.handle, None)
            job.worker = None
            job.function.running -= 1
        self._forget(job)

    def _forget(self, job: Job) -> None:
        """Remove a job that is neither queued nor running from every index."""
        self.jobs.pop(job.handle, None)
        if job.index_key is not None:
            self._unindex(job)
        if job.clients:
            for client in job.clients:
                client.attached.discard(job)
            job.clients = ()
        if job.store_key is not None and self.store is not None:
            self.store.forget(job.store_key)
        job.store_key = None
        fn = job.function
        if not fn.workers:
            self._release(fn.name)

    def _lost(self, job: Job, worker: Conn, now: float) -> None:
        """The worker running ``job`` is gone or gave up (``server.outcomes``)."""
        raise NotImplementedError

    def _timed_out(self, job: Job, worker: Conn, now: float) -> None:
        """``job`` ran past its CAN_DO_TIMEOUT (``server.outcomes``)."""
        raise NotImplementedError

    def _detach(self, job: Job, client: Conn) -> None:
        """A foreground client stops waiting for ``job`` (spec §2.8, decisions.md)."""
        if client not in job.clients:
            return
        # Every entry: a client that submitted the same unique twice is attached twice.
        job.clients = tuple(c for c in job.clients if c is not client)
        if not job.clients and not job.background:
            self._unwanted(job)

    def _unwanted(self, job: Job) -> None:
        """Nobody can still want ``job``: out of the unique index at once, so a later
        submit gets a fresh job; out of its queue now, or discarded when its worker ends."""
        if self.log_jobs:
            self.job_log(job, "dropped: no client waits for it any more", kind="dropped")
        self._unindex(job)
        if job.queued:
            self._abandon(job)
            self._forget(job)
        elif job.waiting:
            job.waiting = False
            job.function.scheduled -= 1
            self._forget(job)

    def _abandon(self, job: Job) -> None:
        """Take a queued job out of its ready queue (lazily; compacted when worthwhile)."""
        fn = job.function
        prio = job.priority
        job.queued = False
        fn.live[prio] -= 1
        fn.bytes_queued -= len(job.data)
        fn.dead[prio] += 1
        queue = fn.queues[prio]
        if fn.dead[prio] >= _COMPACT_MIN and fn.dead[prio] * 2 > len(queue):
            live = [j for j in queue if j.queued]
            queue.clear()
            queue.extend(live)
            fn.dead[prio] = 0
        if not queue:
            fn.dead[prio] = 0

"""The job manager: every job, queue, worker ability and sleeper. Synchronous and I/O-free.

It imports neither trio nor socket and takes the time as a ``now`` argument. It reaches
connections only through ``Peer.deliver(bytes)``, which never blocks. Every operation on
a hot path is O(1) or O(functions of one worker): a deque per function per priority,
dicts by handle and by (function, unique), an ordered set of sleepers per function.
Section numbers (§) point at ../shared/spec/reference.md; decisions.md wins over it.
"""

from __future__ import annotations

import datetime
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Final, Protocol

from protocol import SUBMIT_KINDS, PacketType, Priority, encode_res, res_encoder

log = logging.getLogger(__name__)

PT = PacketType
MAX_UNIQUE: Final = 64
MAX_HANDLE: Final = 63
#: Priority levels as plain ints (indexing with an IntEnum is slow on hot paths).
PRIORITIES: Final = (int(Priority.HIGH), int(Priority.NORMAL), int(Priority.LOW))
#: Compact a queue once this many cancelled/abandoned jobs sit in it (and they are the majority).
_COMPACT_MIN: Final = 64

_NOOP: Final = encode_res(PT.NOOP)
_NO_JOB: Final = encode_res(PT.NO_JOB)
# Unchecked encoders for the replies on hot paths (arguments are handles, function
# names and numbers, which hold no NUL, then the opaque data).
_job_created: Final = res_encoder(PT.JOB_CREATED)
_job_assign: Final = res_encoder(PT.JOB_ASSIGN)
_job_assign_uniq: Final = res_encoder(PT.JOB_ASSIGN_UNIQ)
_job_assign_all: Final = res_encoder(PT.JOB_ASSIGN_ALL)
_work_complete: Final = res_encoder(PT.WORK_COMPLETE)
_work_fail: Final = res_encoder(PT.WORK_FAIL)
_work_status: Final = res_encoder(PT.WORK_STATUS)


def error_packet(code: str, text: str) -> bytes:
    """An ERROR packet (spec §1.3)."""
    return encode_res(PT.ERROR, code.encode(), text.encode())


class Peer(Protocol):
    """What the manager needs of a connection: a non-blocking byte sink."""

    def deliver(self, data: bytes) -> None: ...


class Conn:
    """One connection's state as the manager sees it (it may be client, worker and admin)."""

    __slots__ = (
        "id", "peer", "address", "client_id", "exceptions", "abilities", "rotation",
        "sleeping", "noop_sent", "assigned", "attached", "closed",
    )

    def __init__(self, conn_id: int, peer: Peer, address: str = "-", exceptions: bool = False):
        self.id = conn_id
        self.peer = peer
        self.address = address
        self.client_id = b"-"
        self.exceptions = exceptions
        #: function name -> timeout in seconds (None = no timeout), most recent last.
        self.abilities: dict[bytes, float | None] = {}
        #: Rotating start index into abilities, for fairness between functions.
        self.rotation = 0
        self.sleeping = False
        self.noop_sent = False
        #: Jobs assigned to this worker connection, by handle.
        self.assigned: dict[bytes, Job] = {}
        #: Foreground jobs this client waits for.
        self.attached: set[Job] = set()
        self.closed = False

    def __repr__(self) -> str:
        return f"<Conn {self.id} {self.address}>"


class Function:
    """A function name's queues, workers and limits (spec §2.1)."""

    __slots__ = ("name", "queues", "live", "dead", "running", "workers", "sleepers",
                 "maxqueue", "scheduled", "storing")

    def __init__(self, name: bytes) -> None:
        self.name = name
        #: One FIFO per priority; may hold abandoned jobs (job.queued False), skipped lazily.
        self.queues: tuple[deque[Job], deque[Job], deque[Job]] = (deque(), deque(), deque())
        #: Live queued jobs per priority (ready now).
        self.live = [0, 0, 0]
        #: Abandoned entries per priority still sitting in the deques.
        self.dead = [0, 0, 0]
        self.running = 0
        #: Jobs waiting for their epoch / schedule time.
        self.scheduled = 0
        #: New background jobs waiting for the persistent store's commit.
        self.storing = 0
        #: Worker connections that can do this function (insertion-ordered set).
        self.workers: dict[Conn, None] = {}
        #: Sleeping workers not yet sent a NOOP, in the order they fell asleep.
        self.sleepers: dict[Conn, None] = {}
        #: Max-queue limits per priority; 0 = unlimited (spec §2.10).
        self.maxqueue = [0, 0, 0]

    @property
    def queued(self) -> int:
        return self.live[0] + self.live[1] + self.live[2] + self.scheduled + self.storing

    @property
    def total(self) -> int:
        return self.queued + self.running


class Job:
    """One job (spec §2.1). ``queued`` is True while it sits live in a ready queue."""

    __slots__ = (
        "handle", "function", "unique", "data", "priority", "when", "reducer",
        "numerator", "denominator", "retries", "worker", "clients", "background",
        "queued", "waiting", "index_key", "store_key", "cancelled", "assignment",
        "stored", "number",
    )

    def __init__(self, handle: bytes, function: Function, unique: bytes, data: bytes,
                 priority: int, background: bool, when: float = 0, reducer: bytes = b""):
        self.handle = handle
        #: Creation order (the handle's counter value).
        self.number = 0
        self.function = function
        self.unique = unique
        self.data = data
        self.priority = priority
        self.when = when
        self.reducer = reducer
        self.numerator = b"0"
        self.denominator = b"0"
        self.retries = 0
        self.worker: Conn | None = None
        self.clients: list[Conn] = []
        #: Some submitter did not wait for it: it must run even with no client attached.
        self.background = background
        self.queued = False
        #: Waiting for its epoch / schedule time.
        self.waiting = False
        #: Key in the unique index, or None when not indexed.
        self.index_key: tuple[bytes, ...] | None = None
        #: Key of the persistent copy, or None.
        self.store_key: str | None = None
        self.stored = True
        self.cancelled = False
        #: Counts assignments, so a stale timeout timer can tell it is stale.
        self.assignment = 0

    def __repr__(self) -> str:
        return f"<Job {self.handle!r} {self.function.name!r}>"


# Texts of the reference's JOB_NOT_FOUND errors, per work packet (spec §1.3).
_NOT_FOUND_TEXT: Final = {
    PT.WORK_STATUS: "Job given in work result not found",
    PT.WORK_COMPLETE: "Job given in work result not found",
    PT.WORK_FAIL: "Job given in work result not found",
    PT.WORK_DATA: "Job does not exist on server",
    PT.WORK_WARNING: "Job does not exist on server",
    PT.WORK_EXCEPTION: "An exception was received for a job that does not exist",
}


def _parse_int(raw: bytes) -> int | None:
    """Leading decimal digits as C's strtoll reads them: garbage reads as 0.

    Returns None when the number overflows a signed 64-bit integer.
    """
    s = raw.strip().decode("latin-1")
    if len(s) > 24:
        # Longer than any 64-bit number (and int() refuses past 4,300 digits anyway).
        return None
    sign = 1
    if s[:1] in ("-", "+"):
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    digits = ""
    for ch in s:
        if not ch.isdigit() or not ch.isascii():
            break
        digits += ch
    value = sign * int(digits) if digits else 0
    if not -(2**63) <= value < 2**63:
        return None
    return value


#: Allowed values of the cron-style fields of SUBMIT_JOB_SCHED.
_CRON_RANGES: Final = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))


def next_cron_time(fields: tuple[bytes, ...], now: float) -> float | None:
    """The start of the next local minute matching cron-style fields (empty = any).

    ``fields`` are minute, hour, day of month, month, day of week (0 = Sunday). A field
    is empty, ``*`` or a number in its range. Returns None when a field is not
    understood or nothing matches within four years (e.g. 31 February). Searches day by
    day, then minute by minute within the first matching day: a few thousand steps at
    most, so one packet cannot stall the server.
    """
    wanted: list[int | None] = []
    for raw, (low, high) in zip(fields, _CRON_RANGES, strict=True):
        text = raw.strip()
        if text in (b"", b"*"):
            wanted.append(None)
        elif text.isdigit() and len(text) <= 2 and low <= int(text) <= high:
            wanted.append(int(text))
        else:
            return None
    minute, hour, mday, month, wday = wanted
    start = int(now) // 60 * 60 + 60
    day = datetime.date.fromtimestamp(start)
    for _ in range(4 * 366 + 1):
        if ((month is None or day.month == month)
                and (mday is None or day.day == mday)
                and (wday is None or day.isoweekday() % 7 == wday)):
            for h in range(24) if hour is None else (hour,):
                for m in range(60) if minute is None else (minute,):
                    t = time.mktime((day.year, day.month, day.day, h, m, 0, 0, 0, -1))
                    if t >= start:
                        return float(t)
        day += datetime.timedelta(days=1)
    return None


class Manager:
    """All server state and behaviour, driven by calls from the network layer."""

    def __init__(
        self,
        *,
        handle_prefix: str = "H:localhost",
        job_retries: int | None = None,
        worker_wakeup: int = 0,
        exceptions: bool = False,
    ) -> None:
        self.handle_prefix = handle_prefix.encode() + b":"
        # HEAD semantics: None (or any negative value) = unlimited.
        self.job_retries = job_retries if job_retries is None or job_retries >= 0 else None
        self.worker_wakeup = worker_wakeup
        self.exceptions = exceptions
        self.functions: dict[bytes, Function] = {}
        self.jobs: dict[bytes, Job] = {}
        self.unique_index: dict[tuple[bytes, ...], Job] = {}
        #: unique -> jobs with that unique in any function (GET_STATUS_UNIQUE).
        self.conns: dict[int, Conn] = {}
        self._handles = itertools.count(1)
        self._conn_ids = itertools.count(1)
        #: (when, seq, job) for jobs waiting for their time.
        self._scheduled: list[tuple[float, int, bytes]] = []
        #: (deadline, seq, job, assignment) for CAN_DO_TIMEOUT.
        self._timeouts: list[tuple[float, int, bytes, int]] = []
        self._seq = itertools.count()
        #: Hooks the network layer sets: persist a new background job (the manager then
        #: waits for ``job_stored``), and forget a stored one.
        self.on_store: Callable[[Job, Conn], None] | None = None
        self.on_done: Callable[[Job], None] | None = None
        self._dispatch: dict[PacketType, Callable[[Conn, tuple[bytes, ...], float], None]] = {
            PT.CAN_DO: self._can_do,
            PT.CAN_DO_TIMEOUT: self._can_do_timeout,
            PT.CANT_DO: self._cant_do,
            PT.RESET_ABILITIES: self._reset_abilities,
            PT.PRE_SLEEP: self._pre_sleep,
            PT.GRAB_JOB: self._grab_job,
            PT.GRAB_JOB_UNIQ: self._grab_job_uniq,
            PT.GRAB_JOB_ALL: self._grab_job_all,
            PT.WORK_DATA: self._forwarder(PT.WORK_DATA),
            PT.WORK_WARNING: self._forwarder(PT.WORK_WARNING),
            PT.WORK_STATUS: self._work_status,
            PT.WORK_COMPLETE: self._work_complete,
            PT.WORK_FAIL: self._work_fail,
            PT.WORK_EXCEPTION: self._work_exception,
            PT.GET_STATUS: self._get_status,
            PT.GET_STATUS_UNIQUE: self._get_status_unique,
            PT.ECHO_REQ: self._echo,
            PT.SET_CLIENT_ID: self._set_client_id,
            PT.OPTION_REQ: self._option,
            PT.ALL_YOURS: self._all_yours,
        }
        for ptype in SUBMIT_KINDS:
            self._dispatch[ptype] = self._submit_packet(ptype)

    # ------------------------------------------------------------------ connections

    def connect(self, peer: Peer, address: str = "-") -> Conn:
        """Register a new connection."""
        conn = Conn(next(self._conn_ids), peer, address, self.exceptions)
        self.conns[conn.id] = conn
        return conn

    def disconnect(self, conn: Conn, now: float) -> None:
        """Forget a connection: requeue its jobs, detach it from the jobs it waits for."""
        if conn.closed:
            return
        conn.closed = True
        self.conns.pop(conn.id, None)
        # Out of the sleepers before requeueing, so the requeue's NOOPs go to live workers.
        for name in conn.abilities:
            fn = self.functions.get(name)
            if fn is not None:
                fn.workers.pop(conn, None)
                fn.sleepers.pop(conn, None)
        conn.abilities.clear()
        conn.sleeping = False
        for job in list(conn.assigned.values()):
            self._lost(job, conn, now)
        for job in list(conn.attached):
            self._detach(job, conn)
        conn.attached.clear()

    # ------------------------------------------------------------------ packets

    def handle_packet(self, conn: Conn, ptype: PacketType, args: tuple[bytes, ...],
                      now: float) -> None:
        """Act on one request packet (``\\0REQ`` magic already checked by the caller)."""
        handler = self._dispatch.get(ptype)
        if handler is None:
            conn.peer.deliver(error_packet("INVALID_COMMAND", "Command not expected"))
            return
        handler(conn, args, now)

    def _echo(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        conn.peer.deliver(encode_res(PT.ECHO_RES, args[0]))

    def _set_client_id(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        conn.client_id = args[0][:127] or b"-"

    def _option(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        # As the reference, the name is compared up to a NUL (some clients send one).
        if args[0].partition(b"\0")[0].lower() == b"exceptions":
            conn.exceptions = True
            conn.peer.deliver(encode_res(PT.OPTION_RES, args[0]))
        else:
            conn.peer.deliver(
                error_packet("UNKNOWN_OPTION", "Server does not recognize given option"))

    def _all_yours(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        # decisions.md: accepted and ignored (the reference rejects it).
        pass

    # ------------------------------------------------------------------ functions

    def function(self, name: bytes) -> Function:
        """The function record called ``name``, created if needed."""
        fn = self.functions.get(name)
        if fn is None:
            fn = self.functions[name] = Function(name)
        return fn

    def drop_function(self, name: bytes) -> str | None:
        """Remove a function with no workers, running or queued jobs; the error text if not."""
        lowered = name.lower()
        for fname, fn in self.functions.items():
            if fname.lower() == lowered:
                if fn.workers or fn.running:
                    return "there are still connected workers or executing clients"
                if fn.queued:
                    # decisions.md: the reference orphans queued jobs here.
                    return "there are still queued jobs"
                del self.functions[fname]
                return None
        return "function not found"

    # ------------------------------------------------------------------ submit

    def _submit_packet(self, ptype: PacketType) -> Callable[[Conn, tuple[bytes, ...], float],
                                                           None]:
        kind = SUBMIT_KINDS[ptype]
        priority = int(kind.priority)
        background = kind.background

        def submit(conn: Conn, args: tuple[bytes, ...], now: float) -> None:
            when = 0.0
            reducer = b""
            if kind.epoch:
                parsed = _parse_int(args[2])
                if parsed is None:
                    conn.peer.deliver(error_packet("INVALID_ARGUMENT", "Epoch time out of range"))
                    return
                when = float(parsed)
            elif kind.sched:
                at = next_cron_time(args[2:7], now)
                if at is None:
                    conn.peer.deliver(
                        error_packet("INVALID_ARGUMENT", "Schedule fields not understood"))
                    return
                when = at
            elif kind.reduce:
                reducer = args[2]
            self.submit(conn, args[0], args[1], args[-1], priority, background,
                        now, when=when, reducer=reducer)

        return submit

    def submit(self, conn: Conn, function: bytes, unique: bytes, data: bytes,
               priority: int, background: bool, now: float, *, when: float = 0,
               reducer: bytes = b"") -> Job | None:
        """Create a job or coalesce onto an existing one (spec §2.2); answer JOB_CREATED."""
        if len(unique) > MAX_UNIQUE:
            conn.peer.deliver(error_packet("ARGUMENT_TOO_LARGE", "Unique value too large"))
            return None
        if unique == b"-":
            key: tuple[bytes, ...] | None = (function, b"-", data) if data else None
        elif unique:
            key = (function, unique)
        else:
            key = None
        if key is not None:
            existing = self.unique_index.get(key)
            if existing is not None:
                if background:
                    existing.background = True
                else:
                    existing.clients.append(conn)
                    conn.attached.add(existing)
                conn.peer.deliver(_job_created(existing.handle))
                return existing
        fn = self.function(function)
        limit = fn.maxqueue[priority]
        if limit and fn.total >= limit:
            conn.peer.deliver(error_packet("QUEUE_ERROR", "Job queue is full"))
            return None
        number = next(self._handles)
        handle = self.handle_prefix + b"%d" % number
        job = Job(handle, fn, unique, data, priority, background, when, reducer)
        job.number = number
        self.jobs[handle] = job
        if key is not None:
            job.index_key = key
            self.unique_index[key] = job
        if not background:
            job.clients.append(conn)
            conn.attached.add(job)
        if background and self.on_store is not None:
            # Acknowledged only once the store has it (DESIGN.md, persistence).
            job.stored = False
            fn.storing += 1
            self.on_store(job, conn)
            return job
        self._enqueue(job, now)
        conn.peer.deliver(_job_created(handle))
        return job

    def job_stored(self, job: Job, ok: bool, now: float) -> bytes:
        """The store committed (or failed to commit) a new background job.

        Returns the reply for the submitter (JOB_CREATED or ERROR) and queues the job.
        """
        job.stored = True
        job.function.storing -= 1
        if not ok:
            job.store_key = None
            # Foreground clients that joined it meanwhile were told JOB_CREATED: end
            # their wait instead of leaving them hanging.
            if job.clients:
                self._broadcast(job, _work_fail(job.handle))
            self._forget(job)
            return error_packet("QUEUE_ERROR", "QUEUE_ERROR")
        if job.handle in self.jobs and not job.cancelled:
            self._enqueue(job, now)
        return _job_created(job.handle)

    def restore(self, function: bytes, unique: bytes, data: bytes, priority: int,
                when: float, reducer: bytes, store_key: str, now: float) -> Job:
        """Queue a background job replayed from the store (spec §5, restart)."""
        if unique == b"-":
            key: tuple[bytes, ...] | None = (function, b"-", data) if data else None
        elif unique:
            key = (function, unique)
        else:
            key = None
        if key is not None and key in self.unique_index:
            existing = self.unique_index[key]
            if self.on_done is not None:
                # A duplicate of a job already replayed: its row is redundant.
                dup = Job(b"", existing.function, unique, data, priority, True)
                dup.store_key = store_key
                self.on_done(dup)
            return existing
        fn = self.function(function)
        number = next(self._handles)
        handle = self.handle_prefix + b"%d" % number
        job = Job(handle, fn, unique, data, priority, True, when, reducer)
        job.number = number
        job.store_key = store_key
        self.jobs[handle] = job
        if key is not None:
            job.index_key = key
            self.unique_index[key] = job
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
        if fn.sleepers:
            self._wake(fn)

    def _wake(self, fn: Function) -> None:
        """NOOP sleeping workers of ``fn``: all, or ``worker_wakeup`` of them (spec §2.5)."""
        limit = self.worker_wakeup or len(fn.sleepers)
        sleepers = fn.sleepers
        while sleepers and limit:
            conn = next(iter(sleepers))
            self._unsleep(conn)
            conn.noop_sent = True
            conn.peer.deliver(_NOOP)
            limit -= 1

    def _unsleep(self, conn: Conn) -> None:
        conn.sleeping = False
        functions = self.functions
        for name in conn.abilities:
            fn = functions.get(name)
            if fn is not None:
                fn.sleepers.pop(conn, None)

    # ------------------------------------------------------------------ time

    def next_deadline(self) -> float | None:
        """When ``tick`` next has something to do, or None."""
        best: float | None = None
        if self._scheduled:
            best = self._scheduled[0][0]
        if self._timeouts:
            t = self._timeouts[0][0]
            best = t if best is None or t < best else best
        return best

    def tick(self, now: float) -> None:
        """Release jobs whose time has come and requeue jobs that ran too long."""
        scheduled = self._scheduled
        jobs = self.jobs
        while scheduled and scheduled[0][0] <= now:
            _, _, handle = heapq.heappop(scheduled)
            job = jobs.get(handle)
            if job is None or not job.waiting:
                continue
            job.waiting = False
            job.function.scheduled -= 1
            job.when = 0
            self._enqueue(job, now)
        timeouts = self._timeouts
        while timeouts and timeouts[0][0] <= now:
            _, _, handle, assignment = heapq.heappop(timeouts)
            timed = jobs.get(handle)
            if timed is None:
                continue
            worker = timed.worker
            if worker is not None and timed.assignment == assignment:
                job = timed
                log.info("job %s timed out on connection %d; requeued",
                         job.handle.decode("latin-1"), worker.id)
                self._lost(job, worker, now)

    # ------------------------------------------------------------------ workers

    def _register(self, conn: Conn, name: bytes, timeout: float | None) -> None:
        conn.abilities.pop(name, None)
        conn.abilities[name] = timeout
        fn = self.function(name)
        fn.workers[conn] = None
        if conn.sleeping and not conn.noop_sent:
            if fn.live[0] or fn.live[1] or fn.live[2]:
                self._unsleep(conn)
                conn.noop_sent = True
                conn.peer.deliver(_NOOP)
            else:
                fn.sleepers[conn] = None

    def _can_do(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        self._register(conn, args[0], None)

    def _can_do_timeout(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        if len(args[1]) > 20:
            conn.peer.deliver(error_packet("INVALID_ARGUMENT", "Timeout value too long"))
            return
        ms = _parse_int(args[1]) or 0
        if 0 < ms < 1000:
            ms = 1000
        self._register(conn, args[0], ms / 1000 if ms > 0 else None)

    def _unregister(self, conn: Conn, name: bytes, now: float) -> None:
        if name not in conn.abilities:
            return
        del conn.abilities[name]
        fn = self.functions.get(name)
        if fn is not None:
            fn.workers.pop(conn, None)
            fn.sleepers.pop(conn, None)
        # The reference requeues jobs of a function the worker gives up (spec §1.3).
        for job in [j for j in conn.assigned.values() if j.function.name == name]:
            self._lost(job, conn, now)

    def _cant_do(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        self._unregister(conn, args[0], now)

    def _reset_abilities(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        for name in list(conn.abilities):
            self._unregister(conn, name, now)

    def has_work(self, conn: Conn) -> bool:
        """Whether any job is ready for a function this connection can do."""
        functions = self.functions
        for name in conn.abilities:
            fn = functions.get(name)
            if fn is not None and (fn.live[0] or fn.live[1] or fn.live[2]):
                return True
        return False

    def _pre_sleep(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        if self.has_work(conn):
            conn.noop_sent = True
            conn.peer.deliver(_NOOP)
            return
        conn.sleeping = True
        conn.noop_sent = False
        functions = self.functions
        for name in conn.abilities:
            fn = functions.get(name)
            if fn is not None:
                fn.sleepers[conn] = None

    def grab(self, conn: Conn, now: float) -> Job | None:
        """Take the next job for a worker: global priority, FIFO, rotating between functions."""
        if conn.sleeping:
            self._unsleep(conn)
        conn.noop_sent = False
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
                    fn.running += 1
                    conn.rotation = idx + 1
                    self._assign(job, conn, now)
                    return job
        return None

    def _assign(self, job: Job, conn: Conn, now: float) -> None:
        job.worker = conn
        job.assignment += 1
        conn.assigned[job.handle] = job
        timeout = conn.abilities.get(job.function.name)
        if timeout:
            heapq.heappush(self._timeouts,
                           (now + timeout, next(self._seq), job.handle, job.assignment))

    def _grab_job(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        job = self.grab(conn, now)
        if job is None:
            conn.peer.deliver(_NO_JOB)
        else:
            conn.peer.deliver(
                _job_assign(job.handle, job.function.name, job.data))

    def _grab_job_uniq(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        job = self.grab(conn, now)
        if job is None:
            conn.peer.deliver(_NO_JOB)
        else:
            conn.peer.deliver(_job_assign_uniq(job.handle, job.function.name,
                                         job.unique, job.data))

    def _grab_job_all(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        job = self.grab(conn, now)
        if job is None:
            conn.peer.deliver(_NO_JOB)
        elif job.reducer:
            conn.peer.deliver(_job_assign_all(job.handle, job.function.name,
                                         job.unique, job.reducer, job.data))
        else:
            # As the reference: JOB_ASSIGN_UNIQ when there is no reducer (spec §1.3).
            conn.peer.deliver(_job_assign_uniq(job.handle, job.function.name,
                                         job.unique, job.data))

    # ------------------------------------------------------------------ work results

    def _owned(self, conn: Conn, ptype: PacketType, handle: bytes) -> Job | None:
        job = conn.assigned.get(handle)
        if job is None:
            conn.peer.deliver(error_packet("JOB_NOT_FOUND", _NOT_FOUND_TEXT[ptype]))
        return job

    def _broadcast(self, job: Job, data: bytes) -> None:
        for client in job.clients:
            client.peer.deliver(data)

    def _forwarder(self, ptype: PacketType) -> Callable[[Conn, tuple[bytes, ...], float], None]:
        """WORK_DATA / WORK_WARNING: the same bytes to every attached client."""

        encode_one = res_encoder(ptype)

        def forward(conn: Conn, args: tuple[bytes, ...], now: float) -> None:
            job = self._owned(conn, ptype, args[0])
            if job is not None and job.clients:
                self._broadcast(job, encode_one(*args))

        return forward

    def _work_status(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        job = self._owned(conn, PT.WORK_STATUS, args[0])
        if job is None:
            return
        # Stored as numbers, as the reference reads them (atoi); forwarded as sent.
        job.numerator = b"%d" % (_parse_int(args[1]) or 0)
        job.denominator = b"%d" % (_parse_int(args[2]) or 0)
        if job.clients:
            self._broadcast(job, _work_status(*args))

    def _work_complete(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        job = self._owned(conn, PT.WORK_COMPLETE, args[0])
        if job is None:
            return
        if job.clients:
            self._broadcast(job, _work_complete(*args))
        self._finish(job)

    def _work_fail(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        job = self._owned(conn, PT.WORK_FAIL, args[0])
        if job is None:
            return
        if job.clients:
            self._broadcast(job, _work_fail(job.handle))
        self._finish(job)

    def _work_exception(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        job = self._owned(conn, PT.WORK_EXCEPTION, args[0])
        if job is None:
            return
        if job.clients:
            exc = fail = b""
            for client in job.clients:
                if client.exceptions:
                    exc = exc or encode_res(PT.WORK_EXCEPTION, *args)
                    client.peer.deliver(exc)
                else:
                    # The bare handle: the reference's trailing NUL hangs libgearman.
                    fail = fail or _work_fail(job.handle)
                    client.peer.deliver(fail)
        self._finish(job)

    def _finish(self, job: Job) -> None:
        """A running job ended (complete, fail, exception): forget it everywhere."""
        worker = job.worker
        if worker is not None:
            worker.assigned.pop(job.handle, None)
            job.worker = None
            job.function.running -= 1
        self._forget(job)

    def _forget(self, job: Job) -> None:
        """Remove a job that is neither queued nor running from every index."""
        self.jobs.pop(job.handle, None)
        if job.index_key is not None and self.unique_index.get(job.index_key) is job:
            del self.unique_index[job.index_key]
        job.index_key = None
        for client in job.clients:
            client.attached.discard(job)
        job.clients = []
        if job.store_key is not None and self.on_done is not None:
            self.on_done(job)
        job.store_key = None

    def _lost(self, job: Job, worker: Conn, now: float) -> None:
        """The worker running ``job`` is gone or gave up: requeue, or fail after retries."""
        worker.assigned.pop(job.handle, None)
        job.worker = None
        job.function.running -= 1
        job.numerator = job.denominator = b"0"
        if job.cancelled or (not job.background and not job.clients):
            self._forget(job)
            return
        job.retries += 1
        limit = self.job_retries
        if limit is not None and job.retries >= max(limit, 1):
            log.info("job %s failed after %d retries", job.handle.decode("latin-1"),
                     job.retries)
            if job.clients:
                self._broadcast(job, _work_fail(job.handle))
            self._forget(job)
            return
        self._enqueue(job, now)

    def _detach(self, job: Job, client: Conn) -> None:
        """A foreground client stops waiting for ``job`` (spec §2.8, decisions.md)."""
        if client not in job.clients:
            return
        # Every entry: a client that submitted the same unique twice is attached twice.
        job.clients = [c for c in job.clients if c is not client]
        if job.clients or job.background:
            return
        # Nobody can still want it: out of the unique index at once, so a later submit
        # gets a fresh job; out of its queue now, or discarded when its worker ends.
        if job.index_key is not None and self.unique_index.get(job.index_key) is job:
            del self.unique_index[job.index_key]
        job.index_key = None
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
        fn.dead[prio] += 1
        queue = fn.queues[prio]
        if fn.dead[prio] >= _COMPACT_MIN and fn.dead[prio] * 2 > len(queue):
            live = [j for j in queue if j.queued]
            queue.clear()
            queue.extend(live)
            fn.dead[prio] = 0
        if not queue:
            fn.dead[prio] = 0

    def cancel(self, handle: bytes) -> bool:
        """``cancel job``: fail attached clients, drop the stored copy (decisions.md)."""
        job = self.jobs.get(handle)
        if job is None:
            return False
        job.cancelled = True
        if job.clients:
            self._broadcast(job, _work_fail(job.handle))
        if job.queued:
            self._abandon(job)
            self._forget(job)
        elif job.waiting:
            job.waiting = False
            job.function.scheduled -= 1
            self._forget(job)
        elif job.worker is not None:
            # Running: detach everything; the worker's later results are discarded.
            for client in job.clients:
                client.attached.discard(job)
            job.clients = []
            if job.index_key is not None and self.unique_index.get(job.index_key) is job:
                del self.unique_index[job.index_key]
            job.index_key = None
            if job.store_key is not None and self.on_done is not None:
                self.on_done(job)
            job.store_key = None
        else:
            self._forget(job)
        return True

    # ------------------------------------------------------------------ status

    def _get_status(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        handle = args[0]
        if len(handle) > MAX_HANDLE:
            conn.peer.deliver(error_packet("ARGUMENT_TOO_LARGE", "Job handle too long"))
            return
        if b"\0" in handle:
            # It would not fit the reply, where the handle is not the last argument.
            conn.peer.deliver(error_packet("INVALID_ARGUMENT", "Job handle contains NUL"))
            return
        job = self.jobs.get(handle)
        if job is None or job.cancelled:
            conn.peer.deliver(encode_res(PT.STATUS_RES, handle, b"0", b"0", b"0", b"0"))
            return
        running = b"1" if job.worker is not None else b"0"
        conn.peer.deliver(encode_res(PT.STATUS_RES, handle, b"1", running,
                                     job.numerator, job.denominator))

    def _get_status_unique(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        unique = args[0]
        if len(unique) > MAX_UNIQUE:
            conn.peer.deliver(error_packet("ARGUMENT_TOO_LARGE", "Unique value too large"))
            return
        if b"\0" in unique:
            conn.peer.deliver(error_packet("INVALID_ARGUMENT", "Unique value contains NUL"))
            return
        # The job a submit with this unique would join, in any function (first match,
        # as the reference); jobs cancelled or abandoned are no longer in the index.
        # O(functions), which is fine for a status query and keeps submits cheap.
        job: Job | None = None
        if unique and unique != b"-":
            index = self.unique_index
            for name in self.functions:
                found = index.get((name, unique))
                if found is not None and (job is None or found.number < job.number):
                    job = found
        if job is None:
            conn.peer.deliver(
                encode_res(PT.STATUS_RES_UNIQUE, unique, b"0", b"0", b"0", b"0", b"0"))
            return
        running = b"1" if job.worker is not None else b"0"
        conn.peer.deliver(encode_res(PT.STATUS_RES_UNIQUE, unique, b"1", running,
                                     job.numerator, job.denominator,
                                     str(len(job.clients)).encode()))

    def iter_jobs(self) -> Iterator[Job]:
        """Every job the server holds (queued, waiting, running), in handle order."""
        return iter(list(self.jobs.values()))


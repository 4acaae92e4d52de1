"""The job core's records and its two seams: what a connection is to it (``Peer``) and
what persistence is to it (``JobStore``). A leaf module: no trio, no sockets, no clock.

Section numbers (§) point at the protocol reference summarised in ``docs/architecture.md``.
"""

from __future__ import annotations

import datetime
import logging
import re
import time
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass
from typing import Final, Protocol

from protocol import PacketType

MAX_UNIQUE: Final = 64
MAX_HANDLE: Final = 63


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what peers may make the core hold (docs/limits.md has each flag)."""

    #: Bytes in a function name or client id.
    max_name: int = 512
    #: Functions the server holds at once (with workers, jobs or a limit).
    max_functions: int = 100_000
    #: Functions one worker connection may register.
    max_worker_functions: int = 10_000


class Hold(Protocol):
    """A place reserved in a peer's output for a reply not known yet (opaque to the core)."""


class Peer(Protocol):
    """What the core needs of a connection, whatever its front-end.

    The core emits packets, not bytes: each front-end encodes them for its own wire
    (Gear ``\\0RES`` packets, an HTTP response, a memcached reply). None of these block.
    """

    def deliver(self, ptype: PacketType, *args: bytes) -> None:
        """Send one packet to this peer (queued; written by the front-end)."""

    def hold(self) -> Hold:
        """Reserve the next place in the output: later deliveries wait behind it."""

    def release(self, hold: Hold, ptype: PacketType, *args: bytes) -> None:
        """Fill a reserved place with one packet; pass on what no earlier hold blocks."""


class InternalPeer:
    """The ``Peer`` of a connection the server opens to itself (``--events-function``,
    dead letters queued again): replies are dropped, an ERROR is logged with ``what``."""

    def __init__(self, what: str, level: int = logging.WARNING) -> None:
        self.what = what
        self.level = level

    def deliver(self, ptype: PacketType, *args: bytes) -> None:
        if ptype is PacketType.ERROR:
            logging.getLogger("server").log(self.level, "%s: %s", self.what,
                                            args[-1].decode("utf-8", "replace"))

    def hold(self) -> Hold:
        return None

    def release(self, hold: Hold, ptype: PacketType, *args: bytes) -> None:
        self.deliver(ptype, *args)


class JobStore(Protocol):
    """Persistence as the core sees it (``server.persistence`` implements it).

    ``persist`` never blocks: the commit happens later, and the store then calls
    ``Manager.persisted(job, ok, now)``, in the order jobs were persisted. ``forget``
    removes a stored copy (applied after every earlier ``persist``).
    """

    def persist(self, job: Job) -> None: ...

    def forget(self, key: str) -> None: ...


class Conn:
    """One connection's state as the core sees it (it may be client, worker and admin)."""

    __slots__ = (
        "id", "peer", "address", "port", "client_id", "exceptions", "abilities", "rotation",
        "sleeping", "noop_sent", "assigned", "attached", "closed", "kind", "admin",
        "identity", "tenant", "woken_for", "wake_deadline",
    )

    def __init__(self, conn_id: int, peer: Peer, address: str = "-", exceptions: bool = False,
                 port: int = 0):
        self.id = conn_id
        self.peer = peer
        #: The peer's address as accept(2) gave it ("-" when unknown: never trusted).
        self.address = address
        self.port = port
        #: The front-end it came in by: "gear", "http", "memcached" or "internal".
        self.kind = "gear"
        #: It sent an admin text command (statistics: connections by kind).
        self.admin = False
        #: Who the peer proved to be: its TLS client certificate's identity, or None
        #: (then access rules go by ``address``). Set by the front-end before any request.
        self.identity: str | None = None
        #: The tenant whose function namespace this connection lives in (None = global).
        self.tenant: str | None = None
        self.client_id = b"-"
        self.exceptions = exceptions
        #: function name -> timeout in seconds (None = no timeout), most recent last.
        self.abilities: dict[bytes, float | None] = {}
        #: Rotating start index into abilities, for fairness between functions.
        self.rotation = 0
        self.sleeping = False
        self.noop_sent = False
        #: The function it was last woken (NOOP) for, until it answers (server/wakeups.py).
        self.woken_for: Function | None = None
        self.wake_deadline = 0.0
        #: Jobs assigned to this worker connection, by handle.
        self.assigned: dict[bytes, Job] = {}
        #: Foreground jobs this client waits for.
        self.attached: set[Job] = set()
        self.closed = False

    @property
    def remote(self) -> str:
        """``address:port`` (``[address]:port`` for IPv6), for logs."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}" if self.port else host

    def __repr__(self) -> str:
        return f"<Conn {self.id} {self.remote}>"


#: Upper bounds (seconds) of the queue-wait and run-time histograms' buckets: log scale,
#: 1-2.5-5 per decade from 100 us to 1000 s; one more bucket (+Inf) past the last.
BUCKETS: Final = (*(float(f"{m}e{e}") for e in range(-4, 3) for m in (1, 2.5, 5)), 1000.0)


class FunctionStats:
    """A function's counters and histograms: plain integers, each update O(1). Kept by
    name in a ``StatsTable``, so they survive the function's record being freed."""

    __slots__ = ("submitted", "coalesced", "completed", "failed", "exceptions", "requeued",
                 "timed_out", "cancelled", "wait", "wait_sum", "run", "run_sum", "live")

    def __init__(self) -> None:
        #: New jobs, by priority (0 high, 1 normal, 2 low) + 3 when background.
        self.submitted = [0, 0, 0, 0, 0, 0]
        #: Submits that joined a job with the same unique instead of making one.
        self.coalesced = 0
        self.completed = 0
        #: WORK_FAIL, and jobs failed when their retries ran out.
        self.failed = 0
        self.exceptions = 0
        #: Jobs put back in the queue: worker gone, CANT_DO, or timed out.
        self.requeued = 0
        self.timed_out = 0
        self.cancelled = 0
        #: Histograms: counts per bucket of ``BUCKETS`` (+Inf last), and the sums.
        self.wait = [0] * (len(BUCKETS) + 1)
        self.wait_sum = 0.0
        self.run = [0] * (len(BUCKETS) + 1)
        self.run_sum = 0.0
        #: A ``Function`` record uses it now (a freed function's stats may be pruned).
        self.live = False

    def waited(self, seconds: float) -> None:
        self.wait[bisect_left(BUCKETS, seconds)] += 1
        self.wait_sum += seconds

    def ran(self, seconds: float) -> None:
        self.run[bisect_left(BUCKETS, seconds)] += 1
        self.run_sum += seconds


class StatsTable(dict[bytes, FunctionStats]):
    """Each function name's ``FunctionStats``. Those of freed functions are kept (a
    function that comes and goes keeps counting) but bounded: past ``limit`` entries,
    all but the newest ``KEEP_FREED`` of them are pruned (amortised O(1))."""

    KEEP_FREED: Final = 1024

    def __init__(self) -> None:
        super().__init__()
        self.limit = 2 * self.KEEP_FREED

    def take(self, name: bytes) -> FunctionStats:
        """The stats of a function record being created."""
        stats = self.get(name)
        if stats is None:
            if len(self) >= self.limit:
                freed = [n for n, s in self.items() if not s.live]
                for n in freed[:len(freed) - self.KEEP_FREED]:
                    del self[n]
                self.limit = max(2 * self.KEEP_FREED, 2 * len(self))
            stats = self[name] = FunctionStats()
        stats.live = True
        return stats


class Function:
    """A function name's queues, workers and limits (spec §2.1)."""

    __slots__ = ("name", "queues", "live", "dead", "running", "workers", "sleepers",
                 "maxqueue", "scheduled", "storing", "pinned", "bytes_queued", "stats",
                 "waking")

    def __init__(self, name: bytes, stats: FunctionStats | None = None) -> None:
        self.name = name
        self.stats = stats or FunctionStats()
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
        #: Workers woken for it that have not answered yet (server/wakeups.py).
        self.waking = 0
        #: Max-queue limits per priority; 0 = unlimited (spec §2.10).
        self.maxqueue = [0, 0, 0]
        #: Created by the admin (``create function``): kept when nothing refers to it.
        self.pinned = False
        #: Payload bytes of the jobs live in the ready queues (statistics).
        self.bytes_queued = 0

    @property
    def queued(self) -> int:
        return self.live[0] + self.live[1] + self.live[2] + self.scheduled + self.storing

    @property
    def total(self) -> int:
        return self.queued + self.running


@dataclass(slots=True)
class RetryState:
    """A job's failures under a retry policy: kept while it waits and runs again."""

    failures: int = 0
    first_failed: float = 0.0
    error: str = ""


class Job:
    """One job (spec §2.1). ``queued`` is True while it sits live in a ready queue."""

    __slots__ = (
        "handle", "function", "unique", "data", "priority", "when", "reducer",
        "numerator", "denominator", "retries", "worker", "clients", "background",
        "queued", "waiting", "index_key", "store_key", "cancelled", "assignment",
        "stored", "acks", "stamp", "retry",
    )

    def __init__(self, handle: bytes, function: Function, unique: bytes, data: bytes,
                 priority: int, background: bool, when: float = 0, reducer: bytes = b""):
        self.handle = handle
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
        #: Clients waiting for it (a tuple: most jobs have none or one, and the empty
        #: tuple is shared, where an empty list would cost every background job 56 bytes).
        self.clients: tuple[Conn, ...] = ()
        #: Some submitter did not wait for it: it must run even with no client attached.
        self.background = background
        self.queued = False
        #: Waiting for its epoch / schedule time.
        self.waiting = False
        #: Key in the unique index, or None when not indexed.
        self.index_key: tuple[bytes, ...] | None = None
        #: Key of the persistent copy, or None.
        self.store_key: str | None = None
        #: False while a new background job waits for its first commit (not yet queued).
        self.stored = True
        self.cancelled = False
        #: Counts assignments, so a stale timeout timer can tell it is stale.
        self.assignment = 0
        #: While a commit of this job is pending: the submits waiting for it to be
        #: acknowledged, as (connection, its reserved reply, background submit).
        self.acks: list[tuple[Conn, Hold, bool]] | None = None
        #: When it entered its queue (submit, requeue, its time came) until it is
        #: assigned; from then on, when it was assigned. For the stats' histograms.
        self.stamp = 0.0
        #: Its failures so far, once it failed under a retry policy (``server.outcomes``).
        self.retry: RetryState | None = None

    def unattach(self, client: Conn) -> None:
        """A client stops waiting for this job (every entry of it)."""
        self.clients = tuple(c for c in self.clients if c is not client)
        client.attached.discard(self)

    def __repr__(self) -> str:
        return f"<Job {self.handle!r} {self.function.name!r}>"


def creation_order(job: Job) -> tuple[int, bytes]:
    """A sort key that orders one server's jobs by creation: its handles are one prefix
    and a counter, so a shorter handle is older and equal lengths compare as numbers.
    (Not a field of the job: an int per queued job costs 36 bytes.)"""
    return len(job.handle), job.handle


#: Bytes a function name or client id may not hold: line ends and the other control
#: characters would forge lines of admin replies. TAB is allowed: Perl's Gearman::Worker
#: joins its ``prefix`` to function names with one (as in the reference, it shifts the
#: columns of ``status``, but it cannot make a line).
_CONTROL: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def name_problem(name: bytes, limit: int,
                 what: bytes = b"Function name") -> tuple[bytes, bytes] | None:
    """Why a function name (or client id) from a peer is refused, as an ERROR's code and
    text; None when it is fine. Control characters are refused because names appear in
    the admin protocol's line-based replies, where they could forge lines."""
    if len(name) > limit:
        return b"ARGUMENT_TOO_LARGE", what + b" too long"
    if _CONTROL.search(name) is not None:
        return b"INVALID_ARGUMENT", what + b" contains control characters"
    return None


def index_key(function: bytes, unique: bytes, data: bytes) -> tuple[bytes, ...] | None:
    """The job's key in the unique index (spec §2.2): None when it coalesces with nothing."""
    if unique == b"-":
        return (function, b"-", data) if data else None
    return (function, unique) if unique else None


def log_job(log: logging.Logger, job: Job, event: str, conn: Conn | None,
            data: bytes | None, payloads: bool) -> None:
    """One INFO line of a job's life: the handle, what happened, the connection and its
    peer (address:port); with ``payloads``, a DEBUG line with the first 256 bytes of
    ``data`` (never a whole payload) and its size."""
    who = f" (connection {conn.id}, {conn.remote})" if conn is not None else ""
    size = f", {len(data)} bytes" if data is not None else ""
    log.info("job %s %s%s%s", job.handle.decode("latin-1"), event, who, size)
    if data and payloads:
        more = f" ... ({len(data)} bytes in all)" if len(data) > 256 else ""
        log.debug("job %s data: %r%s", job.handle.decode("latin-1"), data[:256], more)


def by_unique_add(index: dict[bytes, Job | list[Job]], unique: bytes, job: Job) -> None:
    """Index ``job`` by its unique alone: the job itself, or a list once several
    functions have a job with that unique (rare), so one job costs no list."""
    same = index.get(unique)
    if same is None:
        index[unique] = job
    elif isinstance(same, list):
        same.append(job)
    else:
        index[unique] = [same, job]


def by_unique_index(unique_index: dict[tuple[bytes, ...], Job]) -> dict[bytes, Job | list[Job]]:
    """The ``by_unique`` index built from the unique index (its "-" entries left out)."""
    index: dict[bytes, Job | list[Job]] = {}
    for key, job in unique_index.items():
        if len(key) == 2:
            by_unique_add(index, key[1], job)
    return index


def parse_int(raw: bytes) -> int | None:
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
#: Days in each month at most (February in a leap year).
_MONTH_DAYS: Final = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def cron_fields(fields: tuple[bytes, ...]) -> list[int | None] | None:
    """Cron-style fields as numbers (None = any), or None when one is not understood or
    no date can ever match them (31 February, 30 February): refused up front."""
    wanted: list[int | None] = []
    for raw, (low, high) in zip(fields, _CRON_RANGES, strict=True):
        text = raw.strip()
        if text in (b"", b"*"):
            wanted.append(None)
        elif text.isdigit() and len(text) <= 2 and low <= int(text) <= high:
            wanted.append(int(text))
        else:
            return None
    mday, month = wanted[2], wanted[3]
    if mday is not None and month is not None and mday > _MONTH_DAYS[month - 1]:
        return None
    return wanted


def next_cron_time(fields: tuple[bytes, ...], now: float) -> float | None:
    """The start of the next local minute matching cron-style fields (empty = any).

    ``fields`` are minute, hour, day of month, month, day of week (0 = Sunday). A field
    is empty, ``*`` or a number in its range. Returns None when a field is not
    understood or nothing matches within four years. Searches day by day, then minute
    by minute within the first matching day: a few thousand steps at most, so one
    packet cannot stall the server.
    """
    wanted = cron_fields(fields)
    if wanted is None:
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

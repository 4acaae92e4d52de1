"""The cluster's trio side: ``ClusterNode``, a member's tasks (claims, lease renewals,
notifications, the relay). Its ``JobStore`` is ``member.ClusterPersistence``.

A background submit is inserted into the shared table by the store writer (group
commits, as every persistent queue) and acknowledged once committed; then the submitting
server forgets it (``Manager.handed_off``). Every server claims rows for the functions
its workers can do, as its workers have room (``demand``), and queues them in its own
core (``Manager.adopt``); a finished job's row is deleted by the writer. While it holds
rows, a server renews their lease; rows of a server that stopped renewing are claimed
again by the others once the lease is over. No DB call runs on the trio thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

import trio

from protocol import PacketType
from server.jobs import Conn, Function, Job
from server.manager import Manager
from server.store import StoreError

from . import ops
from .db import ClusterDB, Listener, RelaySender, encode_relay
from .relay import RelayPeer, StandInPeer, valid

log = logging.getLogger(__name__)

#: Jobs claimed per worker of a function (running and queued here), and at most per claim.
PER_WORKER: Final = 16
MAX_CLAIM: Final = 100
#: Seconds between two looks at the local demand when nothing else wakes the claimer
#: (a worker that registers a function: memory only, no DB call unless there is room).
LOCAL_CHECK: Final = 0.2
#: Seconds after which admin ``status`` asks for fresh cluster-wide counts.
COUNTS_AGE: Final = 1.0
#: Back-off of a call that failed: first and longest wait, in seconds.
BACKOFF_MIN: Final = 0.2
BACKOFF_MAX: Final = 5.0


class DbState:
    """Logs each change of the database's reachability once."""

    def __init__(self) -> None:
        self.up = True
        self.failures = 0

    def ok(self) -> None:
        if not self.up:
            self.up = True
            log.error("cluster: PostgreSQL reachable again")

    def failed(self, what: str, error: Exception) -> None:
        self.failures += 1
        if self.up:
            self.up = False
            log.error("cluster: PostgreSQL unreachable (%s): %s; retrying with back-off",
                      what, error)


class Quiet(logging.Filter):
    """Drops the store writer's failure lines while the database is known to be down."""

    def __init__(self, state: DbState) -> None:
        super().__init__()
        self.state = state

    def filter(self, record: logging.LogRecord) -> bool:
        return self.state.up or record.levelno < logging.ERROR


class ClusterNode:
    """One server's membership: what it claims, holds and renews."""

    def __init__(self, manager: Manager, db: ClusterDB, listener: Listener,
                 sender: RelaySender, lease: float, changed: Callable[[], None]) -> None:
        self.manager = manager
        self.db = db
        self.listener = listener
        self.sender = sender
        self.lease = lease
        #: The fallback poll: a look at the table when no notification came for this long
        #: (covers lost notifications, expired leases and jobs whose time came).
        self.poll = max(0.5, min(5.0, lease / 2))
        self.changed = changed
        self.state = DbState()
        #: store key -> the claimed job this server queued or runs.
        self.held: dict[str, Job] = {}
        #: Functions the table had nothing claimable for at the last look.
        self.empty: set[bytes] = set()
        self._notes = 0  # notifications seen (a claim in flight must not miss one)
        self._wake = trio.Event()
        self._lock = trio.Lock()
        #: Statistics: rows claimed, of which claimed before (taken over or released).
        self.claimed = 0
        self.reclaimed = 0
        self.claim_calls = 0
        #: Rows claimed and given back at once (our own submit not yet handed off).
        self.given_back = 0
        #: Claims lost to an expired lease, by whether the job had started here.
        self.lost_queued = 0
        self.lost_running = 0
        #: On this server, the worker that stands for the servers running the foreground
        #: jobs of our clients; and one client per origin for those we run.
        self.stand_in = manager.connect(StandInPeer(), "cluster", 0, "cluster")
        self.stand_in.client_id = b"cluster"
        self._relay_conns: dict[str, Conn] = {}
        self._relay_out: list[tuple[str, bytes]] = []
        self._relay_wake = trio.Event()
        self.relayed_out = 0
        self.relayed_in = 0
        #: Relayed foreground jobs failed because our LISTEN connection broke.
        self.relay_failed = 0
        self._nursery: trio.Nursery | None = None
        manager.status_hook = self.status
        manager.progress_hook = self.progress
        manager.unwanted_hook = self.unwanted
        manager.workers_gone_hook = self.workers_gone
        #: Runs a local foreground job on another member (``ClusterPersistence.relay``).
        self.relay_job: Callable[[Job, float], None] | None = None
        #: Keys of our own relayed jobs that we claimed and run here (``_known``).
        self._taken_back: set[str] = set()
        self._progress: dict[str, tuple[bytes, bytes]] = {}
        self._progress_wake = trio.Event()
        #: Jobs per function in the shared table held by no one here (admin ``status``),
        #: and when they were counted (monotonic; refreshed at each lease renewal and
        #: when ``status`` finds them older than ``COUNTS_AGE``).
        self.shared: dict[bytes, int] = {}
        self._shared_at = -COUNTS_AGE
        self._counting = False

    def poke(self) -> None:
        self._wake.set()

    def forget(self, key: str) -> None:
        """A held job ended (or was cancelled): room for another."""
        self._taken_back.discard(key)
        if self.held.pop(key, None) is not None:
            self._wake.set()

    # ------------------------------------------------------------------ tasks

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._listen)
            nursery.start_soon(self._claimer)
            nursery.start_soon(self._renewer)
            nursery.start_soon(self._relayer)
            nursery.start_soon(self._progress_writer)

    # ------------------------------------------------------------------ relay

    def relay_conn(self, origin: str) -> Conn:
        """The client standing for ``origin``'s clients here (one per origin)."""
        conn = self._relay_conns.get(origin)
        if conn is None:
            conn = self.manager.connect(RelayPeer(origin, self._relay), "relay", 0, "relay")
            conn.client_id = b"relay"
            conn.exceptions = True  # WORK_EXCEPTION reaches the origin as sent
            self._relay_conns[origin] = conn
        return conn

    def _relay(self, origin: str, ptype: PacketType, args: tuple[bytes, ...]) -> None:
        self._relay_out.append((origin, encode_relay(int(ptype), args)))
        self._relay_wake.set()

    async def _relayer(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            if not self._relay_out:
                self._relay_wake = trio.Event()
                await self._relay_wake.wait()
            batch = self._relay_out[:MAX_CLAIM * 10]
            try:
                await trio.to_thread.run_sync(self.sender.send, batch)
            except StoreError as exc:
                self.state.failed("relay", exc)
                await trio.sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
                continue
            backoff = BACKOFF_MIN
            del self._relay_out[:len(batch)]
            self.relayed_out += len(batch)

    def relayed(self, packets: list[tuple[int, tuple[bytes, ...]]]) -> None:
        """Packets relayed to us by the servers running our clients' jobs."""
        now = time.time()
        for ptype, args in packets:
            kind = valid(ptype, args)
            if kind is None:
                log.error("cluster: relayed packet of type %d with %d arguments dropped",
                          ptype, len(args))
                continue
            self.relayed_in += 1
            self.manager.handle_packet(self.stand_in, kind, args, now)
        self.changed()

    def shared_counts(self) -> dict[bytes, int]:
        """The last cluster-wide counts; a refresh is started when they are old (the
        answer after it sees it)."""
        if (time.monotonic() - self._shared_at > COUNTS_AGE and not self._counting
                and self._nursery is not None):
            self._counting = True
            self._nursery.start_soon(self._count)
        return self.shared

    async def _count(self) -> None:
        try:
            async with self._lock:
                self.shared = await trio.to_thread.run_sync(self.db.counts)
            self._shared_at = time.monotonic()
        except StoreError as exc:
            self.state.failed("count", exc)
        finally:
            self._counting = False

    def _relay_lost(self) -> None:
        """Our LISTEN connection broke: results relayed to us meanwhile are lost (a
        notification is not kept), so the foreground jobs we relayed fail now rather
        than leave their clients waiting for ever (as if their server had gone)."""
        jobs = list(self.stand_in.assigned.values())
        if not jobs:
            return
        log.error("cluster: %d foreground jobs running on other members failed: their "
                  "results could not be heard", len(jobs))
        now = time.time()
        for job in jobs:
            self.manager.handle_packet(self.stand_in, PacketType.WORK_FAIL, (job.handle,),
                                       now)
        self.relay_failed += len(jobs)
        self.changed()

    def status(self, conn: Conn, handle: bytes) -> bool:
        """GET_STATUS for a handle this server does not hold: asked of the shared table."""
        nursery = self._nursery
        if nursery is None:
            return False
        hold = conn.peer.hold()
        nursery.start_soon(self._status, conn, hold, handle)
        return True

    async def _status(self, conn: Conn, hold: object, handle: bytes) -> None:
        found = None
        try:
            async with self._lock:
                found = await trio.to_thread.run_sync(self.db.status, handle)
        except StoreError as exc:
            self.state.failed("status", exc)
        if not conn.closed:
            if found is None:
                reply = (handle, b"0", b"0", b"0", b"0")
            else:
                running, numerator, denominator = found
                reply = (handle, b"1", b"%d" % running, numerator, denominator)
            conn.peer.release(hold, PacketType.STATUS_RES, *reply)
            self.changed()

    def workers_gone(self, fn: Function, now: float) -> None:
        """The last worker of ``fn`` here left: its claimed jobs not started are given
        back (any member runs them now, not after the lease), and its foreground jobs
        queued here are relayed to a member that has a worker."""
        give_back: list[str] = []
        # A queue may hold a job twice (an entry left by ``hand_over`` and its entry of
        # now): the flag, read as each is handled, tells the live one.
        for job in [j for queue in fn.queues for j in queue]:
            if not job.queued:
                continue
            key = job.store_key
            if key is not None and self.held.get(key) is job:
                del self.held[key]
                if key in self._taken_back:
                    # Our own client's job, taken back from the cluster: handed
                    # over again, its row given back for another member to run.
                    self._taken_back.discard(key)
                    job.store_key = None
                    ops.hand_over(self.manager, job, self.stand_in, now)
                else:
                    ops.drop_claim(self.manager, job)
                give_back.append(key)
            elif key is None and not job.background and self.relay_job is not None:
                self.relay_job(job, now)
        if give_back:
            self.given_back += len(give_back)
            self._give_back(give_back)

    def unwanted(self, job: Job) -> None:
        """The clients of a foreground job we relayed are all gone: forget it, and take
        its row out of the shared table unless a member already runs it (then it ends
        there for nobody)."""
        ops.drop_relayed(self.manager, job)
        if self._nursery is not None:
            self._nursery.start_soon(self._withdraw, job.handle)

    async def _withdraw(self, handle: bytes) -> None:
        try:
            async with self._lock:
                await trio.to_thread.run_sync(self.db.withdraw, handle)
        except StoreError as exc:  # it runs for nobody
            self.state.failed("withdraw", exc)

    def progress(self, job: Job) -> None:
        """A job held here sent WORK_STATUS: shared for GET_STATUS elsewhere (the last
        one of each job, written in batches)."""
        key = job.store_key
        if key is not None and key in self.held:
            self._progress[key] = (job.numerator, job.denominator)
            self._progress_wake.set()

    async def _progress_writer(self) -> None:
        while True:
            if not self._progress:
                self._progress_wake = trio.Event()
                await self._progress_wake.wait()
            updates = [(k, n, d) for k, (n, d) in self._progress.items()]
            self._progress.clear()
            try:
                async with self._lock:
                    await trio.to_thread.run_sync(self.db.progress, updates)
            except StoreError as exc:
                self.state.failed("progress", exc)
                await trio.sleep(BACKOFF_MAX)  # best effort: later ones replace these

    def demand(self) -> dict[bytes, int]:
        """Jobs to claim per function: room left by this server's workers (running and
        queued jobs count), claimed once half the room is free."""
        wants: dict[bytes, int] = {}
        empty = self.empty
        for name, fn in self.manager.functions.items():
            if not fn.workers or name in empty:
                continue
            target = min(MAX_CLAIM, PER_WORKER * len(fn.workers))
            have = fn.live[0] + fn.live[1] + fn.live[2] + fn.running
            if have * 2 <= target:
                wants[name] = target - have
        return wants

    async def _claimer(self) -> None:
        backoff = BACKOFF_MIN
        manager = self.manager
        while True:
            wants = self.demand()
            if not wants:
                self._wake = trio.Event()
                with trio.move_on_after(LOCAL_CHECK):
                    await self._wake.wait()
                continue
            notes = self._notes
            try:
                async with self._lock:
                    self.claim_calls += 1
                    rows = await trio.to_thread.run_sync(self.db.claim, wants)
            except StoreError as exc:
                self.state.failed("claim", exc)
                await trio.sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
                continue
            backoff = BACKOFF_MIN
            self.state.ok()
            got: dict[bytes, int] = {}
            now = time.time()
            give_back: list[str] = []
            for row in rows:
                got[row.function] = got.get(row.function, 0) + 1
                self.claimed += 1
                self.reclaimed += row.claims > 1
                mine = row.origin == self.db.owner
                client = None if row.origin is None or mine else self.relay_conn(row.origin)
                job = ops.adopt(manager, row.handle, row.function, row.unique, row.data,
                                    row.priority, row.reducer, row.key, now, client)
                if job is not None:
                    self.held[row.key] = job
                elif not self._known(row.handle, row.key, now):
                    give_back.append(row.key)
            if give_back:
                self.given_back += len(give_back)
                self._give_back(give_back)
            if notes == self._notes:
                self.empty.update(name for name, want in wants.items()
                                  if got.get(name, 0) < want)
            if rows:
                self.changed()
            await trio.sleep(0)

    def _known(self, handle: bytes, key: str, now: float) -> bool:
        """A claimed row whose handle this server holds a job for: whether that job is
        now the row's (else the row is given back)."""
        job = self.manager.jobs.get(handle)
        if job is None or not job.stored:
            return False  # our own submit, whose hand-off has not run yet
        if job.worker is self.stand_in:
            # Our own relayed foreground job, and a worker here now: run it here.
            ops.take_back(self.manager, job, key, now)
            self.held[key] = job
            self._taken_back.add(key)
            return True
        if job.store_key == key:
            return key in self.held
        if job.store_key is None and job.background and job.worker is not None:
            # Its claim was lost while it ran here, and we claimed the row again.
            job.store_key = key
            self.held[key] = job
            return True
        return False

    def _give_back(self, keys: list[str]) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._release_keys, keys)

    async def _release_keys(self, keys: list[str]) -> None:
        try:
            async with self._lock:
                await trio.to_thread.run_sync(self.db.release, keys)
        except StoreError as exc:  # claimable again when the lease ends
            self.state.failed("release", exc)

    async def _listen(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            try:
                payloads, relayed = await trio.to_thread.run_sync(
                    self.listener.wait, self.poll, abandon_on_cancel=True)
            except StoreError as exc:
                self.state.failed("listen", exc)
                self._relay_lost()
                await trio.sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
                self._wake_all()
                continue
            backoff = BACKOFF_MIN
            self.state.ok()
            if relayed:
                self.relayed(relayed)
            if payloads is None or (not payloads and not relayed):
                # The fallback poll, or (re)started listening.
                self._wake_all()
                continue
            self._notes += 1
            for payload in payloads:
                try:
                    self.empty.discard(bytes.fromhex(payload))
                except ValueError:
                    self.empty.clear()
            self._wake.set()

    def _wake_all(self) -> None:
        self._notes += 1
        self.empty.clear()
        self._wake.set()

    async def _renewer(self) -> None:
        first = True
        while True:
            # At once on start: our membership lets others run our foreground jobs.
            if not first:
                await trio.sleep(self.lease / 3)
            first = False
            try:
                async with self._lock:
                    kept = await trio.to_thread.run_sync(self.db.renew)
            except StoreError as exc:
                self.state.failed("lease renewal", exc)
                continue
            self.state.ok()
            # Claims and renewals take turns under the lock and nothing here yields:
            # every key held now was held when the renewal ran.
            for key in [k for k in self.held if k not in kept]:
                job = self.held.pop(key)
                if job.worker is None:
                    self.lost_queued += 1
                else:
                    self.lost_running += 1
                log.warning("cluster: lease of job %s lost (%s); another server may run "
                            "it", job.handle.decode("latin-1"),
                            "queued here: dropped" if job.worker is None else
                            "running here: its completion will not count")
                if key in self._taken_back and job.worker is None:
                    # Our own client's job: another member runs it now, and relays.
                    self._taken_back.discard(key)
                    job.store_key = None
                    ops.hand_over(self.manager, job, self.stand_in, time.time())
                else:
                    ops.drop_claim(self.manager, job)
            if not self._counting:
                self._counting = True
                await self._count()

    async def release(self) -> None:
        """At a clean stop: give back every row held, so other servers run them now."""
        try:
            async with self._lock:
                with trio.move_on_after(10):
                    count = await trio.to_thread.run_sync(self.db.release,
                                                          abandon_on_cancel=True)
                    if count:
                        log.info("cluster: released %d claimed jobs", count)
        except StoreError as exc:
            log.error("cluster: could not release claimed jobs (they are claimable again "
                      "when their lease ends): %s", exc)

    def stats(self) -> dict[str, object]:
        return {"claimed": self.claimed, "reclaimed": self.reclaimed,
                "claim_calls": self.claim_calls, "given_back": self.given_back,
                "held": len(self.held),
                "lost_queued": self.lost_queued, "lost_running": self.lost_running,
                "db_up": self.state.up, "db_failures": self.state.failures,
                "relayed_out": self.relayed_out, "relayed_in": self.relayed_in,
                "relay_failed": self.relay_failed,
                "relay_pending": len(self._relay_out), "bad_relayed": self.listener.bad,
                "shared_queued": {name.decode("utf-8", "replace"): count
                                  for name, count in sorted(self.shared.items())}}

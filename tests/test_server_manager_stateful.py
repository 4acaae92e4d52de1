"""A hypothesis state machine drives the job manager against a small model of the rules.

Random clients submit (fg/bg, with and without uniques, three priorities), random workers
CAN_DO / CANT_DO / RESET_ABILITIES / GRAB / PRE_SLEEP / report results, and anyone may
disconnect or have a job cancelled. After every step each connection must have been sent
exactly the packets the model predicts (so no lost result, no extra NOOP), and:

* every job is queued, running, finished or dropped by a rule, and the manager holds
  exactly the model's jobs, with ``status`` counts equal to the model's;
* a GRAB only ever hands out a queued job (none runs twice without a requeue), the
  oldest of the highest priority any of the worker's functions has;
* a waiting fg client hears WORK_COMPLETE / WORK_FAIL of its job unless it left;
* no job waits while a capable worker sleeps unwoken: a function with sleeping workers
  has at least as many woken, unanswered workers as ready jobs (server/wakeups.py: one
  NOOP per ready job, to the worker that fell asleep last, never all of them).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from fake_peer import FakePeer
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from protocol import SUBMIT_TYPE_FOR, Packet, PacketType, Priority, parse_admin_line
from server.admin import AdminContext, handle_admin
from server.manager import Conn, Manager

PT = PacketType
NOW = 1_700_000_000.0
FUNCS = (b"a", b"b", b"c")
UNIQUES = (b"", b"u1", b"u2", b"-")
DATAS = (b"", b"d1")
GRABS = {PT.GRAB_JOB: PT.JOB_ASSIGN, PT.GRAB_JOB_UNIQ: PT.JOB_ASSIGN_UNIQ,
         PT.GRAB_JOB_ALL: PT.JOB_ASSIGN_UNIQ}
MAX_CONNS = 4


@dataclass
class MJob:
    handle: bytes
    fn: bytes
    unique: bytes
    data: bytes
    prio: Priority
    background: bool
    key: tuple[bytes, ...] | None
    #: Client ids, one entry per attaching submit.
    clients: list[int] = field(default_factory=list)
    state: str = "queued"  # or "running"
    worker: int | None = None
    seq: int = 0
    retries: int = 0
    cancelled: bool = False
    status: tuple[bytes, bytes] = (b"0", b"0")


@dataclass
class MConn:
    cid: int
    conn: Conn
    peer: FakePeer
    alive: bool = True
    expected: list[Packet] = field(default_factory=list)
    # worker side
    abilities: list[bytes] = field(default_factory=list)
    assigned: list[bytes] = field(default_factory=list)
    sleeping: bool = False
    noop_sent: bool = False
    woken_for: bytes | None = None


def res(ptype: PacketType, *args: bytes) -> Packet:
    return Packet.res(ptype, *args)


class ManagerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.m = Manager(handle_prefix="H:sm")
        self.job_retries: int | None = None
        self.conns: dict[int, MConn] = {}
        self.clients: list[int] = []
        self.workers: list[int] = []
        self.jobs: dict[bytes, MJob] = {}
        self.index: dict[tuple[bytes, ...], bytes] = {}
        self.functions: set[bytes] = set()
        #: Per function: its sleeping workers in the order they joined (server/wakeups.py
        #: wakes the last), and how many woken workers have not answered yet.
        self.sleepers: dict[bytes, list[int]] = {}
        self.waking: dict[bytes, int] = {}
        self.finished: set[bytes] = set()
        self.issued = 0
        #: (client, function, unique, data) of earlier submits, to submit again (coalescing).
        self.submitted: list[tuple[int, bytes, bytes, bytes]] = []
        self.seq = itertools.count()
        self.observer_peer = FakePeer()
        self.observer = self.m.connect(self.observer_peer, "127.0.0.1")
        self.admin_conn = self.observer
        self.ctx = AdminContext(manager=self.m, version="t", verbose="ERROR", pid=1,
                                shutdown=lambda graceful: None)

    # ------------------------------------------------------------ helpers

    @initialize(retries=st.sampled_from([None, None, 0, 1, 2, 3]),
                fns=st.lists(st.sampled_from(FUNCS), min_size=1, max_size=3, unique=True))
    def setup(self, retries: int | None, fns: list[bytes]) -> None:
        self.m.job_retries = retries
        self.job_retries = retries
        self.new_client()
        self.new_worker(fns)

    def _handle(self, n: int) -> bytes:
        """A handle issued so far (or the next one, not yet issued), chosen by ``n``."""
        return b"H:sm:%d" % (n % (self.issued + 1) + 1)

    def _new_conn(self) -> MConn:
        peer = FakePeer()
        conn = self.m.connect(peer, "127.0.0.1")
        mc = MConn(conn.id, conn, peer)
        self.conns[mc.cid] = mc
        return mc

    def _send(self, mc: MConn, ptype: PacketType, *args: bytes) -> None:
        self.m.handle_packet(mc.conn, ptype, tuple(args), NOW)

    def _pick(self, ids: list[int], i: int) -> MConn:
        return self.conns[ids[i % len(ids)]]

    def _expect(self, cid: int, packet: Packet) -> None:
        self.conns[cid].expected.append(packet)

    def _tell_clients(self, job: MJob, packet: Packet) -> None:
        for cid in job.clients:
            self._expect(cid, packet)

    def _ready(self, fn: bytes) -> int:
        return sum(1 for j in self.jobs.values() if j.state == "queued" and j.fn == fn)

    def _unsleep(self, w: MConn) -> None:
        w.sleeping = False
        for cids in self.sleepers.values():
            if w.cid in cids:
                cids.remove(w.cid)

    def _wake(self, w: MConn, fn: bytes) -> None:
        if w.sleeping:
            self._unsleep(w)
        w.noop_sent = True
        if w.woken_for is None:
            w.woken_for = fn
            self.waking[fn] = self.waking.get(fn, 0) + 1
        self._expect(w.cid, res(PT.NOOP))

    def _rebalance(self, fn: bytes) -> None:
        sleepers = self.sleepers.setdefault(fn, [])
        while sleepers and self._ready(fn) > self.waking.get(fn, 0):
            self._wake(self.conns[sleepers[-1]], fn)

    def _answered(self, w: MConn) -> bytes | None:
        fn, w.woken_for = w.woken_for, None
        if fn is not None:
            self.waking[fn] -= 1
        return fn

    def _sleep_on(self, w: MConn, fn: bytes) -> None:
        cids = self.sleepers.setdefault(fn, [])
        if w.cid not in cids:
            cids.append(w.cid)

    def _enqueue(self, job: MJob) -> None:
        job.state = "queued"
        job.worker = None
        job.seq = next(self.seq)
        sleepers = self.sleepers.get(job.fn)
        if sleepers and self._ready(job.fn) > self.waking.get(job.fn, 0):
            self._wake(self.conns[sleepers[-1]], job.fn)

    def _unindex(self, job: MJob) -> None:
        if job.key is not None and self.index.get(job.key) == job.handle:
            del self.index[job.key]
        job.key = None

    def _remove(self, job: MJob) -> None:
        self._unindex(job)
        del self.jobs[job.handle]
        job.clients = []

    def _lost(self, job: MJob, w: MConn) -> None:
        w.assigned.remove(job.handle)
        job.worker = None
        job.status = (b"0", b"0")
        if job.cancelled or (not job.background and not job.clients):
            self._remove(job)
            return
        job.retries += 1
        limit = self.job_retries
        if limit is not None and job.retries >= max(limit, 1):
            self._tell_clients(job, res(PT.WORK_FAIL, job.handle))
            self._remove(job)
            return
        self._enqueue(job)

    def _finish(self, job: MJob) -> None:
        assert job.worker is not None
        self.conns[job.worker].assigned.remove(job.handle)
        self.finished.add(job.handle)
        self._remove(job)

    def _check_deliveries(self) -> None:
        for mc in self.conns.values():
            got, mc.peer.packets = mc.peer.packets, []
            if not mc.alive:
                assert got == [], f"packets sent to closed connection {mc.cid}: {got}"
                continue
            assert got == mc.expected, f"conn {mc.cid}: got {got}, expected {mc.expected}"
            mc.expected = []

    # ------------------------------------------------------------ connections

    @precondition(lambda self: len(self.clients) < MAX_CONNS)
    @rule()
    def new_client(self) -> None:
        self.clients.append(self._new_conn().cid)

    @precondition(lambda self: len(self.workers) < MAX_CONNS)
    @rule(fns=st.lists(st.sampled_from(FUNCS), min_size=1, max_size=3, unique=True))
    def new_worker(self, fns: list[bytes]) -> None:
        w = self._new_conn()
        self.workers.append(w.cid)
        for fn in fns:
            self._send(w, PT.CAN_DO, fn)
            w.abilities.append(fn)
            self.functions.add(fn)
        self._check_deliveries()

    @precondition(lambda self: self.clients)
    @rule(i=st.integers(0, 99))
    def client_leaves(self, i: int) -> None:
        c = self._pick(self.clients, i)
        self.m.disconnect(c.conn, NOW)
        c.alive = False
        self.clients.remove(c.cid)
        for job in list(self.jobs.values()):
            if c.cid not in job.clients:
                continue
            job.clients = [x for x in job.clients if x != c.cid]
            if job.clients or job.background:
                continue
            self._unindex(job)
            if job.state == "queued":
                self._remove(job)
            # running: left to its worker, results discarded
        self._check_deliveries()

    @precondition(lambda self: self.workers)
    @rule(i=st.integers(0, 99))
    def worker_leaves(self, i: int) -> None:
        w = self._pick(self.workers, i)
        self.m.disconnect(w.conn, NOW)
        w.alive = False
        self.workers.remove(w.cid)
        w.abilities = []
        self._unsleep(w)
        woke = self._answered(w)
        for handle in list(w.assigned):
            self._lost(self.jobs[handle], w)
        if woke is not None:
            self._rebalance(woke)
        self._check_deliveries()

    @precondition(lambda self: self.workers)
    @rule(i=st.integers(0, 99))
    def worker_reconnects(self, i: int) -> None:
        abilities = list(self._pick(self.workers, i).abilities)
        self.worker_leaves(i)
        self.new_worker(abilities)

    @precondition(lambda self: self.workers)
    @rule(i=st.integers(0, 99))
    def worker_crashes_while_busy(self, i: int) -> None:
        self.grab(i, PT.GRAB_JOB, progress=True)
        self.worker_reconnects(i)

    # ------------------------------------------------------------ clients

    @precondition(lambda self: self.clients)
    @rule(i=st.integers(0, 99), fn=st.sampled_from(FUNCS), unique=st.sampled_from(UNIQUES),
          data=st.sampled_from(DATAS), prio=st.sampled_from(list(Priority)), bg=st.booleans())
    def submit(self, i: int, fn: bytes, unique: bytes, data: bytes, prio: Priority,
               bg: bool) -> None:
        c = self._pick(self.clients, i)
        self._send(c, SUBMIT_TYPE_FOR[(prio, bg)], fn, unique, data)
        self.functions.add(fn)
        self.submitted.append((c.cid, fn, unique, data))
        key: tuple[bytes, ...] | None
        if unique == b"-":
            key = (fn, b"-", data) if data else None
        elif unique:
            key = (fn, unique)
        else:
            key = None
        if key is not None and key in self.index:
            job = self.jobs[self.index[key]]
            if bg:
                job.background = True
            else:
                job.clients.append(c.cid)
        else:
            self.issued += 1
            handle = b"H:sm:%d" % self.issued
            job = MJob(handle, fn, unique, data, prio, bg, key)
            self.jobs[handle] = job
            if key is not None:
                self.index[key] = handle
            if not bg:
                job.clients.append(c.cid)
            self._enqueue(job)
        self._expect(c.cid, res(PT.JOB_CREATED, job.handle))
        self._check_deliveries()

    @precondition(lambda self: self.clients and self.submitted)
    @rule(i=st.integers(0, 99), n=st.integers(0, 99), prio=st.sampled_from(list(Priority)),
          bg=st.booleans(), same_client=st.booleans())
    def submit_again(self, i: int, n: int, prio: Priority, bg: bool, same_client: bool) -> None:
        # recent submits: their jobs are more likely still queued or running
        cid, fn, unique, data = self.submitted[-1 - n % min(4, len(self.submitted))]
        if same_client and cid in self.clients:
            i = self.clients.index(cid)
        self.submit(i, fn, unique, data, prio, bg)

    @precondition(lambda self: self.clients)
    @rule(i=st.integers(0, 99), n=st.integers(0, 99))
    def get_status(self, i: int, n: int) -> None:
        c = self._pick(self.clients, i)
        handle = self._handle(n)
        self._send(c, PT.GET_STATUS, handle)
        job = self.jobs.get(handle)
        if job is None or job.cancelled:
            self._expect(c.cid, res(PT.STATUS_RES, handle, b"0", b"0", b"0", b"0"))
        else:
            running = b"1" if job.state == "running" else b"0"
            self._expect(c.cid, res(PT.STATUS_RES, handle, b"1", running, *job.status))
        self._check_deliveries()

    @rule(n=st.integers(0, 99))
    def cancel(self, n: int) -> None:
        handle = self._handle(n)
        job = self.jobs.get(handle)
        assert self.m.cancel(handle) == (job is not None)
        if job is not None:
            job.cancelled = True
            self._tell_clients(job, res(PT.WORK_FAIL, handle))
            if job.state == "queued":
                self._remove(job)
            else:
                job.clients = []
                self._unindex(job)
        self._check_deliveries()

    # ------------------------------------------------------------ workers

    @precondition(lambda self: self.workers)
    @rule(i=st.integers(0, 99), fn=st.sampled_from(FUNCS))
    def can_do(self, i: int, fn: bytes) -> None:
        w = self._pick(self.workers, i)
        self._send(w, PT.CAN_DO, fn)
        self.functions.add(fn)
        if fn in w.abilities:
            w.abilities.remove(fn)
        w.abilities.append(fn)
        if w.sleeping and not w.noop_sent:
            if self._ready(fn):
                self._wake(w, fn)
            else:
                self._sleep_on(w, fn)
        self._check_deliveries()

    def _unregister(self, w: MConn, fn: bytes) -> None:
        if fn not in w.abilities:
            return
        w.abilities.remove(fn)
        if w.cid in self.sleepers.get(fn, []):
            self.sleepers[fn].remove(w.cid)
        woke = self._answered(w) if w.woken_for == fn else None
        for handle in [h for h in w.assigned if self.jobs[h].fn == fn]:
            self._lost(self.jobs[handle], w)
        if woke is not None:
            self._rebalance(woke)

    @precondition(lambda self: self.workers)
    @rule(i=st.integers(0, 99), fn=st.sampled_from(FUNCS))
    def cant_do(self, i: int, fn: bytes) -> None:
        w = self._pick(self.workers, i)
        self._send(w, PT.CANT_DO, fn)
        self._unregister(w, fn)
        self._check_deliveries()

    @precondition(lambda self: self.workers)
    @rule(i=st.integers(0, 99))
    def reset_abilities(self, i: int) -> None:
        w = self._pick(self.workers, i)
        self._send(w, PT.RESET_ABILITIES)
        for fn in list(w.abilities):
            self._unregister(w, fn)
        self._check_deliveries()

    @precondition(lambda self: self.workers)
    @rule(i=st.integers(0, 99))
    def pre_sleep(self, i: int) -> None:
        w = self._pick(self.workers, i)
        self._send(w, PT.PRE_SLEEP)
        woke = self._answered(w)
        work = [fn for fn in w.abilities if self._ready(fn)]
        if work:
            self._wake(w, work[0])
        else:
            w.sleeping = True
            w.noop_sent = False
            for fn in w.abilities:
                self._sleep_on(w, fn)
        if woke is not None:
            self._rebalance(woke)
        self._check_deliveries()

    @precondition(lambda self: self.workers)
    @rule(i=st.integers(0, 99), ptype=st.sampled_from(list(GRABS)), progress=st.booleans())
    def grab(self, i: int, ptype: PacketType, progress: bool) -> None:
        w = self._pick(self.workers, i)
        self._send(w, ptype)
        if w.sleeping:
            self._unsleep(w)
        w.noop_sent = False
        woke = self._answered(w)
        (reply,) = w.peer.packets
        w.peer.packets = []
        ready = [j for j in self.jobs.values() if j.state == "queued" and j.fn in w.abilities]
        if not ready:
            assert reply == res(PT.NO_JOB)
            if woke is not None:
                self._rebalance(woke)
            self._check_deliveries()
            return
        assert reply.type == GRABS[ptype], reply
        handle = reply.args[0]
        assert handle in self.jobs, f"{handle!r} is not a live job"
        job = self.jobs[handle]
        assert job.state == "queued", f"{handle!r} handed out while {job.state}"
        assert job.fn in w.abilities
        best = min(j.prio for j in ready)
        assert job.prio == best, f"priority {job.prio} handed out before {best}"
        head = min((j for j in ready if j.fn == job.fn and j.prio == job.prio),
                   key=lambda j: j.seq)
        assert head is job, "not FIFO within the function's level"
        if ptype == PT.GRAB_JOB:
            assert reply == res(PT.JOB_ASSIGN, handle, job.fn, job.data)
        else:
            assert reply == res(PT.JOB_ASSIGN_UNIQ, handle, job.fn, job.unique, job.data)
        job.state = "running"
        job.worker = w.cid
        w.assigned.append(handle)
        if woke is not None:
            self._rebalance(woke)
        if progress:  # a status that a requeue must reset
            self._send(w, PT.WORK_STATUS, handle, b"1", b"3")
            job.status = (b"1", b"3")
            self._tell_clients(job, res(PT.WORK_STATUS, handle, b"1", b"3"))
        self._check_deliveries()

    @precondition(lambda self: any(self.conns[c].assigned for c in self.workers))
    @rule(i=st.integers(0, 99), j=st.integers(0, 99),
          kind=st.sampled_from(["complete", "fail", "data", "status", "exception"]))
    def work(self, i: int, j: int, kind: str) -> None:
        busy = [c for c in self.workers if self.conns[c].assigned]
        w = self._pick(busy, i)
        handle = w.assigned[j % len(w.assigned)]
        job = self.jobs[handle]
        if kind == "complete":
            self._send(w, PT.WORK_COMPLETE, handle, b"result")
            self._tell_clients(job, res(PT.WORK_COMPLETE, handle, b"result"))
            self._finish(job)
        elif kind == "fail":
            self._send(w, PT.WORK_FAIL, handle)
            self._tell_clients(job, res(PT.WORK_FAIL, handle))
            self._finish(job)
        elif kind == "exception":
            # no client here sets the exceptions option: it becomes a bare WORK_FAIL
            self._send(w, PT.WORK_EXCEPTION, handle, b"boom")
            self._tell_clients(job, res(PT.WORK_FAIL, handle))
            self._finish(job)
        elif kind == "data":
            self._send(w, PT.WORK_DATA, handle, b"chunk")
            self._tell_clients(job, res(PT.WORK_DATA, handle, b"chunk"))
        else:
            self._send(w, PT.WORK_STATUS, handle, b"1", b"3")
            job.status = (b"1", b"3")
            self._tell_clients(job, res(PT.WORK_STATUS, handle, b"1", b"3"))
        self._check_deliveries()

    # Hypothesis picks rules uniformly: these twins make grabbing and reporting as
    # frequent as the housekeeping rules together, so jobs really run and get lost.
    @precondition(lambda self: self.workers)
    @rule(i=st.integers(0, 99), ptype=st.sampled_from(list(GRABS)))
    def grab_more(self, i: int, ptype: PacketType) -> None:
        self.grab(i, ptype, progress=False)

    @precondition(lambda self: any(self.conns[c].assigned for c in self.workers))
    @rule(i=st.integers(0, 99), j=st.integers(0, 99),
          kind=st.sampled_from(["complete", "fail", "data", "status", "exception"]))
    def work_more(self, i: int, j: int, kind: str) -> None:
        self.work(i, j, kind)

    @precondition(lambda self: self.workers)
    @rule(i=st.integers(0, 99), n=st.integers(0, 99))
    def work_on_foreign_job(self, i: int, n: int) -> None:
        w = self._pick(self.workers, i)
        handle = self._handle(n)
        if handle in w.assigned:
            return
        self._send(w, PT.WORK_COMPLETE, handle, b"stolen")
        self._expect(w.cid, res(PT.ERROR, b"JOB_NOT_FOUND",
                                b"Job given in work result not found"))
        self._check_deliveries()

    # ------------------------------------------------------------ invariants

    @invariant()
    def same_jobs(self) -> None:
        assert set(self.m.jobs) == set(self.jobs)
        for job in self.jobs.values():
            assert job.handle not in self.finished

    @invariant()
    def status_counts(self) -> None:
        rows = []
        for fn in sorted(self.functions):
            mine = [j for j in self.jobs.values() if j.fn == fn]
            running = sum(1 for j in mine if j.state == "running")
            workers = sum(1 for c in self.workers if fn in self.conns[c].abilities)
            if mine or workers:  # a function nothing refers to is freed (issue 12)
                rows.append(b"%s\t%d\t%d\t%d\n" % (fn, len(mine), running, workers))
        reply = handle_admin(self.ctx, self.admin_conn, parse_admin_line(b"status"))
        assert reply == b"".join(rows) + b".\n"

    @invariant()
    def get_status_of_every_job(self) -> None:
        handles = list(self.jobs) + [self._handle(n) for n in range(3)]
        uniques = (b"u1", b"u2")
        for handle in handles:
            self.m.handle_packet(self.observer, PT.GET_STATUS, (handle,), NOW)
        for unique in uniques:
            self.m.handle_packet(self.observer, PT.GET_STATUS_UNIQUE, (unique,), NOW)
        expected = []
        for handle in handles:
            job = self.jobs.get(handle)
            if job is None or job.cancelled:
                expected.append(res(PT.STATUS_RES, handle, b"0", b"0", b"0", b"0"))
            else:
                running = b"1" if job.state == "running" else b"0"
                expected.append(res(PT.STATUS_RES, handle, b"1", running, *job.status))
        for unique in uniques:
            # The oldest job a submit with this unique would join; a cancelled or
            # abandoned job (out of the unique index) is unknown to this query.
            live = [j for j in self.jobs.values() if j.unique == unique and not j.cancelled]
            indexed = [j for j in live if j.key is not None]
            if not indexed:
                expected.append(res(PT.STATUS_RES_UNIQUE, unique, b"0", b"0", b"0", b"0", b"0"))
                continue
            job = indexed[0]
            running = b"1" if job.state == "running" else b"0"
            expected.append(res(PT.STATUS_RES_UNIQUE, unique, b"1", running, *job.status,
                                b"%d" % len(job.clients)))
        got, self.observer_peer.packets = self.observer_peer.packets, []
        assert got == expected

    @invariant()
    def waiting_clients_have_live_jobs(self) -> None:
        for job in self.jobs.values():
            for cid in job.clients:
                assert self.conns[cid].alive
            if job.state == "running":
                assert job.worker is not None and self.conns[job.worker].alive
                assert job.handle in self.conns[job.worker].assigned

    @invariant()
    def no_job_waits_while_a_capable_worker_sleeps(self) -> None:
        for fn in self.functions:
            ready = self._ready(fn)
            if self.sleepers.get(fn):
                assert self.waking.get(fn, 0) >= ready, \
                    f"{fn!r}: {ready} ready, {self.waking.get(fn, 0)} woken, sleepers asleep"
            record = self.m.functions.get(fn)
            if record is not None:
                assert record.waking == self.waking.get(fn, 0)
                assert list(record.sleepers) == [self.conns[c].conn
                                                 for c in self.sleepers.get(fn, [])]


ManagerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=80,
                                            deadline=None)
TestManagerMachine = ManagerMachine.TestCase

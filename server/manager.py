"""The request translator: each Gear request packet onto a ``JobCore`` call (``Manager``).

The packets' arguments are read here (numbers as C's strtoll reads them, cron fields,
limits on handles and uniques), and the replies that are a direct answer (ECHO_RES,
STATUS_RES, JOB_ASSIGN, NO_JOB, errors) are sent from here; the job's life is the core's.
Section numbers (§) point at the protocol reference summarised in docs/architecture.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Final

from protocol import SUBMIT_KINDS, PacketType

from .acl import Acl, plain, prefix_of
from .core import PRIORITIES
from .events import Events
from .jobs import (
    MAX_HANDLE,
    MAX_UNIQUE,
    Conn,
    Function,
    Job,
    Limits,
    Peer,
    creation_order,
    index_key,
    next_cron_time,
)
from .jobs import parse_int as _parse_int
from .outcomes import Outcomes
from .retry import RetryPolicy

__all__ = ["PRIORITIES", "Conn", "Function", "Job", "Limits", "Manager", "next_cron_time"]

log = logging.getLogger(__name__)

PT = PacketType

# Texts of the reference's JOB_NOT_FOUND errors, per work packet (spec §1.3).
_NOT_FOUND_TEXT: Final = {
    PT.WORK_STATUS: b"Job given in work result not found",
    PT.WORK_COMPLETE: b"Job given in work result not found",
    PT.WORK_FAIL: b"Job given in work result not found",
    PT.WORK_DATA: b"Job does not exist on server",
    PT.WORK_WARNING: b"Job does not exist on server",
    PT.WORK_EXCEPTION: b"An exception was received for a job that does not exist",
}


class Manager(Outcomes):
    """The job core, driven by request packets (``handle_packet``) and by the server."""

    def __init__(
        self,
        *,
        handle_prefix: str = "H:localhost",
        job_retries: int | None = None,
        worker_wakeup: int = 0,
        exceptions: bool = False,
        limits: Limits | None = None,
    ) -> None:
        super().__init__(handle_prefix=handle_prefix, job_retries=job_retries,
                         worker_wakeup=worker_wakeup, exceptions=exceptions, limits=limits)
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
        #: Connections ever opened (``conns`` holds those open now), and by front-end.
        self.connections_total = 0
        self.connections_by_kind: dict[str, int] = {}
        #: Job life-cycle events (``attach_events``); None = never emitted.
        self.events: Events | None = None
        #: Job lines are logged (``log_jobs`` is also on while events are listened to).
        self.logging_jobs = self.log_jobs
        #: Cluster (``server.cluster``): runs a queued foreground job no worker here can
        #: do on another server; answers GET_STATUS for a handle held elsewhere (True
        #: when it will answer). None outside a cluster.
        self.relay_hook: Callable[[Job, float], None] | None = None
        self.status_hook: Callable[[Conn, bytes], bool] | None = None
        #: Cluster: a stored job's WORK_STATUS, shared for GET_STATUS on other servers.
        self.progress_hook: Callable[[Job], None] | None = None
        #: Cluster: a relayed foreground job that no client waits for any more.
        self.unwanted_hook: Callable[[Job], None] | None = None
        #: Cluster: the last worker of a function with queued jobs left this server.
        self.workers_gone_hook: Callable[[Function, float], None] | None = None
        #: Access rules and tenants (``attach_acl``); None = everyone may do everything.
        self.acl: Acl | None = None
        #: Connections that asked for the ``attempts`` option.
        self.attempt_conns: set[int] = set()

    def connect(self, peer: Peer, address: str = "-", port: int = 0,
                kind: str = "gear") -> Conn:
        """Register a new connection (and count it, by the front-end it came in by)."""
        self.connections_total += 1
        self.connections_by_kind[kind] = self.connections_by_kind.get(kind, 0) + 1
        conn = super().connect(peer, address, port)
        conn.kind = kind
        return conn

    def connections_now(self) -> dict[str, int]:
        """Open connections by what they are: workers (they registered functions),
        admin (they sent admin commands), clients (other Gear connections), and those of
        the HTTP and memcached front-ends."""
        counts = {"client": 0, "worker": 0, "admin": 0, "http": 0, "memcached": 0}
        for conn in self.conns.values():
            if conn.kind != "gear":
                counts[conn.kind] = counts.get(conn.kind, 0) + 1
            elif conn.abilities:
                counts["worker"] += 1
            elif conn.admin:
                counts["admin"] += 1
            else:
                counts["client"] += 1
        return counts

    def submit(self, conn: Conn, function: bytes, unique: bytes, data: bytes,
               priority: int, background: bool, now: float, *, when: float = 0,
               reducer: bytes = b"") -> Job | None:
        job = super().submit(conn, function, unique, data, priority, background, now,
                             when=when, reducer=reducer)
        if (self.relay_hook is not None and job is not None and job.queued
                and not job.background and not job.function.workers):
            self.relay_hook(job, now)
        return job

    def policy_for(self, job: Job) -> RetryPolicy | None:
        # Cluster: a job run by another member was retried there; its WORK_FAIL is final.
        worker = job.worker
        if worker is not None and worker.kind == "cluster":
            return None
        return super().policy_for(job)

    def _unwanted(self, job: Job) -> None:
        super()._unwanted(job)
        if (self.unwanted_hook is not None and job.worker is not None
                and job.worker.kind == "cluster"):
            self.unwanted_hook(job)

    def disconnect(self, conn: Conn, now: float) -> None:
        """Forget a connection (and its ``watch``, if any)."""
        names = list(conn.abilities) if self.workers_gone_hook is not None else []
        super().disconnect(conn, now)
        self.attempt_conns.discard(conn.id)
        if self.events is not None and self.events.watchers:
            self.events.unwatch(conn.id)
        if self.acl is not None:
            self.acl.forget(conn)
        for name in names:
            self._workers_gone(name, now)

    def _unregister(self, conn: Conn, name: bytes, now: float) -> None:
        super()._unregister(conn, name, now)
        if self.workers_gone_hook is not None:
            self._workers_gone(name, now)

    def _workers_gone(self, name: bytes, now: float) -> None:
        """Cluster: jobs queued for a function this server has no worker for any more
        can run elsewhere."""
        fn = self.functions.get(name)
        if (fn is not None and not fn.workers and (fn.live[0] or fn.live[1] or fn.live[2])
                and self.workers_gone_hook is not None):
            self.workers_gone_hook(fn, now)

    # ------------------------------------------------------------------ access rules

    def attach_acl(self, acl: Acl) -> None:
        """Check each register and submit against ``acl``, with each tenant's function
        names in its own namespace (``server.acl``). A server without pays nothing."""
        self.acl = acl
        dispatch = self._dispatch
        for ptype in (PT.CAN_DO, PT.CAN_DO_TIMEOUT):
            dispatch[ptype] = self._checked(dispatch[ptype], "register")
        dispatch[PT.CANT_DO] = self._checked(dispatch[PT.CANT_DO], "")
        for ptype in SUBMIT_KINDS:
            dispatch[ptype] = self._checked(dispatch[ptype], "submit")

    def _checked(self, handler: Callable[[Conn, tuple[bytes, ...], float], None],
                 right: str) -> Callable[[Conn, tuple[bytes, ...], float], None]:
        """``handler`` given the internal name of its function argument, once allowed."""
        acl = self.acl
        assert acl is not None

        def checked(conn: Conn, args: tuple[bytes, ...], now: float) -> None:
            if not right:  # CANT_DO: nothing to allow, only the name to find
                handler(conn, (acl.rights(conn).prefix + args[0],), now)
                return
            key = acl.key(conn, right, args[0], self.limits.max_name)
            if key is None or (right == "submit"
                               and self._over_quota(conn, key, args[1], args[-1])):
                return
            handler(conn, (key, *args[1:]), now)

        return checked

    def _over_quota(self, conn: Conn, key: bytes, unique: bytes, data: bytes) -> bool:
        """A new job would take the tenant past a limit: QUEUE_ERROR sent. A submit that
        joins an existing job adds none, so it is never refused here."""
        assert self.acl is not None
        joins = index_key(key, unique, data)
        if joins is not None and joins in self.unique_index:
            return False
        if not self.acl.queue_full(conn, key, self.functions, len(data)):
            return False
        log.warning("connection %d: tenant %s is at its queue limit; submit refused",
                    conn.id, conn.tenant)
        conn.peer.deliver(PT.ERROR, b"QUEUE_ERROR", b"Job queue is full")
        return True

    def submit_checked(self, conn: Conn, function: bytes, unique: bytes, data: bytes,
                       priority: int, background: bool, now: float) -> Job | None:
        """``submit`` for the other front-ends (HTTP, memcached): under the access rules."""
        if self.acl is not None:
            key = self.acl.key(conn, "submit", function, self.limits.max_name)
            if key is None or self._over_quota(conn, key, unique, data):
                return None
            function = key
        return self.submit(conn, function, unique, data, priority, background, now)

    def name_problem(self, name: bytes,
                     what: bytes = b"Function name") -> tuple[bytes, bytes] | None:
        # With access rules, a name reaching the core is internal (its plain part was
        # checked on the way in by ``Acl.key``, which refuses the separator).
        if self.acl is not None and what == b"Function name":
            name = plain(name)
        return super().name_problem(name, what)

    def acl_reloaded(self, now: float) -> None:
        """The rules changed: workers give up the functions they may no longer do, and
        ``watch`` connections that may no longer read (or now see another namespace) stop
        getting events."""
        acl = self.acl
        assert acl is not None
        for conn in list(self.conns.values()):
            for name in [n for n in conn.abilities if not acl.may_keep(conn, n)]:
                log.warning("connection %d: may no longer do %r after the ACL reload",
                            conn.id, plain(name))
                self._unregister(conn, name, now)
        if self.events is not None:
            self.events.recheck(lambda cid, prefix: acl.watch_refusal(self.conns.get(cid),
                                                                       prefix))

    def _unique_job(self, conn: Conn, unique: bytes) -> Job | None:
        """The job a submit of ``conn`` with this unique would join (GET_STATUS_UNIQUE)."""
        if self.acl is None:
            return self.job_by_unique(unique)
        self.job_by_unique(unique)  # builds the by_unique index
        assert self.by_unique is not None
        same = self.by_unique.get(unique)
        prefix = self.acl.rights(conn).prefix
        mine = [j for j in (same if isinstance(same, list) else [same] if same else [])
                if prefix_of(j.function.name) == prefix]
        return min(mine, key=creation_order) if mine else None

    # ------------------------------------------------------------------ events

    def attach_events(self, events: Events) -> None:
        """Emit job life-cycle events into ``events`` while anyone listens to them."""
        self.events = events
        events.on_change = self._events_changed
        self._events_changed()

    def _events_changed(self) -> None:
        # The one flag the hot paths check: on for logging, or while events are listened to.
        self.log_jobs = self.logging_jobs or (self.events is not None and self.events.active)

    def job_log(self, job: Job, event: str, conn: Conn | None = None, data: bytes | None = None,
                now: float = 0.0, kind: str = "") -> None:
        if self.logging_jobs:
            super().job_log(job, event, conn, data)
        events = self.events
        if kind and events is not None and events.active:
            events.emit(kind, job, now, conn, data)

    # ------------------------------------------------------------------ packets

    def handle_packet(self, conn: Conn, ptype: PacketType, args: tuple[bytes, ...],
                      now: float) -> None:
        """Act on one request packet (``\\0REQ`` magic already checked by the caller)."""
        handler = self._dispatch.get(ptype)
        if handler is None:
            conn.peer.deliver(PT.ERROR, b"INVALID_COMMAND", b"Command not expected")
            return
        handler(conn, args, now)

    def _echo(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        conn.peer.deliver(PT.ECHO_RES, args[0])

    def _set_client_id(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        problem = self.name_problem(args[0], b"Client id")
        if problem is not None:
            conn.peer.deliver(PT.ERROR, *problem)
            return
        conn.client_id = args[0][:127] or b"-"

    def _option(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        # As the reference, the name is compared up to a NUL (some clients send one).
        option = args[0].partition(b"\0")[0].lower()
        if option == b"exceptions":
            conn.exceptions = True
            conn.peer.deliver(PT.OPTION_RES, args[0])
        elif option == b"attempts":
            # Ours: each JOB_ASSIGN* is preceded by OPTION_RES "attempt=N".
            self.attempt_conns.add(conn.id)
            conn.peer.deliver(PT.OPTION_RES, args[0])
        else:
            conn.peer.deliver(PT.ERROR, b"UNKNOWN_OPTION",
                              b"Server does not recognize given option")

    def _all_yours(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        # decisions.md: accepted and ignored (the reference rejects it).
        pass

    def _submit_packet(self, ptype: PacketType) -> Callable[[Conn, tuple[bytes, ...], float],
                                                           None]:
        kind = SUBMIT_KINDS[ptype]
        priority = int(kind.priority)
        background = kind.background
        if not (kind.epoch or kind.sched or kind.reduce):
            def plain(conn: Conn, args: tuple[bytes, ...], now: float) -> None:
                self.submit(conn, args[0], args[1], args[2], priority, background, now)

            return plain  # the common kinds, without the checks below

        def submit(conn: Conn, args: tuple[bytes, ...], now: float) -> None:
            when = 0.0
            reducer = b""
            if kind.epoch:
                parsed = _parse_int(args[2])
                if parsed is None:
                    conn.peer.deliver(PT.ERROR, b"INVALID_ARGUMENT", b"Epoch time out of range")
                    return
                when = float(parsed)
            elif kind.sched:
                at = next_cron_time(args[2:7], now)
                if at is None:
                    conn.peer.deliver(PT.ERROR, b"INVALID_ARGUMENT",
                                      b"Schedule fields not understood")
                    return
                when = at
            elif kind.reduce:
                reducer = args[2]
            self.submit(conn, args[0], args[1], args[-1], priority, background,
                        now, when=when, reducer=reducer)

        return submit

    def _can_do(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        self._register(conn, args[0], None, now)

    def _can_do_timeout(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        if len(args[1]) > 20:
            conn.peer.deliver(PT.ERROR, b"INVALID_ARGUMENT", b"Timeout value too long")
            return
        ms = _parse_int(args[1]) or 0
        if 0 < ms < 1000:
            ms = 1000
        self._register(conn, args[0], ms / 1000 if ms > 0 else None, now)

    def _cant_do(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        self._unregister(conn, args[0], now)

    def _reset_abilities(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        for name in list(conn.abilities):
            self._unregister(conn, name, now)

    def _pre_sleep(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        woke = self.wakeups.answered(conn)  # it was woken and sleeps again: not for it
        work = self.work_for(conn)
        if work is not None:
            self.wakeups.wake(conn, work, now)
        else:
            conn.sleeping = True
            conn.noop_sent = False
            functions = self.functions
            for name in conn.abilities:
                fn = functions.get(name)
                if fn is not None:
                    fn.sleepers[conn] = None
        if woke is not None:
            self.wakeups.rebalance(woke, now)

    def _grabbed(self, conn: Conn, now: float) -> Job | None:
        """``grab``; a worker that asked for the ``attempts`` option hears the attempt's
        number first, as OPTION_RES ``attempt=N`` (gearmand(8), RETRIES AND DEAD
        LETTERS)."""
        job = self.grab(conn, now)
        if job is not None and conn.id in self.attempt_conns:
            conn.peer.deliver(PT.OPTION_RES, b"attempt=%d" % job.assignment)
        return job

    def _grab_job(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        job = self._grabbed(conn, now)
        if job is None:
            conn.peer.deliver(PT.NO_JOB)
        else:
            conn.peer.deliver(PT.JOB_ASSIGN, job.handle, self._shown(job), job.data)

    def _grab_job_uniq(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        job = self._grabbed(conn, now)
        if job is None:
            conn.peer.deliver(PT.NO_JOB)
        else:
            conn.peer.deliver(PT.JOB_ASSIGN_UNIQ, job.handle, self._shown(job), job.unique,
                              job.data)

    def _grab_job_all(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        job = self._grabbed(conn, now)
        if job is None:
            conn.peer.deliver(PT.NO_JOB)
        elif job.reducer:
            conn.peer.deliver(PT.JOB_ASSIGN_ALL, job.handle, self._shown(job), job.unique,
                              job.reducer, job.data)
        else:
            # As the reference: JOB_ASSIGN_UNIQ when there is no reducer (spec §1.3).
            conn.peer.deliver(PT.JOB_ASSIGN_UNIQ, job.handle, self._shown(job), job.unique,
                              job.data)

    def _shown(self, job: Job) -> bytes:
        """The job's function name as its worker knows it (a tenant's: plain)."""
        return job.function.name if self.acl is None else plain(job.function.name)

    def _owned(self, conn: Conn, ptype: PacketType, handle: bytes) -> Job | None:
        job = conn.assigned.get(handle)
        if job is None:
            conn.peer.deliver(PT.ERROR, b"JOB_NOT_FOUND", _NOT_FOUND_TEXT[ptype])
        return job

    def _forwarder(self, ptype: PacketType) -> Callable[[Conn, tuple[bytes, ...], float], None]:
        """WORK_DATA / WORK_WARNING: the same packet to every attached client."""

        def forward(conn: Conn, args: tuple[bytes, ...], now: float) -> None:
            job = self._owned(conn, ptype, args[0])
            if job is not None and job.clients:
                self._broadcast(job, ptype, *args)

        return forward

    def _work_status(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        job = self._owned(conn, PT.WORK_STATUS, args[0])
        if job is None:
            return
        # Stored as numbers, as the reference reads them (atoi); forwarded as sent.
        job.numerator = b"%d" % (_parse_int(args[1]) or 0)
        job.denominator = b"%d" % (_parse_int(args[2]) or 0)
        if self.progress_hook is not None and job.store_key is not None:
            self.progress_hook(job)
        if job.clients:
            self._broadcast(job, PT.WORK_STATUS, *args)

    def _work_complete(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        job = self._owned(conn, PT.WORK_COMPLETE, args[0])
        if job is None:
            return
        for client in job.clients:  # _broadcast, inline on this hot path
            client.peer.deliver(PT.WORK_COMPLETE, *args)
        if self.log_jobs:
            self.job_log(job, "complete", conn, args[1], now, "completed")
        job.function.stats.completed += 1
        if job.background and self.results is not None:
            self.record(job, True, args[1], now)
        self._finish(job, now)

    def _work_fail(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        job = self._owned(conn, PT.WORK_FAIL, args[0])
        if job is None or self.failed_attempt(job, conn, now, "WORK_FAIL"):
            return
        if job.clients:
            self._broadcast(job, PT.WORK_FAIL, job.handle)
        if self.log_jobs:
            self.job_log(job, "failed (WORK_FAIL)", conn, None, now, "failed")
        job.function.stats.failed += 1
        self.record(job, False, b"WORK_FAIL", now)
        self._finish(job, now)

    def _work_exception(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        job = self._owned(conn, PT.WORK_EXCEPTION, args[0])
        if job is None or (self.retry and self.failed_attempt(
                job, conn, now, "exception: " + args[1][:1024].decode("utf-8", "replace"))):
            return
        for client in job.clients:
            if client.exceptions:
                client.peer.deliver(PT.WORK_EXCEPTION, *args)
            else:
                # The bare handle: the reference's trailing NUL hangs libgearman.
                client.peer.deliver(PT.WORK_FAIL, job.handle)
        if self.log_jobs:
            text = args[1][:256].decode("utf-8", "replace")
            self.job_log(job, f"raised an exception: {text!r}", conn, args[1], now,
                         "exception")
        job.function.stats.exceptions += 1
        self.record(job, False, args[1], now)
        self._finish(job, now)

    # ------------------------------------------------------------------ status

    def _get_status(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        handle = args[0]
        if len(handle) > MAX_HANDLE:
            conn.peer.deliver(PT.ERROR, b"ARGUMENT_TOO_LARGE", b"Job handle too long")
            return
        if b"\0" in handle:
            # It would not fit the reply, where the handle is not the last argument.
            conn.peer.deliver(PT.ERROR, b"INVALID_ARGUMENT", b"Job handle contains NUL")
            return
        job = self.jobs.get(handle)
        if job is None and self.status_hook is not None and self.status_hook(conn, handle):
            return
        if job is None or job.cancelled or (self.acl is not None
                                            and not self.acl.sees(conn, job)):
            conn.peer.deliver(PT.STATUS_RES, handle, b"0", b"0", b"0", b"0")
            return
        running = b"1" if job.worker is not None else b"0"
        conn.peer.deliver(PT.STATUS_RES, handle, b"1", running,
                                     job.numerator, job.denominator)

    def _get_status_unique(self, conn: Conn, args: tuple[bytes, ...], now: float) -> None:
        unique = args[0]
        if len(unique) > MAX_UNIQUE:
            conn.peer.deliver(PT.ERROR, b"ARGUMENT_TOO_LARGE", b"Unique value too large")
            return
        if b"\0" in unique:
            conn.peer.deliver(PT.ERROR, b"INVALID_ARGUMENT", b"Unique value contains NUL")
            return
        # The job a submit with this unique would join, in any function; jobs cancelled
        # or abandoned are no longer in the index.
        job = self._unique_job(conn, unique) if unique and unique != b"-" else None
        if job is None:
            conn.peer.deliver(PT.STATUS_RES_UNIQUE, unique, b"0", b"0", b"0", b"0", b"0")
            return
        running = b"1" if job.worker is not None else b"0"
        conn.peer.deliver(PT.STATUS_RES_UNIQUE, unique, b"1", running, job.numerator,
                          job.denominator, str(len(job.clients)).encode())

    # ------------------------------------------------------------------ admin

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
                fn.stats.live = False
                del self.functions[fname]
                return None
        return "function not found"

    def cancel(self, handle: bytes) -> bool:
        """``cancel job``: fail attached clients, drop the stored copy (decisions.md)."""
        job = self.jobs.get(handle)
        if job is None:
            return False
        if self.log_jobs:
            self.job_log(job, "cancelled by the admin", kind="cancelled")
        job.cancelled = True
        job.function.stats.cancelled += 1
        if job.clients:
            self._broadcast(job, PT.WORK_FAIL, job.handle)
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
            job.clients = ()
            self._unindex(job)
            if job.store_key is not None and self.store is not None:
                self.store.forget(job.store_key)
            job.store_key = None
        else:
            self._forget(job)
        return True

    def background_jobs(self) -> Iterator[Job]:
        """Background jobs held now and not cancelled (the shutdown snapshot)."""
        return (j for j in list(self.jobs.values()) if j.background and not j.cancelled)

    def busy(self) -> bool:
        """Whether any job runs, or a foreground job waits (graceful shutdown waits)."""
        return any(j.worker is not None or (j.clients and j.queued)
                   for j in self.jobs.values())

    def iter_jobs(self) -> Iterator[Job]:
        """Every job the server holds (queued, waiting, running), in handle order."""
        return iter(list(self.jobs.values()))

"""gearmand's life cycle: the job core, its persistence and its front-ends, put together.

``Server`` owns no job logic and no wire format. It opens the store and replays it, starts
the front-ends (Gear always; HTTP and memcached with ``-r``), runs the core's timer, and
stops in order: listeners closed, running work drained (graceful), requests stopped, the
store's last commit, then everything else. It is the ``Host`` each front-end is given.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable

import trio

from .acl import Acl, AclError
from .admin import AdminContext
from .config import ServerConfig
from .daemon import StartupError
from .events import Events
from .gear import GearFrontEnd
from .gear_peer import GearPeer
from .host import Address, FrontEnd
from .jobs import InternalPeer
from .manager import Conn, Limits, Manager
from .persistence import Persistence
from .results_io import open_cache, run_writer
from .retry import RetryPolicies

log = logging.getLogger(__name__)


class Server:
    """gearmand: ``await Server(config).serve()`` until ``shutdown()``."""

    def __init__(self, config: ServerConfig) -> None:
        self._config = config
        self._manager = Manager(
            handle_prefix=config.job_handle_prefix,
            job_retries=config.job_retries,
            worker_wakeup=config.worker_wakeup,
            exceptions=config.exceptions,
            limits=Limits(max_name=config.max_name_length, max_functions=config.max_functions,
                          max_worker_functions=config.max_worker_functions),
        )
        self._manager.retry = RetryPolicies(dict(config.retry_policies))
        self._manager.dead_letters.limit = config.max_dead_letters
        if config.result_ttls:
            results = open_cache(config.result_cache, dict(config.result_ttls),
                                 config.result_cache_bytes)
            self._manager.results = results
            if results.remote and "cluster" not in dict(config.queue_options):
                # Handles count from 1 at each start: in a cache that outlives the server,
                # an old handle must not find a newer job's result. (A cluster member's
                # handles carry such a token already.)
                self._manager.handle_prefix += secrets.token_hex(3).encode() + b":"
        self.events = Events(config.events_buffer, config.events_payloads,
                             config.events_function.encode()
                             if config.events_function is not None else None)
        self._manager.attach_events(self.events)
        if config.events_function is not None:
            self.events.add_hook(self._events_hook(config.events_function.encode()))
        self.acl: Acl | None = None
        if config.acl_file is not None:
            try:
                self.acl = Acl.from_file(config.acl_file)
            except AclError as exc:
                raise StartupError(str(exc)) from None
            self._manager.attach_acl(self.acl)
        self._admin = AdminContext(
            manager=self._manager,
            version=config.version,
            verbose=config.verbose,
            pid=os.getpid(),
            shutdown=self.shutdown,
            admin_from_anywhere=config.admin_from_anywhere,
            server_stats=self.server_stats,
            acl=self.acl,
            defer=self._defer_admin,
        )
        #: Where the Gear front-end listens, once serving.
        self.addresses: list[Address] = []
        #: Where each ``-r`` front-end listens, by name, once serving.
        self.frontend_addresses: dict[str, list[Address]] = {}
        #: ``--ssl``: built here, so that a bad certificate stops start-up before binding.
        self._tls_context: ssl.SSLContext | None = None
        self.gear = GearFrontEnd(self, config.port) if config.tls is None else self._tls_gear()
        self.frontends: list[FrontEnd] = [self.gear, *self._extra_frontends()]
        self.persistence: Persistence | None = None
        self._shutdown = trio.Event()
        self._graceful = False
        self._accepting: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._timer_wake = trio.Event()
        self._timer_target = math.inf
        self._flush_wake = trio.Event()
        self._flush_scheduled = False

    def _events_hook(self, function: bytes) -> Callable[[bytes], None]:
        """``--events-function``: each event a background job to ``function``, submitted
        on an internal connection (whose replies nobody reads)."""
        manager = self._manager
        conn = manager.connect(InternalPeer("events: submit refused"), "internal", 0, "internal")
        conn.client_id = b"events"

        def submit(line: bytes) -> None:
            manager.submit(conn, function, b"", line, 1, True, time.time())

        return submit

    def _defer_admin(self, conn: Conn, answer: Callable[[], Awaitable[bytes]]) -> None:
        """An admin reply that needs I/O (a remote result cache): its place in the
        connection's output is held, and filled by a task."""
        peer = conn.peer
        if not isinstance(peer, GearPeer):
            return
        hold = peer.hold()

        async def reply() -> None:
            peer.release_raw(hold, await answer())
            self.changed()

        self.spawn(reply)

    def _tls_gear(self) -> GearFrontEnd:
        """``--ssl``: the context (a bad certificate stops start-up here, before binding)
        and the Gear front-end that speaks TLS (server/gear_tls.py)."""
        from .gear_tls import TlsGearFrontEnd
        from .tls import TlsSetupError, server_context
        assert self._config.tls is not None
        try:
            self._tls_context = server_context(self._config.tls)
        except TlsSetupError as exc:
            raise StartupError(str(exc)) from None
        return TlsGearFrontEnd(self, self._config.port)

    def _extra_frontends(self) -> list[FrontEnd]:
        config = self._config
        extra: list[FrontEnd] = []
        for name in config.protocols:
            # Imported here: a server without -r needs none of these modules.
            if name == "http":
                from .http import HttpFrontEnd
                extra.append(HttpFrontEnd(self, config.http_port))
            elif name == "memcached":
                from .memcache import MemcachedFrontEnd
                extra.append(MemcachedFrontEnd(self, config.memcached_port))
            else:
                raise ValueError(f"unknown protocol {name!r}")
        if config.metrics_port is not None:
            from .http import MetricsFrontEnd
            extra.append(MetricsFrontEnd(self, config.metrics_port))
        return extra

    def reload_acl(self) -> None:
        """SIGHUP: read the ACL file again; a bad one keeps the rules in force (logged)."""
        if self.acl is not None and self.acl.reload():
            self._manager.acl_reloaded(time.time())
            self.changed()

    def server_stats(self) -> dict[str, object]:
        """Counters beyond the core's: Gear traffic and the store's commits."""
        packets_in, bytes_in, packets_out, bytes_out = self.gear.traffic
        report: dict[str, object] = {
            "gear": {"packets_in": packets_in, "bytes_in": bytes_in,
                     "packets_out": packets_out, "bytes_out": bytes_out},
        }
        if self.persistence is not None:
            writer = self.persistence.writer
            report["store"] = {
                "queue": self._config.queue_type, "commits": writer.commits,
                "failures": writer.failures, "batch_jobs_sum": writer.batch_jobs_sum,
                "commit_seconds": {"counts": list(writer.commit_seconds),
                                   "count": writer.commits,
                                   "sum": writer.commit_seconds_sum},
            }
            cluster_stats = getattr(self.persistence, "cluster_stats", None)
            if cluster_stats is not None:
                report["cluster"] = cluster_stats()
        return report

    # ------------------------------------------------------------------ the Host

    @property
    def config(self) -> ServerConfig:
        return self._config

    @property
    def manager(self) -> Manager:
        return self._manager

    @property
    def admin(self) -> AdminContext:
        return self._admin

    @property
    def tls_context(self) -> ssl.SSLContext | None:
        return self._tls_context

    @property
    def http_addresses(self) -> list[Address]:
        return self.frontend_addresses.get("http", [])

    @property
    def metrics_addresses(self) -> list[Address]:
        return self.frontend_addresses.get("metrics", [])

    def changed(self) -> None:
        """Flush every front-end's output after every task runnable now has run (so output
        for one peer from several tasks goes out in one write), and re-arm the timer."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._flush_wake.set()
        self._poke_timer()

    def deadlines_changed(self) -> None:
        self._poke_timer()

    def spawn(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn, *args)

    # ------------------------------------------------------------------ life cycle

    def shutdown(self, graceful: bool = False) -> None:
        """Ask the server to stop; graceful lets running work finish within a bound."""
        self._graceful = self._graceful or graceful
        if self._accepting is not None:
            self._accepting.cancel()
        self._shutdown.set()

    async def serve(self, *, task_status: trio.TaskStatus[list[Address]]
                    = trio.TASK_STATUS_IGNORED) -> None:
        """Open and replay the store, start the front-ends, report the Gear addresses,
        serve until shutdown."""
        config = self._config
        if config.queue_type.lower() == "postgres" and dict(config.queue_options).get(
                "cluster"):
            from .cluster.member import ClusterPersistence  # only a cluster member needs it
            cluster = ClusterPersistence(self._manager, config, self.changed)
            self._admin.shared_counts = cluster.node.shared_counts
            self.persistence = cluster
        elif config.queue_type.lower() != "builtin":
            self.persistence = Persistence.open(self._manager, config, self.changed)
        persistence = self.persistence
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if persistence is not None:
                await persistence.replay()
                await nursery.start(persistence.run)
            nursery.start_soon(self._timer)
            results = self._manager.results
            if results is not None and results.remote:
                nursery.start_soon(run_writer, results)
            nursery.start_soon(self._flusher)
            with trio.CancelScope() as accepting:
                self._accepting = accepting
                if self._shutdown.is_set():
                    accepting.cancel()
                async with trio.open_nursery() as fronts:
                    for frontend in self.frontends:
                        # Shielded: started() is a no-op in a cancelled caller.
                        with trio.CancelScope(shield=True):
                            bound = await fronts.start(frontend.serve)
                        self.frontend_addresses[frontend.name] = bound
                    self.addresses = self.frontend_addresses["gear"]
                    task_status.started(list(self.addresses))
                    await self._shutdown.wait()
                    fronts.cancel_scope.cancel()
            if self._graceful:
                await self._drain()
            if persistence is not None:
                # No more requests from here on: nothing can complete (and ask for a
                # removal the closing store would miss) after the last snapshot.
                for frontend in self.frontends:
                    frontend.stop_reading()
                await persistence.close()
            nursery.cancel_scope.cancel()
        log.info("server stopped")

    async def _drain(self) -> None:
        """Graceful shutdown: wait for running and queued foreground work, bounded."""
        with trio.move_on_after(self._config.graceful_timeout) as scope:
            while self._manager.busy():
                await trio.sleep(0.05)
        if scope.cancelled_caught:
            log.warning("graceful shutdown: work still running after %.0fs",
                        self._config.graceful_timeout)

    async def _flusher(self) -> None:
        while True:
            await self._flush_wake.wait()
            self._flush_wake = trio.Event()
            self._flush_scheduled = False
            for frontend in self.frontends:
                frontend.flush()

    # ------------------------------------------------------------------ time

    def _poke_timer(self) -> None:
        deadline = self._manager.next_deadline()
        if deadline is not None and deadline < self._timer_target:
            self._timer_wake.set()

    async def _timer(self) -> None:
        manager = self._manager
        while True:
            deadline = manager.next_deadline()
            self._timer_target = deadline if deadline is not None else math.inf
            self._timer_wake = trio.Event()
            if deadline is None:
                await self._timer_wake.wait()
                continue
            delay = deadline - time.time()
            if delay > 0:
                with trio.move_on_after(delay):
                    await self._timer_wake.wait()
                    continue
            manager.tick(time.time())
            self.changed()

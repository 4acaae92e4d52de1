"""A cluster member's ``JobStore`` (``ClusterPersistence``): the shared PostgreSQL queue
in place of a private one, and its options (docs/cluster.md). ``node`` holds the tasks
that claim, listen, renew and relay."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable

import trio

from protocol import PacketType
from server.config import ServerConfig
from server.jobs import Job
from server.manager import Manager
from server.persistence import Persistence, stored_job
from server.store import StoreError
from server.store.base import table_name
from server.store.writer import StoreWriter

from . import ops
from .db import ClusterDB, ClusterStore, Listener, RelaySender
from .node import ClusterNode, Quiet

log = logging.getLogger(__name__)


def cluster_options(options: dict[str, str]) -> tuple[str, float]:
    """``--cluster`` and ``--cluster-lease``, checked: one clear error otherwise."""
    name = options.get("cluster", "")
    if not name or len(name) > 64 or not all(c.isprintable() and not c.isspace()
                                             for c in name):
        raise StoreError("--cluster: the cluster name must be one word of at most 64 "
                         "printable characters")
    raw = options.get("cluster-lease") or "30"
    try:
        lease = float(raw)
    except ValueError:
        raise StoreError(f"--cluster-lease: {raw!r} is not a number of seconds") from None
    if not 1 <= lease <= 86400:
        raise StoreError("--cluster-lease: the lease must be between 1 and 86400 seconds")
    return name, lease



class ClusterPersistence(Persistence):
    """The ``JobStore`` of a cluster member: a shared queue instead of a private one."""

    def __init__(self, manager: Manager, config: ServerConfig,
                 changed: Callable[[], None]) -> None:
        options = dict(config.queue_options)
        cluster, lease = cluster_options(options)
        if options.get("store-queue-on-shutdown"):
            raise StoreError("--store-queue-on-shutdown cannot be used with --cluster")
        conninfo = options.get("libpq-conninfo", "")
        base = options.get("libpq-table") or "queue"
        # The longest name made from it must fit PostgreSQL's 63 bytes.
        if len(base) > 47:
            raise StoreError("--libpq-table: with --cluster, a table name of at most 47 "
                             "characters (the cluster adds _cluster_members to it)")
        table = table_name(base + "_cluster", "libpq-table")
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.cluster_store = ClusterStore(conninfo, table, cluster, self.owner, lease)
        super().__init__(manager, StoreWriter(self.cluster_store), changed=changed)
        # Dead letters stay with the member where the job failed (in memory): a row of
        # the shared table is a job some member would claim.
        manager.dead_letters.store = None
        self.node = ClusterNode(manager, ClusterDB(conninfo, table, cluster, self.owner, lease),
                                Listener(conninfo, table, cluster, self.owner),
                                RelaySender(conninfo, table, cluster), lease, changed)
        manager.relay_hook = self.relay
        self.node.relay_job = self.relay
        # While the database is down, the writer's line per failed batch is one too many.
        logging.getLogger("server.store.writer").addFilter(Quiet(self.node.state))
        # Handles name this server: they must be unique in the whole cluster.
        manager.handle_prefix += secrets.token_hex(3).encode() + b":"
        log.info("cluster %s: member %s, table %s, lease %.0f s", cluster, self.owner,
                 table, lease)

    # ------------------------------------------------------------------ JobStore

    def persist(self, job: Job) -> None:
        key = job.store_key
        assert key is not None
        manager = self.manager
        # A new background job is shared (any server claims it); a job already queued or
        # running here that a background submit joined stays here, its row held by us.
        shared = not job.stored
        self.cluster_store.meta[key] = (job.handle, not shared, False)
        if shared:
            ops.share(manager, job)

        def committed(error: Exception | None) -> None:
            now = time.time()
            if error is not None:
                self.node.state.failed("commit", error)
                manager.persisted(job, False, now)
            elif shared:
                self.node.state.ok()
                handle = self.cluster_store.coalesced.pop(key, job.handle)
                ops.handed_off(manager, job, handle, now)
            else:
                self.cluster_store.coalesced.pop(key, None)
                manager.persisted(job, True, now)

        self.writer.add_nowait(stored_job(job, key), committed)

    def forget(self, key: str) -> None:
        self.writer.done(key)
        self.node.forget(key)

    def relay(self, job: Job, now: float) -> None:
        """A foreground job that no worker here can do: into the shared table, with this
        server as its origin; it is assigned here to the stand-in for the server that
        will run it, whose packets come back relayed."""
        node = self.node
        if not job.queued:  # (only a job waiting in the local queue can be handed over)
            return
        ops.hand_over(self.manager, job, node.stand_in, now)
        key = self.manager.new_store_key()
        self.cluster_store.meta[key] = (job.handle, False, True)
        handle = job.handle

        def committed(error: Exception | None) -> None:
            if error is None:
                node.state.ok()
                return
            node.state.failed("commit", error)
            # Nothing will run it: its clients hear WORK_FAIL, as when retries run out.
            self.manager.handle_packet(node.stand_in, PacketType.WORK_FAIL, (handle,),
                                       time.time())
            self.changed()

        self.writer.add_nowait(stored_job(job, key), committed)

    # ------------------------------------------------------------------ life cycle

    async def replay(self) -> int:
        return 0

    async def run(self, *, task_status: trio.TaskStatus[None]
                  = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.node.run)
            try:
                await super().run(task_status=task_status)
            finally:
                nursery.cancel_scope.cancel()

    async def close(self) -> None:
        await super().close()
        await self.node.release()
        self.node.db.close()
        self.node.sender.close()
        self.node.listener.closing = True

    def cluster_stats(self) -> dict[str, object]:
        report = self.node.stats()
        report["lost_removals"] = self.cluster_store.lost_removals
        return report

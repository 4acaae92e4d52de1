"""The cluster's PostgreSQL side: the shared table, and the blocking calls on it.

Everything here blocks and is thread-confined: each object owns one connection and is
called from one worker thread at a time (``ClusterStore`` by the store writer's task,
``ClusterDB`` under the node's lock, ``Listener`` by the node's listening task). A broken
connection is reopened by the next call. Times are the database's (``now()``), so the
servers' clocks do not have to agree.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from server.store.base import StoredJob, StoreError

log = logging.getLogger(__name__)

#: Seconds to wait for a connection before the call fails (and is retried later).
CONNECT_TIMEOUT = 5


def channel_name(table: str, cluster: str) -> str:
    """The NOTIFY channel of one cluster: a plain identifier (at most 63 bytes)."""
    digest = hashlib.sha256(f"{table}\0{cluster}".encode()).hexdigest()[:24]
    return f"gearman_{digest}"


def unique_column(function: bytes, unique: bytes, data: bytes) -> bytes | None:
    """The shared unique index's value for a job: None when it coalesces with nothing.
    A ``-`` unique coalesces on the data (spec §2.2): its digest, after a NUL that no
    unique sent on the wire can hold."""
    if unique == b"-":
        return b"\0" + hashlib.sha256(data).digest() if data else None
    return unique or None


@dataclass(frozen=True, slots=True)
class Claimed:
    """A row this server claimed: the job to run, and how often it was claimed."""

    key: str
    handle: bytes
    function: bytes
    unique: bytes
    priority: int
    reducer: bytes
    data: bytes
    #: Claims of this row, this one included: more than 1 = taken over or released.
    claims: int
    seq: int


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


class _Connected:
    """One lazily (re)opened autocommit connection."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._conn: psycopg.Connection[Any] | None = None

    def connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        try:
            self._conn = psycopg.connect(self._conninfo, autocommit=True,
                                         connect_timeout=CONNECT_TIMEOUT)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {_one_line(exc)}") from exc
        return self._conn

    def failed(self, what: str, exc: psycopg.Error) -> StoreError:
        if self._conn is not None and self._conn.broken:
            self._conn.close()
            self._conn = None
        return StoreError(f"PostgreSQL {what} failed: {_one_line(exc)}")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def create_schema(conn: psycopg.Connection[Any], table: str) -> None:
    """The shared table and its indexes, created once (servers starting together
    serialise on an advisory lock)."""
    t = table
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (t,))
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {t} ("
            " seq BIGSERIAL PRIMARY KEY,"
            " cluster TEXT NOT NULL,"
            " job_key TEXT NOT NULL UNIQUE,"
            " handle BYTEA NOT NULL,"
            " function_name BYTEA NOT NULL,"
            " unique_value BYTEA NOT NULL DEFAULT '',"
            " unique_key BYTEA,"
            " priority INTEGER NOT NULL,"
            " when_to_run BIGINT NOT NULL DEFAULT 0,"
            " reducer BYTEA NOT NULL DEFAULT '',"
            " data BYTEA NOT NULL,"
            " owner TEXT,"
            " lease_until TIMESTAMPTZ,"
            " claims INTEGER NOT NULL DEFAULT 0,"
            " created TIMESTAMPTZ NOT NULL DEFAULT now())")
        conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {t}_unique"
                     f" ON {t} (cluster, function_name, unique_key)"
                     " WHERE unique_key IS NOT NULL")
        conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_claim"
                     f" ON {t} (cluster, function_name, priority, seq)")
        conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_owner ON {t} (owner)"
                     " WHERE owner IS NOT NULL")


class ClusterStore(_Connected):
    """The store writer's ``Store`` in cluster mode: inserts submits into the shared
    table (coalescing on its unique index) and deletes finished jobs this server holds.

    The trio side tells it, before ``add``, each job's handle and whether this server
    keeps it (``meta``); it answers, after the commit, the handle of the job a submit
    coalesced onto (``coalesced``)."""

    def __init__(self, conninfo: str, table: str, cluster: str, owner: str,
                 lease: float) -> None:
        super().__init__(conninfo)
        self.table = t = table
        self.cluster = cluster
        self.owner = owner
        self.lease = lease
        self.channel = channel_name(table, cluster)
        #: store key -> (handle, kept by this server). Set by the trio side, popped here.
        self.meta: dict[str, tuple[bytes, bool]] = {}
        #: store key -> handle of the job it coalesced onto. Set here, popped by trio.
        self.coalesced: dict[str, bytes] = {}
        #: Removals that found the row no longer ours (its lease was lost).
        self.lost_removals = 0
        self._insert = (
            f"INSERT INTO {t} AS q (cluster, job_key, handle, function_name, unique_value,"
            " unique_key, priority, when_to_run, reducer, data, owner, lease_until)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " CASE WHEN %s THEN now() + make_interval(secs => %s) END)"
            " ON CONFLICT (cluster, function_name, unique_key) WHERE unique_key IS NOT NULL"
            " DO UPDATE SET cluster = q.cluster RETURNING q.job_key, q.handle")
        self._delete = (f"DELETE FROM {t} WHERE cluster = %s AND job_key = ANY(%s)"
                        " AND (owner = %s OR owner IS NULL)")
        create_schema(self.connection(), t)

    def commit(self, added: Sequence[StoredJob], done: Sequence[str]) -> None:
        conn = self.connection()
        rows = []
        for j in added:
            handle, keep = self.meta.pop(j.key, (j.key.encode(), False))
            rows.append((self.cluster, j.key, handle, j.function, j.unique,
                         unique_column(j.function, j.unique, j.data), j.priority, j.when,
                         j.reducer, j.data, self.owner if keep else None, keep, self.lease))
        coalesced: dict[str, bytes] = {}
        try:
            with conn.transaction(), conn.cursor() as cur:
                if rows:
                    cur.executemany(self._insert, rows, returning=True)
                    fresh: set[bytes] = set()
                    for row in rows:
                        key, handle = cur.fetchone() or (row[1], row[2])
                        if key != row[1]:
                            coalesced[row[1]] = bytes(handle)
                        elif not row[11]:  # not kept: a server must claim it
                            fresh.add(row[3])
                        if not cur.nextset():
                            break
                    for function in sorted(fresh):
                        cur.execute("SELECT pg_notify(%s, %s)", (self.channel, function.hex()))
                if done:
                    cur.execute(self._delete, (self.cluster, list(done), self.owner))
                    self.lost_removals += len(done) - max(cur.rowcount, 0)
        except psycopg.Error as exc:
            raise self.failed("commit", exc) from exc
        self.coalesced.update(coalesced)

    def replay(self) -> list[StoredJob]:
        """Nothing: the shared table is not replayed, its rows are claimed."""
        return []


class ClusterDB(_Connected):
    """Claims, lease renewals, releases and counts: the node's own connection."""

    def __init__(self, conninfo: str, table: str, cluster: str, owner: str,
                 lease: float) -> None:
        super().__init__(conninfo)
        self.table = t = table
        self.cluster = cluster
        self.owner = owner
        self.lease = lease
        self.channel = channel_name(table, cluster)
        self._claim = (
            f"WITH c AS (SELECT seq FROM {t} WHERE cluster = %s AND function_name = %s"
            " AND when_to_run <= extract(epoch FROM now())"
            " AND (owner IS NULL OR lease_until < now())"
            " ORDER BY priority, seq LIMIT %s FOR UPDATE SKIP LOCKED)"
            f" UPDATE {t} AS q SET owner = %s,"
            " lease_until = now() + make_interval(secs => %s), claims = q.claims + 1"
            " FROM c WHERE q.seq = c.seq RETURNING q.job_key, q.handle, q.function_name,"
            " q.unique_value, q.priority, q.reducer, q.data, q.claims, q.seq")

    def claim(self, wants: dict[bytes, int]) -> list[Claimed]:
        """Claim up to ``wants[function]`` runnable rows of each function, highest
        priority first and oldest first within a priority; in that order."""
        conn = self.connection()
        out: list[Claimed] = []
        try:
            with conn.transaction(), conn.cursor(binary=True) as cur:
                for function, count in wants.items():
                    cur.execute(self._claim, (self.cluster, function, count, self.owner,
                                              self.lease))
                    out.extend(Claimed(str(k), bytes(h), bytes(f), bytes(u), int(p),
                                       bytes(r), bytes(d), int(c), int(s))
                               for k, h, f, u, p, r, d, c, s in cur)
        except psycopg.Error as exc:
            raise self.failed("claim", exc) from exc
        out.sort(key=lambda c: (c.priority, c.seq))
        return out

    def renew(self) -> set[str]:
        """Extend the lease of every row this server holds; the keys it still holds."""
        conn = self.connection()
        try:
            with conn.cursor() as cur:
                cur.execute(f"UPDATE {self.table} SET lease_until = now()"
                            " + make_interval(secs => %s) WHERE cluster = %s AND owner = %s"
                            " RETURNING job_key", (self.lease, self.cluster, self.owner))
                return {str(row[0]) for row in cur}
        except psycopg.Error as exc:
            raise self.failed("lease renewal", exc) from exc

    def release(self, keys: Sequence[str] | None = None) -> int:
        """Give back the rows this server holds (all, or those of ``keys``) so that any
        server claims them now; wake the servers. How many were released."""
        conn = self.connection()
        where = "" if keys is None else " AND job_key = ANY(%s)"
        params: tuple[object, ...] = (self.cluster, self.owner)
        if keys is not None:
            params += (list(keys),)
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(f"UPDATE {self.table} SET owner = NULL, lease_until = NULL"
                            f" WHERE cluster = %s AND owner = %s{where}"
                            " RETURNING function_name", params)
                released = [bytes(row[0]) for row in cur]
                for function in sorted(set(released)):
                    cur.execute("SELECT pg_notify(%s, %s)", (self.channel, function.hex()))
                return len(released)
        except psycopg.Error as exc:
            raise self.failed("release", exc) from exc

    def counts(self) -> dict[bytes, tuple[int, int]]:
        """Per function: rows waiting for a claim (ready or not), and rows claimed."""
        conn = self.connection()
        try:
            with conn.cursor(binary=True) as cur:
                cur.execute(
                    f"SELECT function_name, count(*) FILTER (WHERE owner IS NULL"
                    " OR lease_until < now()), count(*) FILTER (WHERE owner IS NOT NULL"
                    f" AND lease_until >= now()) FROM {self.table} WHERE cluster = %s"
                    " GROUP BY function_name", (self.cluster,))
                return {bytes(f): (int(w), int(c)) for f, w, c in cur}
        except psycopg.Error as exc:
            raise self.failed("count", exc) from exc


class Listener(_Connected):
    """The LISTEN connection: waits for the cluster's notifications."""

    def __init__(self, conninfo: str, table: str, cluster: str) -> None:
        super().__init__(conninfo)
        self.channel = channel_name(table, cluster)
        self._listened_on: psycopg.Connection[Any] | None = None
        #: Set at shutdown: the connection is closed by the thread that waits on it.
        self.closing = False

    def wait(self, timeout: float) -> list[str] | None:
        """The payloads of the notifications that arrive within ``timeout`` seconds (at
        least one, then whatever else is there), or None when none came (a timeout)."""
        conn = self.connection()
        try:
            if conn is not self._listened_on:
                conn.execute(f"LISTEN {self.channel}")
                self._listened_on = conn
                # Notifications sent while not listening are lost: say so (a wake-up).
                return []
            got = [n.payload for n in conn.notifies(timeout=timeout, stop_after=1)]
            if not got:
                return None
            got.extend(n.payload for n in conn.notifies(timeout=0))
            return got
        except psycopg.Error as exc:
            self._listened_on = None
            raise self.failed("listen", exc) from exc
        finally:
            if self.closing:
                self.close()

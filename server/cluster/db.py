"""The cluster's PostgreSQL side: the shared table, and the blocking calls on it.

Everything here blocks and is thread-confined: each object owns one connection and is
called from one worker thread at a time (``ClusterStore`` by the store writer's task,
``ClusterDB`` under the node's lock, ``Listener`` by the node's listening task). A broken
connection is reopened by the next call. Times are the database's (``now()``), so the
servers' clocks do not have to agree.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import select
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


def relay_channel(table: str, cluster: str, owner: str) -> str:
    """The NOTIFY channel on which a member hears the results of its relayed jobs."""
    digest = hashlib.sha256(f"{table}\0{cluster}\0{owner}".encode()).hexdigest()[:24]
    return f"gearman_relay_{digest}"


#: Relay payloads (base64) up to this size travel in the notification; longer ones are
#: kept in the relay table and the notification carries the row's id.
INLINE_PAYLOAD = 7000


def encode_relay(ptype: int, args: Sequence[bytes]) -> bytes:
    """One relayed packet: its type, its argument count, each argument with its length."""
    parts = [bytes((ptype, len(args)))]
    for arg in args:
        parts += [len(arg).to_bytes(4, "big"), arg]
    return b"".join(parts)


def decode_relay(record: bytes) -> tuple[int, tuple[bytes, ...]]:
    """The inverse of ``encode_relay``; ``ValueError`` if ``record`` is not one."""
    if len(record) < 2:
        raise ValueError("relay record too short")
    ptype, count = record[0], record[1]
    args: list[bytes] = []
    pos = 2
    for _ in range(count):
        size = int.from_bytes(record[pos:pos + 4], "big")
        pos += 4
        if pos + size > len(record):
            raise ValueError("relay record truncated")
        args.append(record[pos:pos + size])
        pos += size
    if pos != len(record):
        raise ValueError("relay record too long")
    return ptype, tuple(args)


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
    #: The member whose client waits for a foreground job; None for a background job.
    origin: str | None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _readable(fd: int) -> bool:
    """Whether ``fd`` has something to read now (poll: any descriptor number)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class _Connected:
    """One lazily (re)opened autocommit connection."""

    #: An idle connection that has something to read was closed by the server (a restart
    #: sends FATAL and closes idle sessions): reopen it before use rather than fail the
    #: next call with it. Not for a LISTEN connection, where notifications wait.
    probe_idle = True

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._conn: psycopg.Connection[Any] | None = None

    def connection(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if (conn is not None and not conn.closed and not conn.broken
                and not (self.probe_idle and _readable(conn.fileno()))):
            return conn
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
            " origin TEXT,"
            " created TIMESTAMPTZ NOT NULL DEFAULT now())"
            " WITH (fillfactor = 70)")
        conn.execute(f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS numerator BYTEA NOT NULL"
                     " DEFAULT '0', ADD COLUMN IF NOT EXISTS denominator BYTEA NOT NULL"
                     " DEFAULT '0'")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {t}_members ("
                     " cluster TEXT NOT NULL, owner TEXT NOT NULL,"
                     " lease_until TIMESTAMPTZ NOT NULL, PRIMARY KEY (cluster, owner))")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {t}_relay ("
                     " id BIGSERIAL PRIMARY KEY, created TIMESTAMPTZ NOT NULL DEFAULT now(),"
                     " payload BYTEA NOT NULL)")
        conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_handle ON {t} (cluster, handle)")
        conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_origin ON {t} (origin)"
                     " WHERE origin IS NOT NULL")
        conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {t}_unique"
                     f" ON {t} (cluster, function_name, unique_key)"
                     " WHERE unique_key IS NOT NULL")
        conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_claim"
                     f" ON {t} (cluster, function_name, priority, seq)")
        # No index on owner or lease_until: a claim or a renewal then updates the row
        # in place (a HOT update), without touching any index.


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
        #: store key -> (handle, kept by this server, foreground: relayed to this server).
        #: Set by the trio side, popped here.
        self.meta: dict[str, tuple[bytes, bool, bool]] = {}
        #: store key -> handle of the job it coalesced onto. Set here, popped by trio.
        self.coalesced: dict[str, bytes] = {}
        #: Removals that found the row no longer ours (its lease was lost).
        self.lost_removals = 0
        self._insert = (
            f"INSERT INTO {t} AS q (cluster, job_key, handle, function_name, unique_value,"
            " unique_key, priority, when_to_run, reducer, data, owner, origin, lease_until)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
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
            handle, keep, relayed = self.meta.pop(j.key, (j.key.encode(), False, False))
            # A relayed foreground job coalesces with nothing in the shared table (its
            # results go to one server's clients).
            unique = None if relayed else unique_column(j.function, j.unique, j.data)
            rows.append((self.cluster, j.key, handle, j.function, j.unique, unique,
                         j.priority, j.when, j.reducer, j.data, self.owner if keep else None,
                         self.owner if relayed else None, keep, self.lease))
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
                        elif not row[12]:  # not kept: a server must claim it
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
            f" AND (origin IS NULL OR EXISTS (SELECT 1 FROM {t}_members m"
            f" WHERE m.cluster = {t}.cluster AND m.owner = {t}.origin"
            " AND m.lease_until >= now()))"
            " ORDER BY priority, seq LIMIT %s FOR UPDATE SKIP LOCKED)"
            f" UPDATE {t} AS q SET owner = %s,"
            " lease_until = now() + make_interval(secs => %s), claims = q.claims + 1"
            " FROM c WHERE q.seq = c.seq RETURNING q.job_key, q.handle, q.function_name,"
            " q.unique_value, q.priority, q.reducer, q.data, q.claims, q.seq, q.origin")

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
                                       bytes(r), bytes(d), int(c), int(s),
                                       None if o is None else str(o))
                               for k, h, f, u, p, r, d, c, s, o in cur)
        except psycopg.Error as exc:
            raise self.failed("claim", exc) from exc
        out.sort(key=lambda c: (c.priority, c.seq))
        return out

    def renew(self) -> set[str]:
        """Extend the lease of every row this server holds; the keys it still holds."""
        conn = self.connection()
        t = self.table
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(f"INSERT INTO {t}_members (cluster, owner, lease_until)"
                            " VALUES (%s, %s, now() + make_interval(secs => %s))"
                            " ON CONFLICT (cluster, owner)"
                            " DO UPDATE SET lease_until = EXCLUDED.lease_until",
                            (self.cluster, self.owner, self.lease))
                # Foreground jobs whose client's server is gone: nobody waits for them.
                cur.execute(f"DELETE FROM {t} q WHERE cluster = %s AND origin IS NOT NULL"
                            " AND (owner IS NULL OR lease_until < now())"
                            f" AND NOT EXISTS (SELECT 1 FROM {t}_members m"
                            " WHERE m.cluster = q.cluster AND m.owner = q.origin"
                            " AND m.lease_until >= now())", (self.cluster,))
                # Results relayed to a server that died before fetching them.
                cur.execute(f"DELETE FROM {t}_relay WHERE created < now() - interval"
                            " '1 hour'")
                cur.execute(f"UPDATE {t} SET lease_until = now()"
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
                if keys is None:
                    cur.execute(f"DELETE FROM {self.table}_members WHERE cluster = %s"
                                " AND owner = %s", (self.cluster, self.owner))
                for function in sorted(set(released)):
                    cur.execute("SELECT pg_notify(%s, %s)", (self.channel, function.hex()))
                return len(released)
        except psycopg.Error as exc:
            raise self.failed("release", exc) from exc

    def status(self, handle: bytes) -> tuple[bool, bytes, bytes] | None:
        """For the job with this handle in the shared table: whether a server whose lease
        holds claimed it (running or about to), and its last WORK_STATUS numerator and
        denominator; None when it is not there."""
        conn = self.connection()
        try:
            with conn.cursor(binary=True) as cur:
                row = cur.execute(
                    f"SELECT owner IS NOT NULL AND lease_until >= now(), numerator,"
                    f" denominator FROM {self.table} WHERE cluster = %s AND handle = %s"
                    " LIMIT 1", (self.cluster, handle)).fetchone()
        except psycopg.Error as exc:
            raise self.failed("status", exc) from exc
        return None if row is None else (bool(row[0]), bytes(row[1]), bytes(row[2]))

    def progress(self, updates: Sequence[tuple[str, bytes, bytes]]) -> None:
        """Record the last WORK_STATUS of jobs this server runs: (key, num, den)."""
        conn = self.connection()
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(f"UPDATE {self.table} SET numerator = %s, denominator = %s"
                                " WHERE cluster = %s AND job_key = %s AND owner = %s",
                                [(n, d, self.cluster, k, self.owner) for k, n, d in updates])
        except psycopg.Error as exc:
            raise self.failed("progress", exc) from exc

    def withdraw(self, handle: bytes) -> int:
        """Delete our relayed foreground job ``handle`` unless a member runs it now."""
        conn = self.connection()
        try:
            cur = conn.execute(f"DELETE FROM {self.table} WHERE cluster = %s AND handle = %s"
                               " AND origin = %s AND (owner IS NULL OR lease_until < now())",
                               (self.cluster, handle, self.owner))
            return max(cur.rowcount, 0)
        except psycopg.Error as exc:
            raise self.failed("withdraw", exc) from exc

    def counts(self) -> dict[bytes, int]:
        """Jobs per function in the shared table that this server neither holds nor
        waits for (its own are counted by its core)."""
        conn = self.connection()
        try:
            with conn.cursor(binary=True) as cur:
                cur.execute(
                    f"SELECT function_name, count(*) FROM {self.table} WHERE cluster = %s"
                    " AND owner IS DISTINCT FROM %s AND origin IS DISTINCT FROM %s"
                    " GROUP BY function_name", (self.cluster, self.owner, self.owner))
                return {bytes(f): int(n) for f, n in cur}
        except psycopg.Error as exc:
            raise self.failed("count", exc) from exc


class Listener(_Connected):
    """The LISTEN connection: the cluster's wake-ups and the results relayed to us."""

    probe_idle = False

    def __init__(self, conninfo: str, table: str, cluster: str, owner: str) -> None:
        super().__init__(conninfo)
        self.table = table
        self.channel = channel_name(table, cluster)
        self.relay_channel = relay_channel(table, cluster, owner)
        self._listened_on: psycopg.Connection[Any] | None = None
        #: Set at shutdown: the connection is closed by the thread that waits on it.
        self.closing = False
        #: Relayed packets that could not be read (a bad record: logged, dropped).
        self.bad = 0

    def wait(self, timeout: float) -> tuple[list[str] | None, list[tuple[int, tuple[bytes, ...]]]]:
        """What arrives within ``timeout`` seconds (at least one notification, then
        whatever else is there): the wake-up payloads (function names in hex; None when
        none came, a timeout: the fallback poll is due) and the relayed packets, in the
        order they were sent."""
        conn = self.connection()
        try:
            if conn is not self._listened_on:
                conn.execute(f"LISTEN {self.channel}")
                conn.execute(f"LISTEN {self.relay_channel}")
                self._listened_on = conn
                # Notifications sent while not listening are lost: look at the table.
                return [], []
            notes = list(conn.notifies(timeout=timeout, stop_after=1))
            if not notes:
                return None, []
            notes.extend(conn.notifies(timeout=0))
            wakes: list[str] = []
            relayed: list[tuple[int, tuple[bytes, ...]]] = []
            for note in notes:
                if note.channel == self.channel:
                    wakes.append(note.payload)
                    continue
                record = self._record(conn, note.payload)
                if record is not None:
                    relayed.append(record)
            return wakes, relayed
        except psycopg.Error as exc:
            self._listened_on = None
            raise self.failed("listen", exc) from exc
        finally:
            if self.closing:
                self.close()

    def _record(self, conn: psycopg.Connection[Any],
                payload: str) -> tuple[int, tuple[bytes, ...]] | None:
        try:
            if payload[:1] == "r":
                row = conn.execute(f"DELETE FROM {self.table}_relay WHERE id = %s"
                                   " RETURNING payload", (int(payload[1:]),)).fetchone()
                if row is None:
                    raise ValueError(f"relay row {payload[1:]} is gone")
                return decode_relay(bytes(row[0]))
            return decode_relay(base64.b64decode(payload[1:], validate=True))
        except (ValueError, binascii.Error) as exc:
            self.bad += 1
            log.error("cluster: a relayed result could not be read: %s", exc)
            return None


class RelaySender(_Connected):
    """Sends the packets of foreground jobs run here to the members whose clients wait
    for them: each as a notification on the member's channel, or, when too large, as a
    row of the relay table whose id the notification carries. One transaction per
    batch; notifications of one session arrive in the order they were committed."""

    def __init__(self, conninfo: str, table: str, cluster: str) -> None:
        super().__init__(conninfo)
        self.table = table
        self.cluster = cluster

    def send(self, batch: Sequence[tuple[str, bytes]]) -> None:
        """``batch``: (origin member, ``encode_relay`` record), in order."""
        conn = self.connection()
        try:
            with conn.transaction(), conn.cursor() as cur:
                for origin, record in batch:
                    channel = relay_channel(self.table, self.cluster, origin)
                    text = base64.b64encode(record).decode("ascii")
                    if len(text) <= INLINE_PAYLOAD:
                        payload = "i" + text
                    else:
                        cur.execute(f"INSERT INTO {self.table}_relay (payload) VALUES (%s)"
                                    " RETURNING id", (record,))
                        row = cur.fetchone()
                        assert row is not None
                        payload = f"r{row[0]}"
                    cur.execute("SELECT pg_notify(%s, %s)", (channel, payload))
        except psycopg.Error as exc:
            raise self.failed("relay", exc) from exc

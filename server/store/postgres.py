"""``-q postgres``: one table, one transaction per batch, ``seq`` (BIGSERIAL) for order.

Durable when the server's ``synchronous_commit`` is on (its default). A broken
connection is reopened on the next call.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from server.store.base import StoredJob, StoreError, table_name

log = logging.getLogger(__name__)

_COLUMNS = {"seq", "job_key", "function_name", "unique_key", "priority", "when_to_run",
            "reducer", "data"}
_REFERENCE_COLUMNS = {"unique_key", "function_name", "priority", "data"}


class PostgresStore:
    def __init__(self, conninfo: str, table: str = "queue") -> None:
        self._conninfo = conninfo
        self._table = t = table_name(table, "libpq-table")
        self._conn: psycopg.Connection[Any] | None = None
        self._insert = (
            f"INSERT INTO {t} (job_key, function_name, unique_key, priority, when_to_run,"
            " reducer, data) VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (job_key) DO UPDATE SET function_name = EXCLUDED.function_name,"
            " unique_key = EXCLUDED.unique_key, priority = EXCLUDED.priority,"
            " when_to_run = EXCLUDED.when_to_run, reducer = EXCLUDED.reducer,"
            " data = EXCLUDED.data")
        self._delete = f"DELETE FROM {t} WHERE job_key = ANY(%s)"
        self._connection()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {_one_line(exc)}") from exc
        try:
            self._setup(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _setup(self, conn: psycopg.Connection[Any]) -> None:
        try:
            columns = {str(row[0]) for row in conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = %s",
                (self._table,))}
            if not columns:
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {self._table} ("
                    " seq BIGSERIAL PRIMARY KEY,"
                    " job_key TEXT NOT NULL UNIQUE,"
                    " function_name BYTEA NOT NULL,"
                    " unique_key BYTEA NOT NULL,"
                    " priority INTEGER NOT NULL,"
                    " when_to_run BIGINT NOT NULL DEFAULT 0,"
                    " reducer BYTEA NOT NULL DEFAULT '',"
                    " data BYTEA NOT NULL)")
                return
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL table {self._table}: {_one_line(exc)}") from exc
        if columns == _COLUMNS:
            return
        if columns >= _REFERENCE_COLUMNS:
            raise StoreError(f"PostgreSQL table {self._table} was created by the C gearmand "
                             "(columns unique_key, function_name, ...); use another "
                             "--libpq-table")
        raise StoreError(f"PostgreSQL table {self._table} has unexpected columns "
                         f"{sorted(columns)}; use another --libpq-table")

    def _failed(self, what: str, exc: psycopg.Error) -> StoreError:
        if self._conn is not None and self._conn.broken:
            self._conn.close()
            self._conn = None
        return StoreError(f"PostgreSQL {what} failed: {_one_line(exc)}")

    def commit(self, added: Sequence[StoredJob], done: Sequence[str]) -> None:
        conn = self._connection()
        try:
            with conn.transaction(), conn.cursor() as cur:
                if added:
                    cur.executemany(self._insert, [
                        (j.key, j.function, j.unique, j.priority, j.when, j.reducer, j.data)
                        for j in added])
                if done:
                    cur.execute(self._delete, (list(done),))
        except psycopg.Error as exc:
            raise self._failed("commit", exc) from exc

    def replay(self) -> list[StoredJob]:
        conn = self._connection()
        try:
            with conn.cursor(binary=True) as cur:
                cur.execute(
                    "SELECT job_key, function_name, unique_key, priority, data, when_to_run,"
                    f" reducer FROM {self._table} ORDER BY seq")
                return [StoredJob(key=str(k), function=bytes(f), unique=bytes(u),
                                  priority=int(p), data=bytes(d), when=int(w),
                                  reducer=bytes(r))
                        for k, f, u, p, d, w, r in cur]
        except psycopg.Error as exc:
            raise self._failed("replay", exc) from exc

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def open_store(options: Mapping[str, str]) -> PostgresStore:
    return PostgresStore(options["libpq-conninfo"], options["libpq-table"])

"""``-q mysql``: one InnoDB table, one transaction per batch, ``seq`` (AUTO_INCREMENT)
for order.

Durable with InnoDB's default ``innodb_flush_log_at_trx_commit=1``. One job must fit in
the server's ``max_allowed_packet``. A lost connection is reopened on the next call.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pymysql  # type: ignore[import-untyped]

from server.store.base import StoredJob, StoreError, int_option, table_name

log = logging.getLogger(__name__)

_COLUMNS = {"seq", "job_key", "function_name", "unique_key", "priority", "when_to_run",
            "reducer", "data"}
_REFERENCE_COLUMNS = {"unique_key", "function_name", "priority", "data"}
_DELETE_CHUNK = 500


class MysqlStore:
    def __init__(self, *, host: str = "localhost", port: int = 3306, user: str = "",
                 password: str = "", database: str = "", table: str = "gearman_queue") -> None:
        self._params: dict[str, Any] = {
            "host": host, "port": port, "user": user or None, "password": password,
            "database": database or None, "autocommit": False, "connect_timeout": 10,
            "charset": "utf8mb4"}
        self._table = t = table_name(table, "mysql-table")
        self._conn: Any = None
        self._insert = (
            f"INSERT INTO {t} (job_key, function_name, unique_key, priority, when_to_run,"
            " reducer, data) VALUES (%s, %s, %s, %s, %s, %s, %s)"
            # VALUES(): MariaDB has no row alias; MySQL 8 deprecates but still accepts it.
            " ON DUPLICATE KEY UPDATE function_name = VALUES(function_name),"
            " unique_key = VALUES(unique_key), priority = VALUES(priority),"
            " when_to_run = VALUES(when_to_run), reducer = VALUES(reducer),"
            " data = VALUES(data)")
        self._connection()

    def _connection(self) -> Any:
        if self._conn is not None:
            return self._conn
        try:
            conn = pymysql.connect(**self._params)
        except pymysql.err.MySQLError as exc:
            raise StoreError(f"cannot connect to MySQL: {exc}") from exc
        try:
            self._setup(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _setup(self, conn: Any) -> None:
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT column_name FROM information_schema.columns"
                            " WHERE table_schema = DATABASE() AND table_name = %s",
                            (self._table,))
                columns = {str(row[0]).lower() for row in cur.fetchall()}
                if not columns:
                    cur.execute(
                        f"CREATE TABLE IF NOT EXISTS {self._table} ("
                        " seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,"
                        " job_key VARBINARY(512) NOT NULL UNIQUE,"
                        " function_name LONGBLOB NOT NULL,"
                        " unique_key LONGBLOB NOT NULL,"
                        " priority INT NOT NULL,"
                        " when_to_run BIGINT NOT NULL DEFAULT 0,"
                        " reducer LONGBLOB NOT NULL,"
                        " data LONGBLOB NOT NULL) ENGINE=InnoDB")
                    conn.commit()
                    return
        except pymysql.err.MySQLError as exc:
            raise StoreError(f"MySQL table {self._table}: {exc}") from exc
        if columns == _COLUMNS:
            return
        if columns >= _REFERENCE_COLUMNS:
            raise StoreError(f"MySQL table {self._table} was created by the C gearmand "
                             "(columns unique_key, function_name, ...); use another "
                             "--mysql-table")
        raise StoreError(f"MySQL table {self._table} has unexpected columns "
                         f"{sorted(columns)}; use another --mysql-table")

    def _failed(self, what: str, exc: Exception) -> StoreError:
        try:
            self._conn.rollback()
        except Exception:  # the connection is gone: reconnect next time
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        return StoreError(f"MySQL {what} failed: {exc}")

    def commit(self, added: Sequence[StoredJob], done: Sequence[str]) -> None:
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                if added:
                    cur.executemany(self._insert, [
                        (j.key.encode(), j.function, j.unique, j.priority, j.when, j.reducer,
                         j.data) for j in added])
                for start in range(0, len(done), _DELETE_CHUNK):
                    keys = [k.encode() for k in done[start:start + _DELETE_CHUNK]]
                    cur.execute(f"DELETE FROM {self._table} WHERE job_key IN "
                                f"({', '.join(['%s'] * len(keys))})", keys)
            conn.commit()
        except pymysql.err.MySQLError as exc:
            raise self._failed("commit", exc) from exc

    def replay(self) -> list[StoredJob]:
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT job_key, function_name, unique_key, priority, data, when_to_run,"
                    f" reducer FROM {self._table} ORDER BY seq")
                rows = cur.fetchall()
            conn.commit()
        except pymysql.err.MySQLError as exc:
            raise self._failed("replay", exc) from exc
        return [StoredJob(key=bytes(k).decode(), function=bytes(f), unique=bytes(u),
                          priority=int(p), data=bytes(d), when=int(w), reducer=bytes(r))
                for k, f, u, p, d, w, r in rows]

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(pymysql.err.Error):
                self._conn.close()
            self._conn = None


def open_store(options: Mapping[str, str]) -> MysqlStore:
    return MysqlStore(host=options["mysql-host"], port=int_option(options, "mysql-port", 3306),
                      user=options["mysql-user"], password=options["mysql-password"],
                      database=options["mysql-db"], table=options["mysql-table"])

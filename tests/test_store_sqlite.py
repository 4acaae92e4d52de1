"""The SQLite store and ``open_store``'s option handling."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from server.store import StoredJob, StoreError, open_store
from server.store.sqlite import SqliteStore


def test_builtin_means_no_store() -> None:
    assert open_store("builtin", {}) is None
    assert open_store("BuiltIn", {}) is None


def test_unknown_queue() -> None:
    with pytest.raises(StoreError, match=r"^Unknown queue libpq$"):
        open_store("libpq", {})


def test_names_are_case_insensitive(tmp_path: Path) -> None:
    store = open_store("LibSQLite3", {"libsqlite3-db": str(tmp_path / "q.db")})
    assert isinstance(store, SqliteStore)
    store.close()


def test_missing_required_option() -> None:
    with pytest.raises(StoreError, match="needs --libsqlite3-db"):
        open_store("libsqlite3", {})


def test_unknown_option(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="Unknown option --libsqlite3-dbx"):
        open_store("libsqlite3", {"libsqlite3-db": str(tmp_path / "q.db"),
                                  "libsqlite3-dbx": "1"})


def test_another_queues_option_is_ignored_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        store = open_store("libsqlite3", {"libsqlite3-db": str(tmp_path / "q.db"),
                                          "mysql-host": "db"})
    assert store is not None
    store.close()
    assert "--mysql-host does not apply" in caplog.text


def test_bad_table_name(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="libsqlite3-table"):
        open_store("libsqlite3", {"libsqlite3-db": str(tmp_path / "q.db"),
                                  "libsqlite3-table": "x; DROP TABLE y"})


def test_wal_and_full_sync(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "q.db"))
    store.commit([StoredJob("k", b"f", b"", 1, b"x")], [])
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()
    db = sqlite3.connect(tmp_path / "q.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_values_are_blobs_and_come_back_as_bytes(tmp_path: Path) -> None:
    """The commit binds its values as bytearray (a faster path in the sqlite3 module):
    they are stored as blobs, an empty one as x'' (never NULL), and replay as bytes."""
    store = SqliteStore(str(tmp_path / "q.db"))
    job = StoredJob("k", b"f\xff", b"", 2, b"\0data", 7, b"")
    store.commit([job], [])
    row = store._db.execute(
        "SELECT typeof(function_name), typeof(unique_key), typeof(reducer), typeof(data),"
        " unique_key = x'', reducer = x'' FROM gearman_queue").fetchone()
    assert row == ("blob", "blob", "blob", "blob", 1, 1)
    (replayed,) = store.replay()
    assert replayed == job
    assert all(type(v) is bytes for v in (replayed.function, replayed.unique, replayed.data,
                                          replayed.reducer))
    store.close()


def test_the_reference_servers_table_is_detected(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "ref.db")
    db.execute("CREATE TABLE gearman_queue ( unique_key TEXT, function_name TEXT, "
               "priority INTEGER, data BLOB, when_to_run INTEGER, "
               "PRIMARY KEY (unique_key, function_name))")
    db.execute("INSERT INTO gearman_queue VALUES ('u', 'f', 1, x'00', 0)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=r"created by the C gearmand.*--libsqlite3-table"):
        open_store("libsqlite3", {"libsqlite3-db": str(tmp_path / "ref.db")})
    # Untouched, and another table in the same file works.
    db = sqlite3.connect(tmp_path / "ref.db")
    assert db.execute("SELECT count(*) FROM gearman_queue").fetchone()[0] == 1
    db.close()
    store = open_store("libsqlite3", {"libsqlite3-db": str(tmp_path / "ref.db"),
                                      "libsqlite3-table": "gearman_queue_py"})
    assert store is not None and store.replay() == []
    store.close()


def test_a_foreign_table_is_refused(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "x.db")
    db.execute("CREATE TABLE gearman_queue (a, b)")
    db.close()
    with pytest.raises(StoreError, match="unexpected columns"):
        SqliteStore(str(tmp_path / "x.db"))


def test_unopenable_database() -> None:
    with pytest.raises(StoreError, match="SQLite"):
        SqliteStore("/nonexistent-dir/q.db")

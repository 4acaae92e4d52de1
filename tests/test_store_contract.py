"""The same contract for every persistent queue store (server/store): order, removal,
no (unique, function) collisions, any bytes, epoch and reducer kept (decisions.md §5)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.store import Store, StoredJob, open_store
from server.store import memcached as mc

IN_CI = os.environ.get("CI") == "true"
STORES = ["libsqlite3", "flatfile", "postgres", "mysql", "redis", "libmemcached"]

Opener = Callable[[], Store]


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _unavailable(what: str) -> None:
    """Skip locally, fail on CI: a store whose service is missing is not tested."""
    if IN_CI:
        pytest.fail(f"{what} is not reachable on CI")
    pytest.skip(f"{what} not reachable")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def memcached_port() -> Iterator[int]:
    binary = shutil.which("memcached")
    if binary is None:
        if IN_CI:
            pytest.fail("memcached is not installed on CI")
        pytest.skip("memcached not installed")
    port = _free_port()
    proc = subprocess.Popen([binary, "-u", "root", "-l", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _reachable(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("memcached did not start")
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _options(name: str, tmp_path: Path, suffix: str,
             request: pytest.FixtureRequest) -> tuple[dict[str, str], Callable[[], None]]:
    """Options for one fresh store of ``name`` and a function that removes its data."""
    def nothing() -> None:
        pass

    if name == "libsqlite3":
        return {"libsqlite3-db": str(tmp_path / "q.db")}, nothing
    if name == "flatfile":
        return {"flatfile-file": str(tmp_path / "q.journal")}, nothing
    if name == "postgres":
        if not _reachable(5432):
            _unavailable("PostgreSQL on 127.0.0.1:5432")
        table = f"gearman_test_{suffix}"
        conninfo = "host=127.0.0.1 port=5432 dbname=test user=postgres"

        def drop_pg() -> None:
            import psycopg
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(f"DROP TABLE IF EXISTS {table}")

        return {"libpq-conninfo": conninfo, "libpq-table": table}, drop_pg
    if name == "mysql":
        if not _reachable(3306):
            _unavailable("MySQL/MariaDB on 127.0.0.1:3306")
        table = f"gearman_test_{suffix}"

        def drop_my() -> None:
            import pymysql  # type: ignore[import-untyped]
            conn = pymysql.connect(host="127.0.0.1", user="root", database="test")
            try:
                with conn.cursor() as cur:
                    cur.execute(f"DROP TABLE IF EXISTS {table}")
                conn.commit()
            finally:
                conn.close()

        return {"mysql-host": "127.0.0.1", "mysql-user": "root", "mysql-db": "test",
                "mysql-table": table}, drop_my
    if name == "redis":
        if not _reachable(6379):
            _unavailable("Redis on 127.0.0.1:6379")
        prefix = f"_gear_test_{suffix}_"

        def drop_redis() -> None:
            import redis
            client = redis.Redis(host="127.0.0.1", port=6379)
            keys = list(client.scan_iter(match=prefix + "*"))
            if keys:
                client.delete(*keys)
            client.close()

        return {"redis-server": "127.0.0.1", "redis-port": "6379",
                "redis-prefix": prefix}, drop_redis
    if name == "libmemcached":
        port = request.getfixturevalue("memcached_port")
        return {"libmemcached-servers": f"127.0.0.1:{port}",
                "libmemcached-prefix": f"gt{suffix}_"}, nothing
    raise AssertionError(name)


@pytest.fixture(params=STORES)
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """``opener()`` opens (again) the same fresh store; all are closed and removed after."""
    name: str = request.param
    options, cleanup = _options(name, tmp_path, uuid.uuid4().hex[:10], request)
    opened: list[Store] = []

    def open_() -> Store:
        store = open_store(name, options)
        assert store is not None
        opened.append(store)
        return store

    try:
        yield open_
    finally:
        for store in opened:
            store.close()
        cleanup()


def job(n: int, **kw: object) -> StoredJob:
    fields: dict[str, object] = {"key": f"k{n}", "function": b"reverse", "unique": b"",
                                 "priority": n % 3, "data": f"payload {n}".encode()}
    fields.update(kw)
    return StoredJob(**fields)  # type: ignore[arg-type]


def reopen(opener: Opener, store: Store) -> Store:
    store.close()
    return opener()


def test_replay_keeps_the_order_added_across_batches_and_restarts(opener: Opener) -> None:
    store = opener()
    assert store.replay() == []
    jobs = [job(n) for n in range(7)]
    store.commit(jobs[:1], [])
    store.commit(jobs[1:2], [])
    store.commit(jobs[2:], [])
    assert store.replay() == jobs
    store = reopen(opener, store)
    assert store.replay() == jobs


def test_done_removes_only_that_job(opener: Opener) -> None:
    store = opener()
    a, b, c = job(1), job(2), job(3)
    store.commit([a, b, c], [])
    store.commit([], ["k2", "no-such-key"])
    assert store.replay() == [a, c]
    store = reopen(opener, store)
    assert store.replay() == [a, c]
    store.commit([], ["k1", "k3"])
    assert reopen(opener, store).replay() == []


def test_add_and_done_in_one_batch(opener: Opener) -> None:
    store = opener()
    a, b = job(1), job(2)
    store.commit([a, b], ["k1"])
    assert store.replay() == [b]
    assert reopen(opener, store).replay() == [b]


def test_empty_and_dash_uniques_never_collide(opener: Opener) -> None:
    store = opener()
    jobs = [job(1, unique=b""), job(2, unique=b""), job(3, unique=b"-"), job(4, unique=b"-"),
            job(5, unique=b"same"), job(6, unique=b"same")]
    store.commit(jobs[:3], [])
    store.commit(jobs[3:], [])
    assert reopen(opener, store).replay() == jobs


def test_any_bytes_in_function_unique_data_and_reducer(opener: Opener) -> None:
    store = opener()
    weird = StoredJob(key="H:host:12-x y/é", function=b"fn-with-dash\x00\xff\n -",
                      unique=b"u-\x00\xfe-", priority=0, data=bytes(range(256)) * 40,
                      when=0, reducer=b"red\x00-uce")
    empty = StoredJob(key="e", function=b"-", unique=b"-", priority=2, data=b"")
    store.commit([weird, empty], [])
    assert reopen(opener, store).replay() == [weird, empty]


def test_epoch_time_and_reducer_are_kept(opener: Opener) -> None:
    store = opener()
    epoch = job(1, when=4_102_444_800, reducer=b"count")  # 2100-01-01, past 32 bits signed
    store.commit([epoch, job(2)], [])
    got = reopen(opener, store).replay()
    assert got[0].when == 4_102_444_800 and got[0].reducer == b"count"
    assert got == [epoch, job(2)]


def test_adding_a_stored_key_again_replaces_it(opener: Opener) -> None:
    store = opener()
    store.commit([job(1), job(2)], [])
    store.commit([job(1, data=b"new")], [])
    got = reopen(opener, store).replay()
    assert sorted(got, key=lambda j: j.key) == [job(1, data=b"new"), job(2)]


def test_a_thousand_jobs(opener: Opener) -> None:
    store = opener()
    jobs = [job(n, unique=str(n % 7).encode()) for n in range(1000)]
    store.commit(jobs[:500], [])
    store.commit(jobs[500:], [])
    store.commit([], [j.key for j in jobs[::2]])
    assert reopen(opener, store).replay() == jobs[1::2]


def test_a_large_payload(opener: Opener) -> None:
    store = opener()
    big = job(1, data=os.urandom(3 << 20) + b"\x00end")
    store.commit([big, job(2)], [])
    assert reopen(opener, store).replay() == [big, job(2)]


# --- memcached's own index: segments roll over, compaction keeps live jobs ---


def mc_job(n: int) -> StoredJob:
    return StoredJob(key=f"H:x:{n}", function=b"f-\x00", unique=b"-", priority=n % 3,
                     data=b"d" * n)


def test_index_segments_and_compaction_keep_live_jobs_in_order(
        memcached_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mc, "SEGMENT", 2000)
    monkeypatch.setattr(mc, "COMPACT_SLACK", 50)
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    store = mc.MemcachedStore([("127.0.0.1", memcached_port)], prefix)
    jobs = [mc_job(n) for n in range(300)]
    for start in range(0, 300, 30):
        store.commit(jobs[start:start + 30], [])
    assert store._last > 0  # the index rolled over to more segments
    live = jobs[::25]
    store.commit([], [j.key for j in jobs if j not in live])
    assert store._entries == len(live)  # compacted
    store.commit([mc_job(1000)], [])
    store.close()
    store = mc.MemcachedStore([("127.0.0.1", memcached_port)], prefix)
    assert store.replay() == [*live, mc_job(1000)]
    store.close()


def test_server_list_parsing() -> None:
    assert mc.parse_servers("a:1, b,--SERVER=c:3") == [("a", 1), ("b", 11211), ("c", 3)]


# --- SQL stores refuse a table the C gearmand created (its key is (unique, function)) ---

REFERENCE_DDL = {
    "postgres": "CREATE TABLE {t} (unique_key VARCHAR(64), function_name VARCHAR(255), "
                "priority INTEGER, data BYTEA, when_to_run INTEGER, "
                "UNIQUE (unique_key, function_name))",
    "mysql": "CREATE TABLE {t} (unique_key VARCHAR(64), function_name VARCHAR(255), "
             "priority INT, data LONGBLOB, when_to_run INT, "
             "unique key (unique_key, function_name))",
}


@pytest.mark.parametrize("name", ["postgres", "mysql"])
def test_sql_stores_refuse_the_reference_servers_table(
        name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from server.store import StoreError

    options, cleanup = _options(name, tmp_path, uuid.uuid4().hex[:10], request)
    table = options["libpq-table" if name == "postgres" else "mysql-table"]
    ddl = REFERENCE_DDL[name].format(t=table)
    try:
        if name == "postgres":
            import psycopg
            with psycopg.connect(options["libpq-conninfo"], autocommit=True) as conn:
                conn.execute(ddl)
        else:
            import pymysql
            conn = pymysql.connect(host="127.0.0.1", user="root", database="test")
            with conn.cursor() as cur:
                cur.execute(ddl)
            conn.close()
        with pytest.raises(StoreError, match=r"created by the C gearmand.*use another"):
            open_store(name, options)
    finally:
        cleanup()


def test_a_dead_letter_replaces_its_job_and_survives_a_restart(opener: Opener) -> None:
    # server.retry keeps a dead letter as the job's own record rewritten: when is
    # DEAD_WHEN (-1) and the history leads the data. Every store must keep it as given.
    from server.persistence import stored_letter
    from server.retry import DEAD_WHEN, DeadLetter, decode_envelope

    store = opener()
    a, b = job(1, unique=b"u1", reducer=b"r"), job(2)
    store.commit([a, b], [])
    letter = DeadLetter(b"reverse", b"H:x:1", b"u1", a.data, a.priority, b"r", 3,
                        "exception: boom \u00e9", 1_700_000_000.5, 1_700_000_060.25, "k1")
    store.commit([stored_letter(letter, "k1")], [])
    store = reopen(opener, store)
    replayed = {j.key: j for j in store.replay()}
    assert set(replayed) == {"k1", "k2"} and replayed["k2"] == b
    dead = replayed["k1"]
    assert dead.when == DEAD_WHEN
    assert decode_envelope(dead.function, dead.unique, dead.priority, dead.reducer, dead.data,
                           dead.key) == letter
    store.commit([], ["k1"])
    assert reopen(opener, store).replay() == [b]

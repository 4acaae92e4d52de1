"""Persistent queue stores: commits/s and jobs/s at batch sizes 1 and 100.

    .venv/bin/python benchmarks/bench_store.py [--seconds 2] [--data 100] [--only sqlite,flatfile]
        [--batches 1,100,1000] [--adds-only]

Each commit adds ``batch`` jobs and removes the ``batch`` added by the commit before, so
the store stays small, as in a server whose workers keep up. Stores whose service is not
reachable on 127.0.0.1 are listed as skipped. A last row drives SQLite through
``StoreWriter`` with 1,000 concurrent ``add`` calls (group commit, add then done).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from server.store import Store, StoredJob, open_store
from server.store.writer import StoreWriter


def reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def store_options(name: str, tmp: str, memcached_port: int | None) -> dict[str, str] | None:
    suffix = uuid.uuid4().hex[:8]
    if name == "libsqlite3":
        return {"libsqlite3-db": os.path.join(tmp, f"{suffix}.db")}
    if name.startswith("flatfile"):
        policy = name.partition(":")[2] or "batch"
        return {"flatfile-file": os.path.join(tmp, f"{suffix}.journal"),
                "flatfile-fsync": policy}
    if name == "postgres" and reachable(5432):
        return {"libpq-conninfo": "host=127.0.0.1 dbname=test user=postgres",
                "libpq-table": f"gearman_bench_{suffix}"}
    if name == "mysql" and reachable(3306):
        return {"mysql-host": "127.0.0.1", "mysql-user": "root", "mysql-db": "test",
                "mysql-table": f"gearman_bench_{suffix}"}
    if name == "redis" and reachable(6379):
        return {"redis-prefix": f"_gear_bench_{suffix}_"}
    if name == "libmemcached" and memcached_port:
        return {"libmemcached-servers": f"127.0.0.1:{memcached_port}",
                "libmemcached-prefix": f"gb{suffix}_"}
    return None


def drop(name: str, options: dict[str, str]) -> None:
    """Remove what a benchmark left in a shared service."""
    if name == "postgres":
        import psycopg
        with psycopg.connect(options["libpq-conninfo"], autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {options['libpq-table']}")
    elif name == "mysql":
        import pymysql  # type: ignore[import-untyped]
        conn = pymysql.connect(host="127.0.0.1", user="root", database="test")
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {options['mysql-table']}")
        conn.close()
    elif name == "redis":
        import redis
        client = redis.Redis()
        keys = list(client.scan_iter(match=options["redis-prefix"] + "*"))
        if keys:
            client.delete(*keys)
        client.close()


def run(store: Store, batch: int, seconds: float, data: bytes,
        removes: bool = True) -> tuple[float, float, float]:
    """(commits/s, jobs/s, CPU us per job, of this process and its threads) for
    ``seconds`` of add-batch + done-previous-batch commits."""
    n = 0
    previous: list[str] = []
    commits = 0
    cpu = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        jobs = [StoredJob(key=f"k{n + i}", function=b"bench", unique=b"", priority=1,
                          data=data) for i in range(batch)]
        n += batch
        store.commit(jobs, previous)
        previous = [j.key for j in jobs] if removes else []
        commits += 1
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    return commits / elapsed, commits * batch / elapsed, cpu / (commits * batch) * 1e6


async def run_writer(store: Store, jobs: int, data: bytes) -> tuple[float, float, int]:
    writer = StoreWriter(store)

    async def one(n: int) -> None:
        await writer.add(StoredJob(key=f"w{n}", function=b"bench", unique=b"", priority=1,
                                   data=data))
        writer.done(f"w{n}")

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        async with trio.open_nursery() as adders:
            for n in range(jobs):
                adders.start_soon(one, n)
        writer.close()
    elapsed = time.perf_counter() - start
    return writer.commits / elapsed, jobs / elapsed, writer.commits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--data", type=int, default=100, help="payload bytes per job")
    parser.add_argument("--only", default="", help="comma-separated store names")
    parser.add_argument("--dir", default=None, help="directory for file stores")
    parser.add_argument("--batches", default="1,100",
                        help="comma-separated jobs per commit (a server commits up to 1000)")
    parser.add_argument("--adds-only", action="store_true",
                        help="commits only add (background submits with no worker)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    names = ["libsqlite3", "flatfile:batch", "flatfile:always", "flatfile:never",
             "postgres", "mysql", "redis", "libmemcached"]
    if args.only:
        wanted = args.only.split(",")
        names = [n for n in names if any(n.startswith(w) for w in wanted)]
    data = os.urandom(args.data)
    memcached: subprocess.Popen[bytes] | None = None
    memcached_port = None
    if "libmemcached" in names and shutil.which("memcached"):
        memcached_port = free_port()
        memcached = subprocess.Popen(["memcached", "-u", "root", "-l", "127.0.0.1", "-p",
                                      str(memcached_port)])
        for _ in range(500):
            if reachable(memcached_port):
                break
            time.sleep(0.01)
    rows: list[tuple[str, ...]] = []
    try:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            for name in names:
                for batch in batches:
                    options = store_options(name, tmp, memcached_port)
                    if options is None:
                        rows.append((name, str(batch), "skipped", "", "", ""))
                        break
                    store = open_store(name.partition(":")[0], options)
                    assert store is not None
                    try:
                        commits, jobs, cpu = run(store, batch, args.seconds, data,
                                                 not args.adds_only)
                    finally:
                        store.close()
                        drop(name, options)
                    rows.append((name, str(batch), f"{commits:,.0f}", f"{jobs:,.0f}",
                                 f"{cpu:,.1f}", ""))
            if not args.only or "writer" in args.only:
                options = store_options("libsqlite3", tmp, None)
                assert options is not None
                store = open_store("libsqlite3", options)
                assert store is not None
                commits, jobs, count = trio.run(run_writer, store, 1000, data)
                rows.append(("writer+libsqlite3", "1000 concurrent", f"{commits:,.0f}",
                             f"{jobs:,.0f}", "", f"{count} commits"))
    finally:
        if memcached is not None:
            memcached.terminate()
            memcached.wait(5)
    header = ("store", "batch", "commits/s", "jobs/s", "CPU us/job", "note")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(6)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) if i in (0, 1, 5) else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths, strict=True))))


if __name__ == "__main__":
    main()

"""shell_examples/search_engine: the Narada search engine crawls a site served by Python's
http.server, indexes it and answers queries with "N Documents matched 'word'" lines: on
SQLite FTS5 (the zero-setup fallback) and on MariaDB (FULLTEXT in place of Sphinx) with
memcached as the document cache.

MariaDB is the machine's service on 127.0.0.1:3306 (root, no password, database ``test``);
memcached is started for the test. Either missing skips the test, or fails it on CI."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
from conftest import IN_CI, RunningServer, ServerFactory, free_port
from test_examples_tutorial import EXAMPLES, run_example, sections

pytestmark = pytest.mark.slow

PAGES = ["background.html", "clients.html", "index.html", "mapreduce.html", "server.html",
         "workers.html"]


def unavailable(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is not available on CI")
    pytest.skip(f"{what} not available")


def reachable(port: int, timeout: float) -> bool:
    """Whether 127.0.0.1:port accepts a connection within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)


@pytest.fixture
def server(start_server: ServerFactory) -> RunningServer:
    if shutil.which("curl") is None:
        unavailable("curl")
    return start_server("ours")


@pytest.fixture
def mariadb_tables() -> Iterator[str]:
    """A table prefix of our own in MariaDB's ``test``; its tables are dropped after."""
    if not reachable(3306, timeout=10):
        unavailable("MariaDB on 127.0.0.1:3306")
    import pymysql  # type: ignore[import-untyped]

    prefix = f"tut_{uuid.uuid4().hex[:8]}_"
    yield prefix
    conn = pymysql.connect(host="127.0.0.1", user="root", database="test")
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {prefix}urls, {prefix}pages")
        conn.commit()
    finally:
        conn.close()


def tables_like(prefix: str) -> list[str]:
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", user="root", database="test")
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES LIKE %s", (prefix + "%",))
            return [name for (name,) in cur.fetchall()]
    finally:
        conn.close()


@pytest.fixture
def memcached_port() -> Iterator[int]:
    binary = shutil.which("memcached")
    if binary is None:
        unavailable("memcached")
    assert binary is not None
    port = free_port()
    proc = subprocess.Popen([binary, "-u", "root", "-l", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not reachable(port, timeout=10):
            pytest.fail("memcached did not start")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def check_search_output(out: str, site: str) -> None:
    part = sections(out)
    assert part[f"crawl from {site}/index.html"] == [f"queued {site}/index.html"]
    # Every page reachable from index.html, and not the page nothing links to.
    assert f"crawled 6 pages: {' '.join(PAGES)}" in part, out

    def urls(query: str) -> set[str]:
        found = part[f"search: {query}"]
        assert found[0] == f"{len(found[1:]) // 2} Documents matched '{query}'"
        return set(re.findall(rf"<{re.escape(site)}/([^/>]+)>", "\n".join(found)))

    assert urls("gearman") == {"index.html", "mapreduce.html"}
    assert urls("background status") == {"background.html", "clients.html"}
    assert urls("priorities") == {"server.html"}
    assert part["search: zeppelin"] == ["0 Documents matched 'zeppelin'"]  # only the orphan
    gearman = part["search: gearman"]
    assert gearman[1] == f"Gearman in a nutshell <{site}/index.html>"  # title counts most
    assert gearman[2].strip().startswith("[Gearman] in a nutshell")


QUERIES = ("gearman", "background status", "zeppelin", "priorities")


def test_search_engine_on_sqlite(server: RunningServer) -> None:
    port = free_port()
    out = run_example(server, "search_engine/run.sh", *QUERIES,
                      env={"SITE_PORT": str(port), "SEARCH_DB": "", "SEARCH_CACHE": ""},
                      timeout=60).stdout
    check_search_output(out, f"http://127.0.0.1:{port}")


def test_search_engine_on_mariadb_with_memcached(
    server: RunningServer, mariadb_tables: str, memcached_port: int
) -> None:
    from pymemcache.client.base import Client

    port = free_port()
    out = run_example(
        server, "search_engine/run.sh", *QUERIES, timeout=60,
        env={"SITE_PORT": str(port), "SEARCH_DB": "mysql://root@127.0.0.1:3306/test",
             "SEARCH_TABLES": mariadb_tables, "SEARCH_CACHE": f"127.0.0.1:{memcached_port}"},
    ).stdout
    site = f"http://127.0.0.1:{port}"
    check_search_output(out, site)
    # run.sh drops its tables at the end (the fixture would too).
    assert tables_like(mariadb_tables) == []
    # The index worker put every page in the document cache.
    import sys
    sys.path.insert(0, str(EXAMPLES / "search_engine"))
    try:
        from narada_store import Cache
    finally:
        sys.path.remove(str(EXAMPLES / "search_engine"))
    cache = Client(("127.0.0.1", memcached_port), connect_timeout=5, timeout=5)
    try:
        for page in PAGES:
            assert cache.get(Cache.key(f"{site}/{page}")) is not None, page
    finally:
        cache.close()

#!/usr/bin/env python3
"""Where the search engine keeps its data, for the ``insert``, ``index`` and ``search`` workers.

- ``SEARCH_DB`` unset: SQLite (Python's own ``sqlite3``) in ``SEARCH_DATA/search.db``, an FTS5
  full-text index; nothing to set up.
- ``SEARCH_DB=mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE``: MariaDB or MySQL through
  PyMySQL, tables ``SEARCH_TABLES`` + ``urls`` / ``pages`` (prefix default ``narada_``), with
  an InnoDB FULLTEXT index standing in for the tutorial's Sphinx.
- ``SEARCH_CACHE=HOST:PORT`` (optional): memcached as the document cache (pymemcache): the
  index worker puts every page there, the search worker reads the pages it shows from there
  first and from the database on a miss.

As a command: ``narada_store.py add-url URL`` exits 0 if the URL is new (and records it), 1 if
it was seen before; ``narada_store.py urls`` lists the URLs seen; ``narada_store.py drop``
removes the tables (or the SQLite file).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit


@dataclass
class Page:
    url: str
    title: str
    body: str


def words_of(query: str) -> list[str]:
    return re.findall(r"\w+", query.lower())


def snippet(body: str, words: list[str], width: int = 10) -> str:
    """About ``width`` words of ``body`` around the first query word, each query word in
    [brackets], with ``...`` where text was left out."""
    tokens = body.split()
    marked = [re.sub(r"\w+", lambda m: f"[{m[0]}]" if m[0].lower() in words else m[0], t)
              for t in tokens]
    first = next((i for i, t in enumerate(marked) if "[" in t), 0)
    start = max(0, min(first - width // 2, len(tokens) - width))
    text = " ".join(marked[start : start + width])
    return ("..." if start > 0 else "") + text + ("..." if start + width < len(tokens) else "")


class SqliteStore:
    def __init__(self) -> None:
        self.path = Path(os.environ.get("SEARCH_DATA", ".")) / "search.db"
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")  # the search worker reads while we write
        self.db.execute("CREATE TABLE IF NOT EXISTS urls (url TEXT PRIMARY KEY)")
        self.db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS pages "
                        "USING fts5(url UNINDEXED, title, body)")

    def add_url(self, url: str) -> bool:
        with self.db:
            return self.db.execute("INSERT OR IGNORE INTO urls VALUES (?)", (url,)).rowcount == 1

    def put_page(self, page: Page) -> None:
        with self.db:
            self.db.execute("DELETE FROM pages WHERE url = ?", (page.url,))
            self.db.execute("INSERT INTO pages (url, title, body) VALUES (?, ?, ?)",
                            (page.url, page.title, page.body))

    def search(self, query: str) -> list[str]:
        """The URLs of the pages with every word, best first (a word in the title counts ten
        times one in the text)."""
        match = " ".join('"' + w + '"' for w in words_of(query))
        rows = self.db.execute("SELECT url FROM pages WHERE pages MATCH ? "
                               "ORDER BY bm25(pages, 0.0, 10.0, 1.0), url", (match,))
        return [url for (url,) in rows]

    def all_urls(self) -> list[str]:
        return [url for (url,) in self.db.execute("SELECT url FROM urls ORDER BY url")]

    def get_page(self, url: str) -> Page:
        title, body = self.db.execute("SELECT title, body FROM pages WHERE url = ?",
                                      (url,)).fetchone()
        return Page(url, title, body)

    def drop(self) -> None:
        self.db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)

    def close(self) -> None:
        self.db.close()


class MysqlStore:
    def __init__(self, dsn: str) -> None:
        import pymysql  # only needed here: PyMySQL (this package's "queues" extra)

        parts = urlsplit(dsn)
        self.db = pymysql.connect(
            host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
            user=unquote(parts.username or "root"), password=unquote(parts.password or ""),
            database=parts.path.lstrip("/") or "test", charset="utf8mb4", autocommit=True,
        )
        prefix = os.environ.get("SEARCH_TABLES", "narada_")
        if not re.fullmatch(r"\w+", prefix):
            raise ValueError(f"SEARCH_TABLES must be letters, digits and _: {prefix!r}")
        self.urls, self.pages = prefix + "urls", prefix + "pages"
        self._sql(f"CREATE TABLE IF NOT EXISTS {self.urls} (url VARCHAR(700) PRIMARY KEY) "
                  "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")
        self._sql(f"CREATE TABLE IF NOT EXISTS {self.pages} (url VARCHAR(700) PRIMARY KEY, "
                  "title TEXT NOT NULL, body MEDIUMTEXT NOT NULL, FULLTEXT ft_title (title), "
                  "FULLTEXT ft_text (title, body)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")

    def _sql(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        with self.db.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall(), cur.rowcount

    def add_url(self, url: str) -> bool:
        return bool(self._sql(f"INSERT IGNORE INTO {self.urls} VALUES (%s)", (url,))[1] == 1)

    def put_page(self, page: Page) -> None:
        self._sql(f"REPLACE INTO {self.pages} (url, title, body) VALUES (%s, %s, %s)",
                  (page.url, page.title, page.body))

    def search(self, query: str) -> list[str]:
        words = words_of(query)
        if not words:
            return []
        every = " ".join("+" + w for w in words)    # boolean mode: every word must occur
        rows, _ = self._sql(
            f"SELECT url FROM {self.pages} "
            "WHERE MATCH (title, body) AGAINST (%s IN BOOLEAN MODE) "
            "ORDER BY 10 * MATCH (title) AGAINST (%s) + MATCH (title, body) AGAINST (%s) DESC, "
            "url", (every, query, query))
        return [url for (url,) in rows]

    def all_urls(self) -> list[str]:
        return [url for (url,) in self._sql(f"SELECT url FROM {self.urls} ORDER BY url")[0]]

    def get_page(self, url: str) -> Page:
        rows, _ = self._sql(f"SELECT title, body FROM {self.pages} WHERE url = %s", (url,))
        return Page(url, *rows[0])

    def drop(self) -> None:
        self._sql(f"DROP TABLE IF EXISTS {self.urls}, {self.pages}")
        self.db.close()

    def close(self) -> None:
        self.db.close()


class Cache:
    """memcached as the document cache (``SEARCH_CACHE``); without it, every call misses."""

    def __init__(self) -> None:
        self.client: Any = None
        server = os.environ.get("SEARCH_CACHE")
        if server:
            from pymemcache.client.base import Client

            host, _, port = server.rpartition(":")
            self.client = Client((host or "127.0.0.1", int(port)), connect_timeout=5,
                                 timeout=5)

    @staticmethod
    def key(url: str) -> str:
        return "narada:" + hashlib.sha1(url.encode()).hexdigest()

    def put(self, page: Page) -> None:
        if self.client is not None:
            self.client.set(self.key(page.url), json.dumps([page.title, page.body]).encode())

    def get(self, url: str) -> Page | None:
        if self.client is None:
            return None
        value = self.client.get(self.key(url))
        return None if value is None else Page(url, *json.loads(value))


def open_store() -> SqliteStore | MysqlStore:
    dsn = os.environ.get("SEARCH_DB")
    if not dsn:
        return SqliteStore()
    if not dsn.startswith("mysql://"):
        raise ValueError(f"SEARCH_DB must be mysql://USER[:PASSWORD]@HOST[:PORT]/DB: {dsn!r}")
    return MysqlStore(dsn)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "add-url":
        store = open_store()
        try:
            return 0 if store.add_url(argv[1]) else 1
        finally:
            store.close()
    if argv == ["urls"]:
        store = open_store()
        print("".join(url + "\n" for url in store.all_urls()), end="")
        store.close()
        return 0
    if argv == ["drop"]:
        open_store().drop()
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""The ``index`` worker: adds a fetched page (the URL, a newline, the HTML) to an SQLite FTS5
full-text index (``SEARCH_DATA/search.db``), replacing an older copy of the same URL."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from html.parser import HTMLParser
from pathlib import Path

from gearman_cli import Job, Worker

SCHEMA = "CREATE VIRTUAL TABLE IF NOT EXISTS pages USING fts5(url UNINDEXED, title, body)"


def open_index() -> sqlite3.Connection:
    db = sqlite3.connect(Path(os.environ.get("SEARCH_DATA", ".")) / "search.db")
    db.execute("PRAGMA journal_mode=WAL")  # the search worker reads while we write
    db.execute(SCHEMA)
    return db


class TextOfPage(HTMLParser):
    """The title and the visible text of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.title = ""
        self.text: list[str] = []
        self._in: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._in:
            del self._in[len(self._in) - 1 - self._in[::-1].index(tag) :]

    def handle_data(self, data: str) -> None:
        if "title" in self._in:
            self.title += data
        elif not {"script", "style", "head"} & set(self._in):
            self.text.append(data)


def index(job: Job) -> str:
    url, _, html = job.data.decode("utf-8", "replace").partition("\n")
    page = TextOfPage()
    page.feed(html)
    page.close()
    body = " ".join(" ".join(page.text).split())
    # A connection per job: blocking callbacks run in worker threads.
    with contextlib.closing(open_index()) as db, db:
        db.execute("DELETE FROM pages WHERE url = ?", (url,))
        db.execute(
            "INSERT INTO pages (url, title, body) VALUES (?, ?, ?)",
            (url, page.title.strip(), body),
        )
    return f"indexed {url} ({len(body.split())} words)"


def main() -> None:
    open_index().close()
    worker = Worker(os.environ.get("GEARMAN_SERVER", "localhost:4730"))
    worker.add_function("index", index)
    with contextlib.suppress(KeyboardInterrupt):
        worker.work_forever()


if __name__ == "__main__":
    main()

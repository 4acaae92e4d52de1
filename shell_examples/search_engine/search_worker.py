#!/usr/bin/env python3
"""The ``search`` worker: the workload is a query (words that must all occur); the result is
one block per page, best match first: the title, the URL and a snippet with the words in
[brackets]; a word in the title counts ten times one in the text. Reads the FTS5 index the
``index`` worker writes (``SEARCH_DATA/search.db``)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from gearman_cli import Job, Worker

SCHEMA = "CREATE VIRTUAL TABLE IF NOT EXISTS pages USING fts5(url UNINDEXED, title, body)"
QUERY = """
    SELECT title, url, snippet(pages, 2, '[', ']', '...', 10)
    FROM pages WHERE pages MATCH ? ORDER BY bm25(pages, 0.0, 10.0, 1.0) LIMIT 10
"""


def fts_query(text: str) -> str:
    """Every word as a quoted FTS5 string, so user input is never read as query syntax."""
    return " ".join('"' + word.replace('"', '""') + '"' for word in text.split())


def open_index() -> sqlite3.Connection:
    db = sqlite3.connect(Path(os.environ.get("SEARCH_DATA", ".")) / "search.db")
    db.execute(SCHEMA)
    return db


def search(job: Job) -> str:
    query = fts_query(job.data.decode("utf-8", "replace"))
    if not query:
        return ""
    # A connection per job: blocking callbacks run in worker threads.
    with contextlib.closing(open_index()) as db:
        rows = db.execute(QUERY, (query,)).fetchall()
    return "".join(f"{title} <{url}>\n    {snippet}\n" for title, url, snippet in rows)


def main() -> None:
    open_index().close()
    worker = Worker(os.environ.get("GEARMAN_SERVER", "localhost:4730"))
    worker.add_function("search", search)
    with contextlib.suppress(KeyboardInterrupt):
        worker.work_forever()


if __name__ == "__main__":
    main()

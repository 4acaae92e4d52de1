#!/usr/bin/env python3
"""The ``index`` worker: adds a fetched page (the URL, a newline, the HTML) to the full-text
index (``narada_store``: SQLite FTS5, or MariaDB's FULLTEXT with ``SEARCH_DB``), replacing an
older copy of the same URL, and to the memcached document cache with ``SEARCH_CACHE``."""

from __future__ import annotations

import contextlib
import os
from html.parser import HTMLParser

from narada_store import Cache, Page, open_store

from gearman_cli import Job, Worker


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
    parsed = TextOfPage()
    parsed.feed(html)
    parsed.close()
    page = Page(url, parsed.title.strip(), " ".join(" ".join(parsed.text).split()))
    # A connection per job: blocking callbacks run in worker threads.
    with contextlib.closing(open_store()) as store:
        store.put_page(page)
    Cache().put(page)
    return f"indexed {url} ({len(page.body.split())} words)"


def main() -> None:
    open_store().close()  # creates the tables, or fails early
    worker = Worker(os.environ.get("GEARMAN_SERVER", "localhost:4730"))
    worker.add_function("index", index)
    with contextlib.suppress(KeyboardInterrupt):
        worker.work_forever()


if __name__ == "__main__":
    main()

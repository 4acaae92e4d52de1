#!/usr/bin/env python3
"""The ``search`` worker: the workload is a query (words that must all occur). The result is
the tutorial's ``N Documents matched 'QUERY'`` line, then one block per page, best match
first: the title, the URL and a snippet with the words in [brackets]. The index is
``narada_store``'s (SQLite FTS5, or MariaDB's FULLTEXT with ``SEARCH_DB``); the pages shown
come from the memcached document cache when there is one (``SEARCH_CACHE``), else from the
database."""

from __future__ import annotations

import contextlib
import os

from narada_store import Cache, open_store, snippet, words_of

from gearman_cli import Job, Worker

LIMIT = 10


def search(job: Job) -> str:
    query = " ".join(job.data.decode("utf-8", "replace").split())
    cache = Cache()
    # A connection per job: blocking callbacks run in worker threads.
    with contextlib.closing(open_store()) as store:
        urls = store.search(query)
        pages = []
        for url in urls[:LIMIT]:
            page = cache.get(url)
            if page is None:
                page = store.get_page(url)
                cache.put(page)
            pages.append(page)
    lines = [f"{len(urls)} Documents matched '{query}'"]
    for page in pages:
        lines += [f"{page.title} <{page.url}>", f"    {snippet(page.body, words_of(query))}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    open_store().close()
    worker = Worker(os.environ.get("GEARMAN_SERVER", "localhost:4730"))
    worker.add_function("search", search)
    with contextlib.suppress(KeyboardInterrupt):
        worker.work_forever()


if __name__ == "__main__":
    main()

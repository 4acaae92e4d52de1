"""The web monitor on ``--metrics-port``: ``GET /`` is one self-contained page (HTML, CSS
and a little JavaScript, shipped in this package as ``monitor.html``; nothing loaded from
elsewhere) that polls ``GET /stats.json``, the admin ``stats json`` document. No I/O here
beyond reading the page from the package once.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

from .. import stats
from ..acl import ALL, View
from ..admin import AdminContext

__all__ = ["JSON_TYPE", "PAGE_TYPE", "page", "stats_json"]

PAGE_TYPE = b"text/html; charset=utf-8"
JSON_TYPE = b"application/json"


@functools.cache
def page() -> bytes:
    """The monitor page, as shipped (read once)."""
    return resources.files(__name__).joinpath("monitor.html").read_bytes()


def stats_json(ctx: AdminContext, view: View = ALL) -> bytes:
    """The ``stats json`` document, read now (without the admin reply's ``.`` line)."""
    now = ctx.clock()
    doc = stats.document(ctx.manager, version=ctx.version, uptime=ctx.uptime(now), now=now,
                         server=ctx.server_stats() if ctx.server_stats else None, view=view)
    return json.dumps(doc, separators=(",", ":")).encode()

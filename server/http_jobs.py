"""The HTTP front-end's read-only pages: ``GET /jobs/HANDLE`` (a job's state and
result, ``server.results``) and ``GET /dead[/FUNCTION]`` (dead letters, ``server.retry``),
both JSON with data in base64 (it is any bytes); and ``GET /metrics`` with, on the
metrics port, the web monitor (``GET /`` and ``GET /stats.json``)."""

from __future__ import annotations

import base64
import json
import urllib.parse

from .acl import View
from .admin import AdminContext
from .manager import Conn, Manager
from .results_io import ResultCacheError, lookup


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


async def job_page(manager: Manager, path: bytes, view: View) -> tuple[int, bytes]:
    """(HTTP status, JSON body) for ``path`` (``/jobs/...`` or ``/dead...``), as ``view``
    (the asker's tenant, or all) sees the jobs."""
    if path == b"/dead" or path.startswith(b"/dead/"):
        name = urllib.parse.unquote_to_bytes(path[len(b"/dead/"):]) or None
        letters = [{
            "function": _text(view.show(d.function)), "handle": _text(d.handle),
            "unique": _text(d.unique), "attempts": d.attempts, "error": d.error,
            "first_failed": d.first_failed, "last_failed": d.last_failed,
            "size": len(d.data), "data": base64.b64encode(d.data).decode(),
        } for d in manager.dead_letters.rows(view.key(name) if name else None)
            if view.sees(d.function)]
        return 200, json.dumps(letters).encode()
    handle = urllib.parse.unquote_to_bytes(path[len(b"/jobs/"):])
    try:
        state, result = await lookup(manager, handle=handle)
    except ResultCacheError as exc:
        return 503, json.dumps({"handle": _text(handle), "error": str(exc)}).encode()
    job = manager.jobs.get(handle)
    if (result is not None and not view.sees(result.function)) or \
            (job is not None and not view.sees(job.function.name)):
        state, result = "unknown", None  # another tenant's: as if it did not exist
    doc: dict[str, object] = {"handle": _text(handle), "state": state}
    if result is not None:
        doc.update(function=_text(view.show(result.function)), unique=_text(result.unique),
                   attempts=result.attempts, finished=result.finished,
                   data=base64.b64encode(result.data).decode())
    return (404 if state == "unknown" else 200), json.dumps(doc).encode()


def metrics_page(admin: AdminContext, conn: Conn, method: bytes, path: bytes,
                 metrics_only: bool) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """``GET /metrics``: the Prometheus text format, read from the core now; on the
    metrics port also ``GET /`` (the web monitor) and ``GET /stats.json``. (status,
    headers, body); a status other than 200 has no body (its headers: ``Allow``)."""
    pages = (b"/metrics", b"/", b"/stats.json") if metrics_only else (b"/metrics",)
    if path not in pages:
        return 404, [], b""
    if method != b"GET":
        return 405, [(b"Allow", b"GET")], b""
    if admin.refusal(conn, "stats") is not None:  # admin-read, with --acl-file
        return 403, [], b""
    view = admin.view(conn)
    extra: list[tuple[bytes, bytes]] = []
    if path == b"/metrics":
        from .metrics import CONTENT_TYPE, render  # prometheus_client only when asked

        content_type, page = CONTENT_TYPE, render(admin, view)
    else:
        from . import web

        if path == b"/":
            content_type, page = web.PAGE_TYPE, web.page()
        else:
            content_type, page = web.JSON_TYPE, web.stats_json(admin, view)
            extra.append((b"Cache-Control", b"no-store"))
    return 200, [(b"Content-Type", content_type), (b"Content-Length", b"%d" % len(page)),
                 *extra], page

"""The HTTP front-end's read-only job pages: ``GET /jobs/HANDLE`` (a job's state and
result, ``server.results``) and ``GET /dead[/FUNCTION]`` (dead letters, ``server.retry``).
Both answer JSON; data is base64 (it is any bytes)."""

from __future__ import annotations

import base64
import json
import urllib.parse

from .acl import View
from .manager import Manager
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

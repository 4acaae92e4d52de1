"""The statistics reports: the core's counters (``FunctionStats``, kept by ``JobCore``)
read at query time into the admin ``stats`` rows and the ``stats json`` document.
``server.metrics`` turns the same reading into Prometheus metrics. No I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from .acl import ALL, View
from .jobs import BUCKETS, Function, FunctionStats
from .manager import Manager

#: Priority names, by the core's priority number.
PRIORITY_NAMES = ("high", "normal", "low")


def label(name: bytes) -> str:
    """A function name as text (bytes that are not UTF-8 as ``\\xNN``)."""
    return name.decode("utf-8", "backslashreplace")


def functions(manager: Manager, view: View = ALL) -> Iterator[
        tuple[bytes, FunctionStats, Function | None]]:
    """Every function with statistics that ``view`` sees, by name (as it shows it): its
    counters and its record (None once it was freed; it held nothing then)."""
    for name, stats in sorted(manager.stats.items()):
        if view.sees(name):
            yield view.show(name), stats, manager.functions.get(name)


def oldest_age(fn: Function | None, now: float) -> float:
    """Seconds the oldest job ready in ``fn``'s queues has waited (0 when none does):
    the head of each priority's queue, past entries abandoned there."""
    if fn is None:
        return 0.0
    oldest = now
    for queue in fn.queues:
        for job in queue:
            if job.queued:
                oldest = min(oldest, job.stamp)
                break
    return max(0.0, now - oldest)


def mean(total: float, counts: list[int]) -> float:
    n = sum(counts)
    return total / n if n else 0.0


#: The admin ``stats`` columns after the function's name (man/gearmand.8).
COLUMNS = ("submitted", "coalesced", "completed", "failed", "exceptions", "requeued",
           "timed_out", "cancelled", "queued", "running", "workers", "oldest_age",
           "mean_wait", "mean_run")


def row(name: bytes, st: FunctionStats, fn: Function | None, now: float) -> tuple[
        bytes | int | str, ...]:
    """One admin ``stats`` line's cells (``COLUMNS`` after the name)."""
    return (name, sum(st.submitted), st.coalesced, st.completed, st.failed, st.exceptions,
            st.requeued, st.timed_out, st.cancelled,
            fn.queued if fn else 0, fn.running if fn else 0, len(fn.workers) if fn else 0,
            f"{oldest_age(fn, now):.3f}", f"{mean(st.wait_sum, st.wait):.6f}",
            f"{mean(st.run_sum, st.run):.6f}")


def _histogram(counts: list[int], total: float) -> dict[str, object]:
    return {"counts": list(counts), "count": sum(counts), "sum": total}


def document(manager: Manager, *, version: str, uptime: float, now: float,
             server: dict[str, object] | None = None, view: View = ALL) -> dict[str, object]:
    """The ``stats json`` document (of the functions and workers ``view`` sees)."""
    report: dict[str, object] = {}
    for name, st, fn in functions(manager, view):
        report[label(name)] = {
            "submitted": {p: {"foreground": st.submitted[i], "background": st.submitted[i + 3]}
                          for i, p in enumerate(PRIORITY_NAMES)},
            "coalesced": st.coalesced, "completed": st.completed, "failed": st.failed,
            "exceptions": st.exceptions, "requeued": st.requeued,
            "timed_out": st.timed_out, "cancelled": st.cancelled,
            "queued": fn.queued if fn else 0, "running": fn.running if fn else 0,
            "workers": len(fn.workers) if fn else 0,
            "oldest_queued_age_seconds": round(oldest_age(fn, now), 6),
            "bytes_queued": fn.bytes_queued if fn else 0,
            "queue_wait_seconds": _histogram(st.wait, st.wait_sum),
            "run_seconds": _histogram(st.run, st.run_sum),
        }
    events = manager.events
    doc: dict[str, object] = {
        "version": version,
        "uptime_seconds": round(uptime, 3),
        "connections": len(manager.conns),
        "connections_total": manager.connections_total,
        "connections_by_kind": manager.connections_now(),
        "connections_total_by_front_end": dict(manager.connections_by_kind),
        "workers": worker_jobs(manager, now, view),
        "server": server or {},
        "buckets": [*BUCKETS, "+Inf"],
        "functions": report,
    }
    if events is not None:
        doc["events"] = {"emitted": events.emitted, "dropped": events.dropped,
                         "watchers": len(events.watchers),
                         "watchers_dropped": events.watchers_dropped}
    return doc


def worker_jobs(manager: Manager, now: float, view: View = ALL) -> list[dict[str, object]]:
    """Each worker connection: who, what it can do, and the jobs it runs since when."""
    out: list[dict[str, object]] = []
    for conn in sorted(manager.conns.values(), key=lambda c: c.id):
        if (not conn.abilities and not conn.assigned) or not view.sees_conn(conn):
            continue
        out.append({
            "connection": conn.id, "address": conn.remote,
            "client_id": label(conn.client_id),
            "functions": sorted(label(view.show(f)) for f in conn.abilities),
            "jobs": [{"handle": label(job.handle), "function": label(view.show(job.function.name)),
                      "running_seconds": round(max(0.0, now - job.stamp), 6)}
                     for job in conn.assigned.values()],
        })
    return out


def json_reply(manager: Manager, *, version: str, uptime: float, now: float,
               server: dict[str, object] | None = None, view: View = ALL) -> bytes:
    """``stats json``: the document on one line, then ``.`` as every listing."""
    doc = document(manager, version=version, uptime=uptime, now=now, server=server,
                   view=view)
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n.\n"

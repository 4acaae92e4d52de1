"""Job life-cycle events: a bounded buffer the core appends to, drained by the front-ends.

The core calls ``Manager.job_log(..., now, kind)`` at each point of a job's life; while
someone listens (``Events.active``), the manager's ``log_jobs`` flag is on and each call
appends one dict here (``emit``). Nothing here blocks or does I/O: past ``capacity``
pending events, new ones are dropped and counted (``dropped``). ``drain`` (called by the
Gear front-end before each flush) renders each event once as a JSON line and hands it to
every receiver:

- watchers (the admin ``watch`` command): a connection's output buffer; one whose
  output is past its bound is dropped (``watchers_dropped``), never waited for;
- hooks (``--events-function``): a callable given each JSON line.

Events about ``exclude`` (the events function itself) are never emitted: a hook's own
jobs would otherwise make events without end.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol

from protocol import admin as admin_text

from .acl import SEP
from .jobs import Conn, Job

#: The kinds of events, in the order of a job's life.
KINDS: Final = ("submitted", "started", "completed", "failed", "exception", "requeued",
                "timed_out", "cancelled", "dropped")
#: Bytes of a payload shown with ``--events-payloads``.
PAYLOAD_PREVIEW: Final = 256
#: Kinds whose ``conn`` is the worker (the others: the client, or none).
_WORKER_KINDS: Final = frozenset(("started", "completed", "failed", "exception", "requeued",
                                  "timed_out", "dropped"))


class LinePeer(Protocol):
    """What a watcher's connection must offer: raw output with a bound (``GearPeer``)."""

    out: bytearray
    limit: int
    broken: bool

    def write(self, data: bytes) -> None: ...

    def drop(self) -> None: ...


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _who(conn: Conn) -> dict[str, object]:
    return {"id": conn.id, "address": conn.remote}


class Events:
    """The event buffer and its receivers (one per server)."""

    def __init__(self, capacity: int = 10_000, payloads: bool = False,
                 exclude: bytes | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.capacity = max(1, capacity)
        self.payloads = payloads
        self.exclude = exclude
        self.clock = clock
        #: (function name, event) pairs not yet drained.
        self.queue: deque[tuple[bytes, dict[str, object]]] = deque()
        #: Events dropped because the buffer was full.
        self.dropped = 0
        self.emitted = 0
        #: Watchers dropped because their output was past its bound.
        self.watchers_dropped = 0
        #: connection id -> (its output, the functions it watches (empty = all), the
        #: tenant prefix its functions must have (None = any function)).
        self.watchers: dict[int, tuple[LinePeer, frozenset[bytes], bytes | None]] = {}
        self.hooks: list[Callable[[bytes], None]] = []
        #: Called when ``active`` may have changed (the manager re-reads its flag).
        self.on_change: Callable[[], None] | None = None

    @property
    def active(self) -> bool:
        """Whether anyone listens (otherwise the core emits nothing)."""
        return bool(self.watchers or self.hooks)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def watch(self, conn_id: int, peer: LinePeer, functions: frozenset[bytes],
              tenant: bytes | None = None) -> None:
        """Send events to ``peer``: of ``functions`` (internal names; empty = all), and
        only of functions with the ``tenant`` prefix when one is given."""
        self.watchers[conn_id] = (peer, functions, tenant)
        self._changed()

    def unwatch(self, conn_id: int) -> None:
        if self.watchers.pop(conn_id, None) is not None:
            self._changed()

    def recheck(self, refusal: Callable[[int, bytes | None], str | None]) -> None:
        """After an access-rule reload: end each watch ``refusal`` (given the watcher's
        connection id and namespace) gives a reason for, with an ERR line."""
        for conn_id, (peer, _, prefix) in list(self.watchers.items()):
            why = refusal(conn_id, prefix)
            if why is not None:
                self.unwatch(conn_id)
                peer.write(admin_text.err("PERMISSION_DENIED",
                                          "watch ended by an access-rule reload"))
                logging.getLogger(__name__).warning("connection %d: watch ended: %s",
                                                    conn_id, why)

    def add_hook(self, hook: Callable[[bytes], None]) -> None:
        self.hooks.append(hook)
        self._changed()

    # ------------------------------------------------------------------ the core's side

    def emit(self, kind: str, job: Job, now: float, conn: Conn | None = None,
             data: bytes | None = None) -> None:
        """Append one event (O(1); dropped and counted when the buffer is full)."""
        name = job.function.name
        if name == self.exclude:
            return
        if len(self.queue) >= self.capacity:
            self.dropped += 1
            return
        if not now:
            now = self.clock()
        tenant, sep, plain = name.partition(SEP)
        event: dict[str, object] = {
            "time": now, "event": kind, "function": _text(plain if sep else name),
            "handle": _text(job.handle), "unique": _text(job.unique), "size": len(job.data),
            "priority": job.priority, "background": job.background,
        }
        if sep:
            event["tenant"] = _text(tenant)
        worker = conn if kind in _WORKER_KINDS else job.worker
        if worker is not None:
            event["worker"] = _who(worker)
        if kind == "submitted" and conn is not None:
            event["client"] = _who(conn)
        elapsed = round(max(0.0, now - job.stamp), 6)
        if kind == "started":
            event["wait"] = elapsed
        elif kind != "submitted":
            running = worker is not None or kind in ("completed", "failed", "exception")
            event["run" if running else "wait"] = elapsed
        if kind in ("requeued", "failed", "timed_out"):
            event["retries"] = job.retries
        # "started" is emitted as the assignment begins, before it is counted.
        attempt = job.assignment + (kind == "started")
        if attempt:
            event["attempt"] = attempt
        if data is not None and kind != "submitted":
            event["result_size"] = len(data)
        if self.payloads:
            if kind == "submitted":
                event["data"] = _text(job.data[:PAYLOAD_PREVIEW])
            elif data is not None:
                event["result"] = _text(data[:PAYLOAD_PREVIEW])
        self.queue.append((name, event))
        self.emitted += 1

    # ------------------------------------------------------------------ the front-end's side

    def drain(self) -> None:
        """Hand every pending event to the receivers (never blocks)."""
        queue = self.queue
        while queue:
            function, event = queue.popleft()
            line = json.dumps(event, separators=(",", ":")).encode()
            for conn_id, (peer, functions, prefix) in list(self.watchers.items()):
                if functions and function not in functions:
                    continue
                if prefix is not None and (function.partition(SEP)[0] + SEP
                                           if SEP in function else b"") != prefix:
                    continue
                if peer.broken:
                    self.unwatch(conn_id)
                elif len(peer.out) > peer.limit:
                    # Too slow: dropped, never waited for (nor buffered without end).
                    self.watchers_dropped += 1
                    self.unwatch(conn_id)
                    peer.drop()
                else:
                    peer.write(line + b"\n")
            for hook in self.hooks:
                hook(line)

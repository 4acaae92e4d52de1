"""The job result cache: a background job's final outcome, kept for a time to be fetched
by handle or by unique key (``--result-ttl``, ``--result-cache``). Sans-IO, no clock.

``ResultCache`` is what the core calls (``record``) when a background job ends: the
result (WORK_COMPLETE's data, or the failure and its text) is encoded once as a JSON
document and kept under two keys, the handle's and the (function, unique) pair's. In
memory (``MemoryBackend``, least-recently-used first out past ``--result-cache-bytes``)
it is kept at once; for memcached and Redis (``server.results_io``) the records wait in
``pending`` for a task that writes them from a worker thread, so the trio loop never
blocks on the cache and an unreachable cache costs results, never jobs.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from .jobs import Job

#: Records waiting for a remote cache before the oldest are dropped (counted).
MAX_PENDING: Final = 10_000
#: The default bound of the in-memory cache (``--result-cache-bytes``).
DEFAULT_BYTES: Final = 64 * 1024 * 1024
#: Every key starts with this (other programs read the cache by these keys).
KEY_PREFIX: Final = "gearmand:result:"


def cache_url_problem(url: str) -> str | None:
    """Why ``--result-cache URL`` cannot be used (one line), or None."""
    if url in ("", "memory"):
        return None
    try:
        parsed = urllib.parse.urlsplit(url)
        parsed.port  # noqa: B018 (raises ValueError when not a number)
    except ValueError as exc:
        return f"{url}: {exc}"
    if parsed.scheme == "memcached":
        if not parsed.hostname:
            return f"{url}: expected memcached://HOST:PORT"
        module = "pymemcache"
    elif parsed.scheme in ("redis", "rediss", "unix"):
        module = "redis"
    else:
        return f"{url}: expected memory, memcached://HOST:PORT or redis://HOST:PORT[/DB]"
    if importlib.util.find_spec(module) is None:
        return f"{url}: the {module} module is not installed (pip install 'gearman-py[queues]')"
    return None


def handle_key(handle: bytes) -> str:
    """The cache key of a job's result by handle."""
    return KEY_PREFIX + "handle:" + hashlib.sha1(handle).hexdigest()


def unique_key(function: bytes, unique: bytes) -> str:
    """The cache key of a job's result by function and unique key."""
    return KEY_PREFIX + "unique:" + hashlib.sha1(function + b"\0" + unique).hexdigest()


@dataclass(frozen=True, slots=True)
class Result:
    """One finished background job."""

    #: "done" (WORK_COMPLETE) or "failed" (WORK_FAIL, an exception, a timeout, dead).
    state: str
    #: WORK_COMPLETE's data, or the failure's text.
    data: bytes
    function: bytes
    unique: bytes
    handle: bytes
    attempts: int
    finished: float

    def encode(self) -> bytes:
        """A JSON object; ``data`` in base64 (it is any bytes)."""
        return json.dumps({
            "state": self.state, "data": base64.b64encode(self.data).decode(),
            "function": self.function.decode("latin-1"),
            "unique": self.unique.decode("latin-1"), "handle": self.handle.decode("latin-1"),
            "attempts": self.attempts, "finished": self.finished,
        }, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Result:
        """The inverse of ``encode``; ``ValueError`` for anything else."""
        try:
            doc = json.loads(raw)
            return cls(state=str(doc["state"]), data=base64.b64decode(doc["data"]),
                       function=str(doc["function"]).encode("latin-1"),
                       unique=str(doc["unique"]).encode("latin-1"),
                       handle=str(doc["handle"]).encode("latin-1"),
                       attempts=int(doc["attempts"]), finished=float(doc["finished"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a result record: {exc}") from None


class ResultBackend(Protocol):
    """Where results are kept. The memory backend is immediate; remote ones block and
    are called only from worker threads (``server.results_io``)."""

    def put(self, items: list[tuple[str, bytes, float]], now: float) -> None:
        """Keep each (key, value, ttl in seconds)."""

    def get(self, key: str, now: float) -> bytes | None:
        """The value under ``key``, or None when absent or expired."""

    def close(self) -> None: ...


class MemoryBackend:
    """An LRU dict bounded in bytes (keys and values), each entry with its expiry."""

    def __init__(self, max_bytes: int = DEFAULT_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.evicted = 0

    def put(self, items: list[tuple[str, bytes, float]], now: float) -> None:
        for key, value, ttl in items:
            self._remove(key)
            size = len(key) + len(value)
            if size > self.max_bytes:
                continue
            self.entries[key] = (now + ttl, value)
            self.bytes += size
        while self.bytes > self.max_bytes:
            key = next(iter(self.entries))
            self._remove(key)
            self.evicted += 1

    def get(self, key: str, now: float) -> bytes | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            self._remove(key)
            return None
        self.entries.move_to_end(key)
        return entry[1]

    def _remove(self, key: str) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.bytes -= len(key) + len(entry[1])

    def close(self) -> None:
        self.entries.clear()
        self.bytes = 0


class ResultCache:
    """The TTLs by function and the backend; what the core records into."""

    def __init__(self, ttls: dict[bytes | None, float], backend: ResultBackend,
                 remote: bool = False, url: str = "memory") -> None:
        self.ttls = dict(ttls)
        self.default_ttl = self.ttls.pop(None, 0.0)
        self.backend = backend
        #: The backend blocks: records wait in ``pending`` for ``server.results_io``.
        self.remote = remote
        self.url = url
        self.pending: deque[list[tuple[str, bytes, float]]] = deque()
        #: Called when ``pending`` gains records (the writer task's wake-up).
        self.wake: Callable[[], None] = lambda: None
        self.recorded = 0
        self.dropped = 0

    def ttl(self, function: bytes) -> float:
        return self.ttls.get(function, self.default_ttl)

    def record(self, job: Job, ok: bool, data: bytes, now: float) -> None:
        """Keep a finished background job's outcome (when its function has a TTL)."""
        ttl = self.ttl(job.function.name)
        if ttl <= 0:
            return
        raw = Result("done" if ok else "failed", data, job.function.name, job.unique,
                     job.handle, job.assignment, now).encode()
        items = [(handle_key(job.handle), raw, ttl)]
        if job.unique and job.unique != b"-":
            items.append((unique_key(job.function.name, job.unique), raw, ttl))
        self.recorded += 1
        if not self.remote:
            self.backend.put(items, now)
            return
        if len(self.pending) >= MAX_PENDING:
            self.pending.popleft()
            self.dropped += 1
        self.pending.append(items)
        self.wake()

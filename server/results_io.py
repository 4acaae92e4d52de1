"""The result cache's I/O: opening a backend from ``--result-cache``, the task that writes
records to a remote cache from a worker thread, and the lookups (``result`` admin command,
``GET /jobs/HANDLE``), which never block the trio loop either.

A cache that cannot be reached is logged once (and again once it came back and failed
anew); the records it missed are dropped. Jobs never depend on it.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
import weakref
from typing import Final

import trio

from .jobs import Job
from .manager import Manager
from .results import (
    DEFAULT_BYTES,
    KEY_PREFIX,
    MemoryBackend,
    Result,
    ResultBackend,
    ResultCache,
    handle_key,
    unique_key,
)

log = logging.getLogger(__name__)

#: Seconds a remote cache has to answer one call.
TIMEOUT: Final = 2.0
#: Threads that read a remote result cache at once (``result``, ``GET /jobs/H``): their
#: own limit, so a flood of lookups against a slow cache cannot take the threads of trio's
#: default limiter from the store writer's commits.
LOOKUP_THREADS: Final = 4
_lookups: weakref.WeakKeyDictionary[ResultCache, trio.CapacityLimiter] = \
    weakref.WeakKeyDictionary()


def _lookup_limiter(cache: ResultCache) -> trio.CapacityLimiter:
    """The lookup threads of one cache (one server: one trio run)."""
    limiter = _lookups.get(cache)
    if limiter is None:
        limiter = _lookups[cache] = trio.CapacityLimiter(LOOKUP_THREADS)
    return limiter


class ResultCacheError(Exception):
    """The cache could not be opened or read; ``str()`` is one line."""


class MemcachedBackend:
    """Results in memcached (pymemcache; a pooled client: called from worker threads)."""

    def __init__(self, host: str, port: int) -> None:
        from pymemcache.client.base import PooledClient  # type: ignore[import-untyped]

        self.client = PooledClient((host, port), connect_timeout=TIMEOUT, timeout=TIMEOUT,
                                   no_delay=True, max_pool_size=4)

    def put(self, items: list[tuple[str, bytes, float]], now: float) -> None:
        for key, value, ttl in items:
            # memcached reads an expiry past 30 days as an epoch time.
            seconds = max(1, int(ttl + 0.999))
            expire = seconds if seconds <= 30 * 86400 else int(now) + seconds
            self.client.set(key, value, expire=expire, noreply=False)

    def get(self, key: str, now: float) -> bytes | None:
        value = self.client.get(key)
        return bytes(value) if value is not None else None

    def close(self) -> None:
        self.client.close()


class RedisBackend:
    """Results in Redis (redis-py; its client is thread-safe)."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=TIMEOUT,
                                           socket_connect_timeout=TIMEOUT)

    def put(self, items: list[tuple[str, bytes, float]], now: float) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key, value, ttl in items:
            pipe.set(key, value, px=max(1, int(ttl * 1000)))
        pipe.execute()

    def get(self, key: str, now: float) -> bytes | None:
        value = self.client.get(key)
        return bytes(value) if isinstance(value, bytes) else None

    def close(self) -> None:
        self.client.close()


def open_cache(url: str, ttls: dict[bytes | None, float],
               max_bytes: int = DEFAULT_BYTES) -> ResultCache:
    """The cache ``--result-cache URL`` names: ``memory`` (the default),
    ``memcached://HOST:PORT`` or ``redis://...``; ``ResultCacheError`` otherwise."""
    if url in ("", "memory"):
        return ResultCache(ttls, MemoryBackend(max_bytes))
    parsed = urllib.parse.urlsplit(url)
    backend: ResultBackend
    try:
        if parsed.scheme == "memcached":
            if not parsed.hostname:
                raise ResultCacheError(f"--result-cache {url}: expected memcached://HOST:PORT")
            backend = MemcachedBackend(parsed.hostname, parsed.port or 11211)
        elif parsed.scheme in ("redis", "rediss", "unix"):
            backend = RedisBackend(url)
        else:
            raise ResultCacheError(f"--result-cache {url}: expected memory, "
                                   "memcached://HOST:PORT or redis://HOST:PORT[/DB]")
    except ImportError as exc:
        raise ResultCacheError(f"--result-cache {url}: {exc.name} is not installed "
                               "(pip install 'gearman-py[queues]')") from None
    except ValueError as exc:
        raise ResultCacheError(f"--result-cache {url}: {exc}") from None
    return ResultCache(ttls, backend, remote=True, url=url)


async def run_writer(cache: ResultCache) -> None:
    """Write ``cache.pending`` to a remote cache from a worker thread, until cancelled."""
    wake = trio.Event()

    def poke() -> None:
        wake.set()

    cache.wake = poke
    failing = False
    try:
        await trio.to_thread.run_sync(cache.backend.get, KEY_PREFIX + "probe", time.time(),
                                      abandon_on_cancel=True)
    except Exception as exc:
        failing = True
        log.error("result cache %s: unreachable (%s); results are lost until it answers "
                  "(jobs run as usual)", cache.url, exc)
    try:
        while True:
            await wake.wait()
            wake = trio.Event()
            while cache.pending:
                batch = [item for items in cache.pending for item in items]
                count = len(cache.pending)
                cache.pending.clear()
                try:
                    await trio.to_thread.run_sync(cache.backend.put, batch, time.time(),
                                                  abandon_on_cancel=True)
                except Exception as exc:  # the cache is optional: log, never crash
                    cache.dropped += count
                    if not failing:
                        log.error("result cache %s: cannot write (%s); results are lost "
                                  "until it answers again", cache.url, exc)
                    failing = True
                else:
                    if failing:
                        log.warning("result cache %s: writing again", cache.url)
                    failing = False
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(cache.backend.close)


async def fetch(cache: ResultCache, key: str) -> Result | None:
    """The result under ``key`` (None when unknown or expired); ``ResultCacheError``
    when a remote cache cannot be read."""
    if cache.remote:
        try:
            raw = await trio.to_thread.run_sync(cache.backend.get, key, time.time(),
                                                abandon_on_cancel=True,
                                                limiter=_lookup_limiter(cache))
        except Exception as exc:
            log.error("result cache %s: cannot read (%s)", cache.url, exc)
            raise ResultCacheError(f"result cache unreachable: {exc}") from None
    else:
        raw = cache.backend.get(key, time.time())
    if raw is None:
        return None
    try:
        return Result.decode(raw)
    except ValueError:
        log.warning("result cache %s: an entry that is not a result under %s",
                    cache.url, key)
        return None


def job_state(job: Job | None) -> str | None:
    """``queued`` or ``running`` for a job the server holds; None for none."""
    if job is None or job.cancelled:
        return None
    return "running" if job.worker is not None else "queued"


async def lookup(manager: Manager, handle: bytes | None = None,
                 function: bytes | None = None,
                 unique: bytes | None = None) -> tuple[str, Result | None]:
    """A job's state by handle, or by function and unique: ``queued``, ``running``,
    ``done``, ``failed`` (with the result) or ``unknown``."""
    if handle is not None:
        state = job_state(manager.jobs.get(handle))
        key = handle_key(handle)
    else:
        assert function is not None and unique is not None
        state = job_state(manager.unique_index.get((function, unique)))
        key = unique_key(function, unique)
    if state is not None:
        return state, None
    cache = manager.results
    if cache is None:
        return "unknown", None
    result = await fetch(cache, key)
    if result is None:
        return "unknown", None
    return result.state, result

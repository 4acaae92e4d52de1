"""``-q libmemcached``: jobs in memcached, with our own index for order and replay.

Memcached keeps data in memory only and may evict it: this store survives a gearmand
restart, not a memcached restart. A job is ``encode_job`` split into chunks
``<prefix>j:<sha1(key)>:<i>`` (items are limited to 1 MiB). The index is a log of
lines ``+<sha1> <chunks>`` / ``-<sha1>`` appended to segments ``<prefix>ix:<n>``;
``<prefix>meta`` holds ``<first> <last>`` segment numbers. No key dumping, so function
names may hold any byte (unlike the reference's ``<function>-<unique>`` keys, spec §5).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from pymemcache.client.base import Client  # type: ignore[import-untyped]
from pymemcache.client.hash import HashClient  # type: ignore[import-untyped]
from pymemcache.exceptions import MemcacheError  # type: ignore[import-untyped]

from server.store.base import StoredJob, StoreError, decode_job, encode_job

log = logging.getLogger(__name__)

CHUNK = 512 * 1024
SEGMENT = 256 * 1024
_GET_BATCH = 64
#: Rewrite the index when it holds this many more lines than twice the live jobs.
COMPACT_SLACK = 1000


def parse_servers(value: str) -> list[tuple[str, int]]:
    """``host[:port][,host[:port]...]`` (libmemcached's list; ``--SERVER=`` allowed)."""
    servers = []
    for item in value.replace(" ", ",").split(","):
        item = item.strip().removeprefix("--SERVER=")
        if not item:
            continue
        host, _, port = item.partition(":")
        try:
            servers.append((host, int(port) if port else 11211))
        except ValueError:
            raise StoreError(f"--libmemcached-servers: bad port in {item!r}") from None
    if not servers:
        raise StoreError("--libmemcached-servers: no server given")
    return servers


class MemcachedStore:
    def __init__(self, servers: Sequence[tuple[str, int]], prefix: str = "gear_") -> None:
        self._prefix = prefix.encode()
        self._meta = self._prefix + b"meta"
        common: dict[str, Any] = {"connect_timeout": 10, "timeout": 60, "no_delay": True,
                                  "default_noreply": False}
        self._mc: Any = (Client(servers[0], **common) if len(servers) == 1
                         else HashClient(list(servers), **common))
        #: sha1(key) -> number of chunks, in the order added.
        self._live: dict[bytes, int] = {}
        self._entries = 0  # index lines in all segments
        try:
            self._load()
        except (MemcacheError, OSError) as exc:
            self._mc.close()
            raise StoreError(f"memcached at {servers}: {exc}") from exc
        log.warning("memcached keeps the queue in memory only; jobs are lost if memcached "
                    "restarts or evicts them")

    # --- keys ---

    def _chunk_keys(self, digest: bytes, chunks: int) -> list[bytes]:
        return [self._prefix + b"j:" + digest + b":%d" % i for i in range(chunks)]

    def _segment(self, n: int) -> bytes:
        return self._prefix + b"ix:%d" % n

    # --- index ---

    def _load(self) -> None:
        meta = self._mc.get(self._meta)
        if meta is None:
            self._first = self._last = 0
            self._segment_size = 0
            self._mc.set(self._segment(0), b"")
            self._mc.set(self._meta, b"0 0")
            return
        first, last = (int(x) for x in meta.split())
        self._first, self._last = first, last
        names = [self._segment(n) for n in range(first, last + 1)]
        found: dict[bytes, bytes] = {}
        for start in range(0, len(names), _GET_BATCH):
            found.update(self._mc.get_many(names[start:start + _GET_BATCH]))
        for name in names:
            seg = found.get(name)
            if seg is None:
                log.error("memcached: queue index segment %r is gone (evicted?); the jobs "
                          "it listed are not replayed", name)
                continue
            self._apply(seg)
        if names[-1] in found:
            self._segment_size = len(found[names[-1]])
        else:  # append to a fresh segment rather than fail every commit
            self._last += 1
            self._segment_size = 0
            self._mc.set(self._segment(self._last), b"")
            self._mc.set(self._meta, b"%d %d" % (self._first, self._last))

    def _apply(self, lines: bytes) -> None:
        for line in lines.splitlines():
            if line.startswith(b"+"):
                digest, _, chunks = line[1:].partition(b" ")
                self._live.pop(digest, None)
                self._live[digest] = int(chunks)
            elif line.startswith(b"-"):
                self._live.pop(line[1:], None)
            self._entries += 1

    def _append_index(self, lines: bytes) -> None:
        if self._segment_size + len(lines) > SEGMENT and self._segment_size:
            self._last += 1
            if not self._mc.set(self._segment(self._last), lines):
                raise StoreError("memcached refused a queue index segment")
            self._mc.set(self._meta, b"%d %d" % (self._first, self._last))
            self._segment_size = len(lines)
            return
        if not self._mc.append(self._segment(self._last), lines):
            raise StoreError("memcached lost the queue index segment "
                             f"{self._segment(self._last)!r} (evicted?)")
        self._segment_size += len(lines)

    def _compact_index(self) -> None:
        lines = b"".join(b"+%s %d\n" % (d, n) for d, n in self._live.items())
        first = self._last + 1
        segments = [lines[i:i + SEGMENT] for i in range(0, len(lines), SEGMENT)] or [b""]
        # Split on line boundaries: move each segment's partial last line to the next one.
        fixed: list[bytes] = []
        carry = b""
        for seg in segments:
            seg = carry + seg
            cut = seg.rfind(b"\n") + 1
            fixed.append(seg[:cut])
            carry = seg[cut:]
        fixed[-1] += carry
        for n, seg in enumerate(fixed):
            if not self._mc.set(self._segment(first + n), seg):
                raise StoreError("memcached refused a queue index segment")
        old = [self._segment(n) for n in range(self._first, self._last + 1)]
        self._first, self._last = first, first + len(fixed) - 1
        self._mc.set(self._meta, b"%d %d" % (self._first, self._last))
        self._mc.delete_many(old)
        self._segment_size = len(fixed[-1])
        self._entries = len(self._live)

    # --- Store ---

    def commit(self, added: Sequence[StoredJob], done: Sequence[str]) -> None:
        try:
            self._commit(added, done)
        except (MemcacheError, OSError) as exc:
            raise StoreError(f"memcached commit failed: {exc}") from exc

    def _commit(self, added: Sequence[StoredJob], done: Sequence[str]) -> None:
        values: dict[bytes, bytes] = {}
        lines: list[bytes] = []
        new: list[tuple[bytes, int]] = []
        for job in added:
            digest = hashlib.sha1(job.key.encode()).hexdigest().encode()
            record = encode_job(job)
            chunks = max(1, -(-len(record) // CHUNK))
            for i, name in enumerate(self._chunk_keys(digest, chunks)):
                values[name] = record[i * CHUNK:(i + 1) * CHUNK]
            lines.append(b"+%s %d\n" % (digest, chunks))
            new.append((digest, chunks))
        gone = [hashlib.sha1(key.encode()).hexdigest().encode() for key in done]
        lines.extend(b"-%s\n" % d for d in gone)
        if values:
            failed = self._mc.set_many(values)
            if failed:
                raise StoreError(f"memcached did not store {len(failed)} job chunks")
        if lines:
            self._append_index(b"".join(lines))
        stale: list[bytes] = []
        for digest, chunks in new:
            old = self._live.pop(digest, None)
            if old is not None and old > chunks:
                stale += self._chunk_keys(digest, old)[chunks:]
            self._live[digest] = chunks
        for digest in gone:
            old = self._live.pop(digest, None)
            if old is not None:
                stale += self._chunk_keys(digest, old)
        self._entries += len(lines)
        if stale:
            self._mc.delete_many(stale)
        if self._entries > 2 * len(self._live) + COMPACT_SLACK:
            self._compact_index()

    def replay(self) -> list[StoredJob]:
        try:
            jobs: list[StoredJob] = []
            items = list(self._live.items())
            for start in range(0, len(items), _GET_BATCH):
                batch = items[start:start + _GET_BATCH]
                names = [self._chunk_keys(d, n) for d, n in batch]
                found = self._mc.get_many([k for ks in names for k in ks])
                for (digest, _), keys in zip(batch, names, strict=True):
                    if not all(k in found for k in keys):
                        log.error("memcached: job %s is gone (evicted?); not replayed",
                                  digest.decode())
                        continue
                    jobs.append(decode_job(b"".join(found[k] for k in keys)))
            return jobs
        except (MemcacheError, OSError) as exc:
            raise StoreError(f"memcached replay failed: {exc}") from exc
        except ValueError as exc:
            raise StoreError(f"memcached replay failed: bad job record ({exc})") from exc

    def close(self) -> None:
        self._mc.close()


def open_store(options: Mapping[str, str]) -> MemcachedStore:
    return MemcachedStore(parse_servers(options["libmemcached-servers"]),
                          options["libmemcached-prefix"])

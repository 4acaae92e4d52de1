"""``-q redis``: a hash per job, a sorted set for order, one MULTI/EXEC per batch.

Keys (binary-safe): ``<prefix>job:<key>`` (hash: function, unique, priority, when,
reducer, data), ``<prefix>order`` (sorted set: key -> sequence), ``<prefix>seq``
(counter). Durable only as far as the Redis server is: with ``appendonly yes`` and
``appendfsync always`` a commit is on disk when EXEC returns; we warn otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import cast

import redis

from server.store.base import StoredJob, StoreError, int_option

log = logging.getLogger(__name__)

_REPLAY_CHUNK = 500


class RedisStore:
    def __init__(self, host: str = "127.0.0.1", port: int = 6379, password: str = "",
                 prefix: str = "_gear_") -> None:
        self._prefix = prefix.encode()
        self._order = self._prefix + b"order"
        self._seq = self._prefix + b"seq"
        self._client = redis.Redis(host=host, port=port, password=password or None,
                                   socket_connect_timeout=10, socket_timeout=60)
        try:
            self._client.ping()
        except redis.RedisError as exc:
            self._client.close()
            raise StoreError(f"cannot connect to Redis at {host}:{port}: {exc}") from exc
        self._warn_if_volatile()

    def _warn_if_volatile(self) -> None:
        try:
            config = self._client.config_get("append*")
        except redis.RedisError:
            return  # CONFIG may be disabled on managed servers
        if config.get("appendonly") != "yes" or config.get("appendfsync") != "always":
            log.warning("Redis has appendonly=%s appendfsync=%s: acknowledged background "
                        "jobs can be lost if Redis itself crashes",
                        config.get("appendonly"), config.get("appendfsync"))

    def _job_key(self, key: str) -> bytes:
        return self._prefix + b"job:" + key.encode()

    def commit(self, added: Sequence[StoredJob], done: Sequence[str]) -> None:
        try:
            last = int(self._client.incrby(self._seq, len(added))) if added else 0
            pipe = self._client.pipeline(transaction=True)
            for n, job in enumerate(added):
                name = self._job_key(job.key)
                pipe.delete(name)
                pipe.hset(name, mapping={
                    "function": job.function, "unique": job.unique,
                    "priority": job.priority, "when": job.when, "reducer": job.reducer,
                    "data": job.data})
                pipe.zadd(self._order, {job.key.encode(): last - len(added) + 1 + n})
            for key in done:
                pipe.delete(self._job_key(key))
                pipe.zrem(self._order, key.encode())
            pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"Redis commit failed: {exc}") from exc

    def replay(self) -> list[StoredJob]:
        jobs: list[StoredJob] = []
        try:
            keys = cast("list[bytes]", self._client.zrange(self._order, 0, -1))
            for start in range(0, len(keys), _REPLAY_CHUNK):
                chunk = keys[start:start + _REPLAY_CHUNK]
                pipe = self._client.pipeline(transaction=False)
                for key in chunk:
                    pipe.hgetall(self._prefix + b"job:" + key)
                for key, fields in zip(chunk, pipe.execute(), strict=True):
                    if not fields:
                        log.warning("Redis: job %r is in %r but its hash is gone; skipped",
                                    key, self._order)
                        continue
                    jobs.append(StoredJob(
                        key=key.decode(), function=fields[b"function"],
                        unique=fields[b"unique"], priority=int(fields[b"priority"]),
                        data=fields[b"data"], when=int(fields[b"when"]),
                        reducer=fields[b"reducer"]))
        except redis.RedisError as exc:
            raise StoreError(f"Redis replay failed: {exc}") from exc
        except (KeyError, ValueError) as exc:
            raise StoreError(f"Redis replay failed: malformed job hash ({exc})") from exc
        return jobs

    def close(self) -> None:
        self._client.close()


def open_store(options: Mapping[str, str]) -> RedisStore:
    return RedisStore(host=options["redis-server"],
                      port=int_option(options, "redis-port", 6379),
                      password=options["redis-password"], prefix=options["redis-prefix"])

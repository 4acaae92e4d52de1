"""Persistence for the job core: the ``JobStore`` it calls, over a ``StoreWriter``.

``Persistence`` turns the core's ``persist(job)`` / ``forget(key)`` into the writer's group
commits and calls ``Manager.persisted`` when a commit ends. It also replays the store at
start-up, and for ``--store-queue-on-shutdown`` (the reference's experimental mode: nothing
written while serving, a snapshot at a clean stop, replayed and emptied at the next start)
writes the snapshot. The server's life cycle calls ``open``, ``replay``, ``run``, ``close``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final, cast

import trio

from .config import ServerConfig
from .jobs import Job
from .manager import Manager
from .retry import DEAD_WHEN, DeadLetter, decode_envelope, encode_envelope
from .store import StoredJob, open_store, queue_option_true
from .store.writer import StoreWriter

log = logging.getLogger(__name__)

#: Seconds a clean stop waits for the store's last commit before giving up on it.
CLOSE_TIMEOUT: Final = 30.0


#: ``tuple.__new__``: a ``StoredJob`` without the named tuple's ``__new__``, a Python
#: function whose keyword call took 6% of the GIL's time under ``-q libsqlite3``.
_new_tuple: Final = cast("Callable[[type[StoredJob], tuple[object, ...]], StoredJob]",
                         tuple.__new__)


def stored_job(job: Job, key: str) -> StoredJob:
    # In StoredJob's field order. A time in the past is "now" (and a negative one would
    # read as a dead letter).
    when = job.when
    return _new_tuple(StoredJob, (key, job.function.name, job.unique, int(job.priority),
                                  job.data, int(when) if when > 0 else 0, job.reducer))


def stored_letter(letter: DeadLetter, key: str) -> StoredJob:
    """A dead letter as a store keeps it: its ``when`` is ``DEAD_WHEN``, its history
    leads its data (``server.retry``). Every store can keep it without a change."""
    return StoredJob(key=key, function=letter.function, unique=letter.unique,
                     priority=letter.priority, data=encode_envelope(letter), when=DEAD_WHEN,
                     reducer=letter.reducer)


class Persistence:
    """The ``JobStore`` of one server: a store, its writer task, replay and snapshot."""

    def __init__(self, manager: Manager, writer: StoreWriter, *,
                 on_shutdown_only: bool = False,
                 changed: Callable[[], None] = lambda: None) -> None:
        self.manager = manager
        self.writer = writer
        #: ``--store-queue-on-shutdown``: the store holds jobs only between runs.
        self.on_shutdown_only = on_shutdown_only
        #: Called after a commit answered submits (their replies want flushing): by the
        #: writer once per batch, not per job.
        self.changed = changed
        writer.on_settled = changed
        self._done = trio.Event()
        if not on_shutdown_only:
            manager.attach_store(self)
            manager.dead_letters.store = self

    @classmethod
    def open(cls, manager: Manager, config: ServerConfig,
             changed: Callable[[], None]) -> Persistence | None:
        """The persistence ``-q`` asks for; None for the builtin (memory) queue.
        ``StoreError`` with one line when the store cannot be opened."""
        options = dict(config.queue_options)
        store = open_store(config.queue_type, options)
        if store is None:
            return None
        log.debug("queue: %s", config.queue_type)
        return cls(manager, StoreWriter(store),
                   on_shutdown_only=queue_option_true(options, "store-queue-on-shutdown"),
                   changed=changed)

    # ------------------------------------------------------------------ JobStore

    def persist(self, job: Job) -> None:
        key = job.store_key
        assert key is not None
        manager = self.manager

        def committed(error: Exception | None) -> None:
            if error is not None:
                log.error("store: could not persist job %s: %s",
                          job.handle.decode("latin-1"), error)
            manager.persisted(job, error is None, time.time())

        # In submit order: the store replays in the order it was given the jobs.
        self.writer.add_nowait(stored_job(job, key), committed)

    def forget(self, key: str) -> None:
        self.writer.done(key)

    # ------------------------------------------------------------------ DeadLetterStore

    def keep(self, letter: DeadLetter) -> None:
        key = letter.store_key
        assert key is not None
        handle = letter.handle.decode("latin-1")

        def committed(error: Exception | None) -> None:
            if error is not None:
                log.error("store: could not keep dead letter %s: %s", handle, error)

        self.writer.add_nowait(stored_letter(letter, key), committed)

    def drop(self, key: str) -> None:
        self.writer.done(key)

    # ------------------------------------------------------------------ life cycle

    async def replay(self) -> int:
        """Queue every stored job again; how many there were."""
        jobs = await self.writer.replay()
        now = time.time()
        manager = self.manager
        letters = 0
        for stored in jobs:
            if stored.when == DEAD_WHEN:
                letters += self._replay_letter(stored)
                continue
            job = manager.restore(stored.function, stored.unique, stored.data,
                                  stored.priority, stored.when, stored.reducer, stored.key,
                                  now)
            if self.on_shutdown_only:
                # Emptied after the replay; written again at the next clean stop.
                job.store_key = None
                self.writer.done(stored.key)
        if jobs:
            log.info("replayed %d background jobs and %d dead letters from the store",
                     len(jobs) - letters, letters)
        return len(jobs) - letters

    def _replay_letter(self, stored: StoredJob) -> int:
        try:
            letter = decode_envelope(stored.function, stored.unique, stored.priority,
                                     stored.reducer, stored.data, stored.key)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("store: record %s is neither a job nor a dead letter (%s); kept, "
                      "ignored", stored.key, exc)
            return 0
        if self.on_shutdown_only:
            letter.store_key = None
            self.writer.done(stored.key)
        self.manager.dead_letters.add(letter, persist=False)
        return 1

    async def run(self, *, task_status: trio.TaskStatus[None]
                  = trio.TASK_STATUS_IGNORED) -> None:
        """The writer's task: commits until ``close``."""
        try:
            await self.writer.run(task_status=task_status)
        finally:
            self._done.set()

    async def close(self) -> None:
        """On a clean stop: write the snapshot if that is the mode, let the writer commit
        everything queued and close the store. Bounded: a store that does not answer for
        ``CLOSE_TIMEOUT`` seconds is given up (its uncommitted jobs will not replay)."""
        writer = self.writer
        if self.on_shutdown_only:
            manager = self.manager
            kept = 0
            for job in manager.background_jobs():
                writer.add_nowait(stored_job(job, manager.new_store_key()),
                                  lambda error: None)
                kept += 1
            letters = 0
            for letter in manager.dead_letters.rows():
                writer.add_nowait(stored_letter(letter, manager.new_store_key()),
                                  lambda error: None)
                letters += 1
            log.info("storing %d background jobs and %d dead letters on shutdown", kept,
                     letters)
        writer.close()
        with trio.move_on_after(CLOSE_TIMEOUT):
            await self._done.wait()
            log.info("store closed")
            return
        log.error("queue store: no answer for %.0f s at shutdown; giving up on it "
                  "(jobs not yet committed will not be replayed)", CLOSE_TIMEOUT)
        writer.abandon()
        with trio.move_on_after(5):
            await self._done.wait()

"""One trio task that applies store operations in order, in groups (group commit).

``await add(job)`` returns once the job is durable; ``done(key)`` never blocks and is
applied with the next batch. Commits run in a worker thread, one at a time.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence

import trio

from server.jobs import BUCKETS
from server.store.base import Store, StoredJob, StoreError

log = logging.getLogger(__name__)


class _Pending:
    """An ``add`` waiting for its batch: set ``error`` (or not), then ``event``."""

    __slots__ = ("callback", "error", "event", "job", "seq")

    def __init__(self, job: StoredJob, seq: int,
                 callback: Callable[[StoreError | None], None] | None = None) -> None:
        self.job = job
        self.seq = seq
        #: Only an ``add`` caller waits on it (an ``add_nowait`` has its callback).
        self.event: trio.Event | None = trio.Event() if callback is None else None
        self.error: StoreError | None = None
        self.callback = callback

    def settle(self, error: StoreError | None) -> None:
        """The batch ended: wake the ``add`` caller, or call the ``add_nowait`` callback.
        A callback that raises is logged: the rest of its batch must still be answered."""
        self.error = error
        if self.event is not None:
            self.event.set()
        if self.callback is not None:
            try:
                self.callback(error)
            except Exception:
                log.exception("queue store: answering a committed job failed")


class StoreWriter:
    """Owns one ``Store`` (closes it when ``run`` ends) and the only task that calls it.

    Operations are applied in the order they were issued. Every ``add`` waiting when a
    commit starts goes into that commit, with every ``done`` queued before it; adds that
    arrive during a commit form the next one. A failed commit makes its ``add`` callers
    raise ``StoreError``; its ``done`` keys are kept and retried with the next batch.
    If an ``add`` caller is cancelled, its job is still committed (it may be replayed).
    """

    def __init__(self, store: Store, *, max_batch: int = 1000,
                 max_batch_bytes: int = 64 << 20, retry_delay: float = 1.0) -> None:
        self.store = store
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.retry_delay = retry_delay
        #: Successful and failed commit calls (stats and tests).
        self.commits = 0
        self.failures = 0
        #: Statistics of successful commits: seconds (histogram over ``BUCKETS``, +Inf
        #: last, and the sum) and jobs added per batch (the sum; ``commits`` counts them).
        self.commit_seconds = [0] * (len(BUCKETS) + 1)
        self.commit_seconds_sum = 0.0
        self.batch_jobs_sum = 0
        self._failing = False
        self._seq = 0  # issue order of adds and dones
        self._adds: list[_Pending] = []
        self._done: list[tuple[int, str]] = []
        self._wakeup = trio.Event()
        self._closing = False
        self._closed = False
        self._abandoned = False
        self._commit_scope: trio.CancelScope | None = None
        #: Called once after each batch of ``add_nowait`` callbacks (not once per job).
        self.on_settled: Callable[[], None] | None = None

    # --- API for the server ---

    async def add(self, job: StoredJob) -> None:
        """Store ``job``; return once it is durable. ``StoreError`` if it is not."""
        if self._closing or self._closed:
            raise StoreError("the queue store is closed")
        self._seq += 1
        pending = _Pending(job, self._seq)
        self._adds.append(pending)
        self._wakeup.set()
        assert pending.event is not None
        await pending.event.wait()
        if pending.error is not None:
            raise pending.error

    def add_nowait(self, job: StoredJob,
                   callback: Callable[[StoreError | None], None]) -> None:
        """Queue ``job`` in call order (unlike tasks calling ``add``, whose order the
        scheduler may change); ``callback(None)`` once it is durable, else with the error.
        The callback runs in the writer's task and must not block."""
        if self._closing or self._closed:
            callback(StoreError("the queue store is closed"))
            self._settled()  # its answer wants flushing like a batch's
            return
        self._seq += 1
        self._adds.append(_Pending(job, self._seq, callback))
        self._wakeup.set()

    def done(self, key: str) -> None:
        """Remove the job stored under ``key``, with the next batch. Never blocks."""
        if self._closed:
            log.warning("queue store closed; done(%r) dropped", key)
            return
        self._seq += 1
        self._done.append((self._seq, key))
        self._wakeup.set()

    async def replay(self) -> list[StoredJob]:
        """Every stored job, in the order added (call before ``run`` starts committing)."""
        return await trio.to_thread.run_sync(self.store.replay)

    def abandon(self) -> None:
        """Give up on a store that does not answer (at shutdown): the commit in flight
        and everything still queued fail, and ``run`` returns without waiting for it."""
        self._abandoned = True
        self._closing = True
        self._wakeup.set()
        if self._commit_scope is not None:
            self._commit_scope.cancel()

    def close(self) -> None:
        """Ask ``run`` to flush what is queued and return."""
        self._closing = True
        self._wakeup.set()

    @property
    def pending(self) -> int:
        """Operations queued and not yet handed to the store."""
        return len(self._adds) + len(self._done)

    # --- the task ---

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Apply queued operations until ``close()`` or cancellation, then flush what is
        queued (shielded) and close the store."""
        task_status.started()
        try:
            while not self._closing:
                if self._adds:
                    await self._commit_batch()
                    continue
                if self._done and not self._failing:
                    await self._commit_batch()
                    continue
                self._wakeup = trio.Event()
                if self._done:  # dones left over from a failed commit: retry later
                    with trio.move_on_after(self.retry_delay):
                        await self._wakeup.wait()
                    if not self._adds:
                        await self._commit_batch()
                else:
                    await self._wakeup.wait()
        finally:
            with trio.CancelScope(shield=True):
                try:
                    while (self._adds or self._done) and not self._abandoned:
                        if not await self._commit_batch():
                            break
                finally:
                    self._closed = True
                    self._fail_all(StoreError("the queue store is closed"))
                    if self._abandoned:
                        # Its thread may still be inside commit: do not close under it.
                        log.error("queue store abandoned without closing it")
                    else:
                        try:
                            await trio.to_thread.run_sync(self.store.close)
                        except Exception:
                            log.exception("closing the queue store failed")

    async def _commit_batch(self) -> bool:
        """Commit the next batch; True if it succeeded."""
        batch: list[_Pending] = []
        size = 0
        for pending in self._adds:
            if batch and (len(batch) >= self.max_batch
                          or size + len(pending.job.data) > self.max_batch_bytes):
                break
            batch.append(pending)
            size += len(pending.job.data)
        del self._adds[:len(batch)]
        # A done issued after an add left for the next batch waits for that batch too.
        limit = self._adds[0].seq if self._adds else self._seq + 1
        cut = next((i for i, (seq, _) in enumerate(self._done) if seq > limit),
                   len(self._done))
        taken, self._done = self._done[:cut], self._done[cut:]
        added: Sequence[StoredJob] = [p.job for p in batch]
        done = [key for _, key in taken]
        try:
            # Shielded, so a cancellation can neither lose the ops taken above nor
            # abandon a commit in flight; it lands at the run loop's next checkpoint.
            # Only ``abandon()`` (a store that hangs at shutdown) gives up on it.
            began = time.monotonic()
            with trio.CancelScope(shield=True) as scope:
                self._commit_scope = scope
                await trio.to_thread.run_sync(self.store.commit, added, done,
                                              abandon_on_cancel=True)
            self._commit_scope = None
            if scope.cancelled_caught:
                raise StoreError("commit abandoned: the store did not answer")
        except Exception as exc:
            self.failures += 1
            self._failing = True
            error = exc if isinstance(exc, StoreError) else StoreError(
                f"{type(exc).__name__}: {exc}")
            log.error("queue store commit of %d jobs, %d removals failed: %s",
                      len(batch), len(done), error)
            self._done[:0] = taken
            for pending in batch:
                pending.settle(error)
            self._settled()
            return False
        self.commits += 1
        took = time.monotonic() - began
        self.commit_seconds[bisect_left(BUCKETS, took)] += 1
        self.commit_seconds_sum += took
        self.batch_jobs_sum += len(batch)
        self._failing = False
        for pending in batch:
            pending.settle(None)
        self._settled()
        return True

    def _settled(self) -> None:
        if self.on_settled is not None:
            try:
                self.on_settled()
            except Exception:
                log.exception("queue store: answering a committed batch failed")

    def _fail_all(self, error: StoreError) -> None:
        adds, self._adds = self._adds, []
        for pending in adds:
            pending.settle(error)
        self._settled()
        if self._done:
            log.warning("queue store closed with %d removals not applied", len(self._done))
            self._done.clear()

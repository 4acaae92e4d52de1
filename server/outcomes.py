"""What becomes of a job that ends badly: a lost worker, a failure, a timeout; retries with
back-off, dead letters, and the results kept for later (``Outcomes``, the core's layer
between ``JobCore`` and ``Manager``). Synchronous and I/O-free, given ``now``.

Without a retry policy a failure ends the job as the protocol says (attached clients hear
WORK_FAIL) and a lost worker re-queues it (``--job-retries``). With one (``server.retry``),
a background job's failure, exception, lost worker or CAN_DO_TIMEOUT schedules it again
after a back-off (the core's scheduled-job heap), until its attempts are used up; then it
becomes a dead letter, kept with the job's store. A background job's final outcome goes to
the result cache (``server.results``) when one is attached.
"""

from __future__ import annotations

import logging

from protocol import PacketType

from .core import JobCore
from .jobs import Conn, InternalPeer, Job
from .retry import DeadLetter, RetryPolicy, RetryState

log = logging.getLogger("server.core")

PT = PacketType


class Outcomes(JobCore):
    """The job core with retries, dead letters and results."""

    _internal: Conn | None = None
    #: Dead letters queued again whose new job waits for its store commit, by its handle:
    #: the letter is let go only once the job is stored (a failed commit keeps it).
    _reviving: dict[bytes, DeadLetter] | None = None

    def policy_for(self, job: Job) -> RetryPolicy | None:
        """The retry policy that applies to ``job`` now, if any."""
        if job.cancelled or not self.retry:
            return None
        policy = self.retry.get(job.function.name)
        if policy is None or not (job.background or policy.foreground):
            return None
        return policy

    def _unassign(self, job: Job, now: float, ran: bool = True) -> None:
        """Take a running job off its worker (it is not finished)."""
        worker = job.worker
        if worker is not None:
            if ran:
                job.function.stats.ran(now - job.stamp)
            worker.assigned.pop(job.handle, None)
            job.worker = None
            job.function.running -= 1
        job.numerator = job.denominator = b"0"

    def failed_attempt(self, job: Job, conn: Conn | None, now: float, error: str) -> bool:
        """A running job failed (``error`` says how). With a retry policy: retried after
        a back-off, or made a dead letter; True. Without one: False (nothing done)."""
        policy = self.policy_for(job)
        if policy is None or not (job.background or job.clients):
            return False  # no policy, or nobody can still want the job
        self._unassign(job, now)
        state = job.retry
        if state is None:
            state = job.retry = RetryState(first_failed=now)
        state.failures += 1
        state.error = error[:1024]
        if job.assignment < policy.attempts:
            delay = self.retry.delay(policy, state.failures)
            if self.log_jobs:
                self.job_log(job, f"attempt {job.assignment} failed ({error}); retrying in "
                             f"{delay:.3f} s", conn, None, now, "retrying")
            job.function.stats.requeued += 1
            job.retries += 1  # the admin's ``show jobs`` column
            job.stamp = now
            job.when = now + delay
            self._enqueue(job, now)
            return True
        self.bury(job, conn, now, error)
        return True

    def bury(self, job: Job, conn: Conn | None, now: float, error: str) -> None:
        """Make ``job`` a dead letter: its clients hear WORK_FAIL; kept until the admin
        retries or drops it; its stored copy becomes the dead letter's."""
        state = job.retry or RetryState(first_failed=now, error=error)
        log.warning("job %s (function %r) is a dead letter after %d attempts: %s",
                    job.handle.decode("latin-1"), job.function.name, job.assignment, error)
        if self.log_jobs:
            self.job_log(job, f"dead after {job.assignment} attempts ({error})", conn, None,
                         now, "dead")
        job.function.stats.failed += 1
        if job.clients:
            self._broadcast(job, PT.WORK_FAIL, job.handle)
        letter = DeadLetter(function=job.function.name, handle=job.handle, unique=job.unique,
                            data=job.data, priority=job.priority, reducer=job.reducer,
                            attempts=job.assignment, error=error,
                            first_failed=state.first_failed, last_failed=now,
                            store_key=job.store_key)
        job.store_key = None  # the same stored record is rewritten as the dead letter
        if letter.store_key is None and self.store is not None:
            letter.store_key = self.new_store_key()
        self.record(job, False, error.encode(), now)
        self._forget(job)
        pushed = self.dead_letters.add(letter)
        if pushed is not None:
            log.warning("dead letters of %r: more than %d; the oldest (%s) dropped",
                        job.function.name, self.dead_letters.limit,
                        pushed.handle.decode("latin-1"))

    def record(self, job: Job, ok: bool, data: bytes, now: float) -> None:
        """Keep a background job's final outcome in the result cache, if there is one."""
        if self.results is not None and job.background:
            self.results.record(job, ok, data, now)

    # ------------------------------------------------------------------ the core's hooks

    def _lost(self, job: Job, worker: Conn, now: float) -> None:
        """The worker running ``job`` is gone or gave up: retried under its policy, else
        requeued at once, or failed after ``--job-retries``."""
        if self.failed_attempt(job, worker, now, "worker lost"):
            return
        self._unassign(job, now, ran=False)
        gone = job.cancelled or (not job.background and not job.clients)
        job.retries += not gone
        limit = self.job_retries
        failed = not gone and limit is not None and job.retries >= max(limit, 1)
        if self.log_jobs:
            self.job_log(job, f"failed after {job.retries} retries" if failed else
                         "lost its worker", worker, None, now,
                         "dropped" if gone else "failed" if failed else "requeued")
        if gone:
            self._forget(job)
            return
        if failed:
            job.function.stats.failed += 1
            if job.clients:
                self._broadcast(job, PT.WORK_FAIL, job.handle)
            self.record(job, False, b"worker lost", now)
            self._forget(job)
            return
        job.function.stats.requeued += 1
        job.stamp = now
        self._enqueue(job, now)

    def _timed_out(self, job: Job, worker: Conn, now: float) -> None:
        """CAN_DO_TIMEOUT expired: the job fails (decisions.md "Job life"); a background
        job follows its retry policy, or is dropped and logged. The worker's late result
        gets JOB_NOT_FOUND."""
        if job.cancelled:
            self._unassign(job, now, ran=False)
            self._forget(job)
            return
        timeout = worker.abilities.get(job.function.name)
        error = f"timed out after {timeout:g} s" if timeout else "timed out"
        if self.log_jobs:
            self.job_log(job, "timed out", worker, None, now, "timed_out")
        job.function.stats.timed_out += 1
        if self.failed_attempt(job, worker, now, error):
            return
        job.function.stats.failed += 1
        if self.log_jobs:
            self.job_log(job, "failed: " + error, worker, None, now, "failed")
        if job.clients:
            self._broadcast(job, PT.WORK_FAIL, job.handle)
        elif job.background:
            log.warning("job %s (function %r) %s; dropped (no retry policy)",
                        job.handle.decode("latin-1"), job.function.name, error)
        self.record(job, False, error.encode(), now)
        self._unassign(job, now)
        self._forget(job)

    # ------------------------------------------------------------------ admin

    def retry_dead(self, function: bytes, handle: bytes | None, now: float) -> int:
        """Queue dead letters again as new background jobs (attempts start over); how
        many. With a store, each is acknowledged by its commit, as any submit."""
        letters = list(self.dead_letters.rows(function))
        if handle is not None:
            letters = [d for d in letters if d.handle == handle]
        conn = self._internal
        if letters and (conn is None or conn.closed):
            conn = self._internal = self.connect(
                InternalPeer("dead letter not re-queued", logging.ERROR), "internal", 0)
            conn.client_id = b"dead-letters"
            conn.kind = "internal"
        if self._reviving is None:
            self._reviving = {}
        reviving = {id(r) for r in self._reviving.values()}
        queued = 0
        for letter in letters:
            assert conn is not None
            if id(letter) in reviving:
                continue  # queued again already, waiting for its commit
            # A letter the submit refuses (its queue is full, say) stays a dead letter.
            job = self.submit(conn, letter.function, letter.unique, letter.data,
                              letter.priority, True, now, reducer=letter.reducer)
            if job is None:
                continue
            queued += 1
            if job.acks is None:  # queued (or joined a stored job): nothing to wait for
                self.dead_letters.remove(letter)
            else:  # a commit is pending: a new job's, or a foreground job made stored
                self._reviving[job.handle] = letter
                reviving.add(id(letter))
        return queued

    def persisted(self, job: Job, ok: bool, now: float) -> None:
        letter = self._reviving.pop(job.handle, None) if self._reviving else None
        super().persisted(job, ok, now)
        if letter is None:
            return
        if ok:
            self.dead_letters.remove(letter)
        else:
            log.warning("retry dead %r %r: the store did not take the job; it stays a "
                        "dead letter", letter.function, letter.handle)

    def drop_dead(self, function: bytes, handle: bytes | None) -> int:
        """Forget dead letters (and their stored copies); how many."""
        return len(self.dead_letters.take(function, handle))

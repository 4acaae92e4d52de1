"""What the cluster does to a member's job core: each a few steps of the core's own
(``Manager``'s methods), kept here so that the core's modules stay the size they are.
Synchronous and I/O-free, as the core itself (docs/cluster.md)."""

from __future__ import annotations

from protocol import PacketType
from server.jobs import Conn, Job, index_key
from server.manager import Manager

PT = PacketType


def share(m: Manager, job: Job) -> None:
    """A new background job goes to the shared queue: out of the local unique index at
    once (the shared table coalesces it)."""
    m._unindex(job)


def handed_off(m: Manager, job: Job, handle: bytes, now: float) -> None:
    """``job`` is committed to the shared queue, where any member claims it: answer the
    submits waiting for it with ``handle`` (the job's handle in the cluster: another one
    when it coalesced there) and drop the local copy."""
    acks = job.acks or []
    job.acks = None
    if not job.stored:
        job.stored = True
        job.function.storing -= 1
    job.store_key = None
    if handle != job.handle:
        job.function.stats.coalesced += 1
    for conn, hold, _ in acks:
        conn.peer.release(hold, PT.JOB_CREATED, handle)
    m._forget(job)


def adopt(m: Manager, handle: bytes, function: bytes, unique: bytes, data: bytes,
          priority: int, reducer: bytes, store_key: str, now: float,
          client: Conn | None = None) -> Job | None:
    """Queue a job claimed from the shared queue, under its cluster handle (a foreground
    one with ``client``, which relays its packets to the member its client waits on);
    None if this member holds that job already."""
    if handle in m.jobs:
        return None
    fn = m.function(function)
    job = Job(handle, fn, unique, data, priority, client is None, 0, reducer)
    job.store_key, job.stamp = store_key, now
    m.jobs[handle] = job
    key = index_key(function, unique, data)
    if client is not None:
        job.clients = (client,)
        client.attached.add(job)
    elif key is not None and key not in m.unique_index:
        m._index(job, key)
    m._enqueue(job, now)
    return job


def drop_claim(m: Manager, job: Job) -> None:
    """This member lost its claim on ``job`` (its lease ran out): if it has not started,
    drop the local copy (another member runs it); the row is no longer ours to remove."""
    if m.jobs.get(job.handle) is not job:
        return
    job.store_key = None
    if job.queued:
        m._abandon(job)
        m._forget(job)


def hand_over(m: Manager, job: Job, conn: Conn, now: float) -> None:
    """A queued foreground job runs on another member, which ``conn`` stands for here:
    it is assigned to ``conn``, whose packets (relayed from that member) reach the job's
    clients as a worker's would."""
    m._abandon(job)
    job.function.running += 1
    job.worker, job.stamp = conn, now
    job.assignment += 1
    conn.assigned[job.handle] = job


def take_back(m: Manager, job: Job, store_key: str, now: float) -> None:
    """A foreground job handed over (``hand_over``) is claimed by this member after all
    (a worker for it arrived): queue it here, its row removed when it ends."""
    worker = job.worker
    if worker is not None:
        worker.assigned.pop(job.handle, None)
        job.function.running -= 1
    job.worker = None
    job.store_key, job.stamp = store_key, now
    m._enqueue(job, now)


def drop_relayed(m: Manager, job: Job) -> None:
    """Forget a relayed foreground job nobody waits for (its packets, if they still
    come, find no job)."""
    worker = job.worker
    if worker is not None:
        worker.assigned.pop(job.handle, None)
        job.function.running -= 1
        job.worker = None
    m._forget(job)

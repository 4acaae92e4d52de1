"""A gearmand cluster on the live PostgreSQL service: three servers on one database,
clients on A, workers only on C (docs/cluster.md).

Each test has its own table and cluster name, dropped at the end. The lease is short (2 s)
so that takeovers happen within the test; no assertion is about time.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest

from protocol import PacketType, encode_req
from tests.cluster_support import (
    Cluster,
    Packet,
    Peer,
    admin,
    bg,
    cluster,
    handles,
    submit,
)
from tests.conftest import RunningServer

pytestmark = pytest.mark.slow

PT = PacketType
__all__ = ["cluster"]  # the fixture


def test_background_jobs_from_a_run_on_workers_of_c(cluster: Cluster) -> None:
    a, _b, c = cluster.server(), cluster.server(), cluster.server()
    worker = cluster.worker(c, b"fn")  # sleeping on C before anything is submitted
    time.sleep(0.3)
    jobs = [bg(b"fn", b"job-%d" % i) for i in range(300)]
    created = handles(submit(a.port, jobs))
    assert len(set(created)) == 300
    worker.wait_for(300)
    assert sorted(worker.got) == sorted(j[3] for j in jobs)
    assert len(set(worker.got)) == 300
    # The worker saw the handles the client was given (one name per job, cluster-wide).
    assert set(worker.handles) == set(created)
    assert cluster.wait_empty() == 0


def test_unique_keys_coalesce_across_servers(cluster: Cluster) -> None:
    a, b, c = cluster.server(), cluster.server(), cluster.server()
    first = handles(submit(a.port, [bg(b"fn", b"x", b"same"), bg(b"fn", b"payload", b"-")]))
    second = handles(submit(b.port, [bg(b"fn", b"y", b"same"), bg(b"fn", b"payload", b"-"),
                                     bg(b"fn", b"other", b"-")]))
    assert second[0] == first[0]
    assert second[1] == first[1]
    assert second[2] not in first
    assert cluster.rows() == 3
    worker = cluster.worker(c, b"fn")
    worker.wait_for(3)
    time.sleep(0.5)
    assert sorted(worker.got) == [b"other", b"payload", b"x"]


def test_priorities_and_fifo_hold_across_servers(cluster: Cluster) -> None:
    a, b, c = cluster.server(), cluster.server(), cluster.server()
    handles(submit(a.port, [bg(b"fn", b"low-%d" % i, ptype=PT.SUBMIT_JOB_LOW_BG)
                            for i in range(5)]))
    handles(submit(b.port, [bg(b"fn", b"normal-%d" % i) for i in range(5)]))
    handles(submit(a.port, [bg(b"fn", b"high-%d" % i, ptype=PT.SUBMIT_JOB_HIGH_BG)
                            for i in range(5)]))
    worker = cluster.worker(c, b"fn")
    worker.wait_for(15)
    assert worker.got == ([b"high-%d" % i for i in range(5)]
                          + [b"normal-%d" % i for i in range(5)]
                          + [b"low-%d" % i for i in range(5)])


def test_scheduled_job_runs_on_another_server_at_its_time(cluster: Cluster) -> None:
    a, c = cluster.server(), cluster.server()
    worker = cluster.worker(c, b"later")
    when = int(time.time()) + 2
    peer = Peer(a.port)
    peer.send(encode_req(PT.SUBMIT_JOB_EPOCH, b"later", b"", b"%d" % when, b"tick"))
    assert peer.packets(1)[0].type is PT.JOB_CREATED
    peer.close()
    worker.wait_for(1, timeout=30)
    assert time.time() >= when - 0.05  # not before its time (one clock: this machine's)
    assert worker.got == [b"tick"]


def test_kill_9_of_a_server_holding_claims(cluster: Cluster) -> None:
    """B's worker holds claimed jobs (some done, some not) when B is killed: every job
    runs on C, the unfinished ones after the lease; none is lost."""
    a, b, c = cluster.server(), cluster.server(), cluster.server()
    jobs = [bg(b"fn", b"job-%d" % i) for i in range(40)]
    handles(submit(a.port, jobs))
    stuck = cluster.worker(b, b"fn", complete=False)  # grabs, never answers
    stuck.wait_for(1)
    claimed_by_b = cluster.rows("owner IS NOT NULL")
    assert claimed_by_b >= 1
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(10)
    stuck.close()
    worker = cluster.worker(c, b"fn")
    worker.wait_for(40, timeout=30)
    time.sleep(0.5)
    counts = Counter(worker.got)
    assert set(counts) == {j[3] for j in jobs}
    assert all(n == 1 for n in counts.values()), [k for k, n in counts.items() if n > 1]
    assert cluster.wait_empty() == 0
    # A restarted B rejoins: it claims new work for its workers.
    b2 = cluster.server()
    worker.close()
    again = cluster.worker(b2, b"fn")
    handles(submit(a.port, [bg(b"fn", b"after")]))
    again.wait_for(1)
    assert again.got == [b"after"]


def test_kill_9_after_completions_not_yet_committed(cluster: Cluster) -> None:
    """At-least-once window: a worker on B completes jobs and B dies before the removals
    are committed; those jobs run again on C. Every job runs; the only duplicates are
    jobs B's worker completed."""
    a, b, c = cluster.server(), cluster.server(), cluster.server()
    jobs = [bg(b"fn", b"job-%d" % i) for i in range(2000)]
    handles(submit(a.port, jobs))
    fast = cluster.worker(b, b"fn")
    fast.wait_for(200)
    # Stopped mid-stream: completions the worker sends now are never read by B.
    b.proc.send_signal(signal.SIGSTOP)
    time.sleep(0.2)
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(10)
    fast.close()
    ran_on_b = set(fast.got)
    worker = cluster.worker(c, b"fn")
    deadline = time.monotonic() + 60
    while set(worker.got) | ran_on_b != {j[3] for j in jobs}:
        assert time.monotonic() < deadline, "jobs lost"
        time.sleep(0.05)
    time.sleep(0.5)
    on_c = Counter(worker.got)
    assert all(n == 1 for n in on_c.values())
    assert len(fast.got) == len(ran_on_b)  # B handed out no job twice
    # Jobs run twice: only jobs B completed whose removal died with B: the removals of
    # the commit in flight and of the writer's next group commit (docs/cluster.md). That
    # is not bounded by one claim (16 was asserted here; 19 was seen under the load of a
    # compiled CI run): it is what the worker finished during about two commits, a small
    # part of what B completed.
    again = ran_on_b & set(on_c)
    assert 2 * len(again) < len(ran_on_b)
    print(f"B completed {len(ran_on_b)} jobs before kill -9; {len(again)} ran again on C")


def test_ten_thousand_jobs_through_the_cluster(cluster: Cluster) -> None:
    a, b, c = cluster.server(), cluster.server(), cluster.server()
    workers = [cluster.worker(c, b"fn") for _ in range(3)]
    jobs = [bg(b"fn", b"%d" % i) for i in range(10_000)]
    senders = [threading.Thread(target=lambda port, part: handles(submit(port, part)),
                                args=(port, jobs[i::2]))
               for i, port in enumerate((a.port, b.port))]
    for t in senders:
        t.start()
    for t in senders:
        t.join(60)
    deadline = time.monotonic() + 60
    while sum(len(w.got) for w in workers) < 10_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    got = Counter(x for w in workers for x in w.got)
    assert len(got) == 10_000
    assert all(n == 1 for n in got.values())
    assert cluster.wait_empty() == 0


def test_foreground_job_from_a_runs_on_c_and_its_packets_come_back_in_order(
        cluster: Cluster) -> None:
    a, _b, c = cluster.server(), cluster.server(), cluster.server()
    worker = Peer(c.port)
    worker.send(encode_req(PT.CAN_DO, b"fg"))
    client = Peer(a.port)
    client.send(encode_req(PT.OPTION_REQ, b"exceptions"))
    assert client.packets(1)[0].type is PT.OPTION_RES
    big = bytes(range(256)) * 400  # 100 KiB: too large for a notification
    results: dict[bytes, list[Packet]] = {}
    for data, ending in ((b"ok", PT.WORK_COMPLETE), (b"no", PT.WORK_FAIL),
                         (b"oops", PT.WORK_EXCEPTION)):
        client.send(encode_req(PT.SUBMIT_JOB, b"fg", b"", data))
        (created,) = client.packets(1)
        assert created.type is PT.JOB_CREATED
        handle = created.args[0]
        worker.send(encode_req(PT.GRAB_JOB))
        assign = worker.packets(1)[0]
        while assign.type is PT.NO_JOB:  # not claimed yet: sleep until woken
            worker.send(encode_req(PT.PRE_SLEEP))
            assert worker.packets(1)[0].type is PT.NOOP
            worker.send(encode_req(PT.GRAB_JOB))
            assign = worker.packets(1)[0]
        assert assign.type is PT.JOB_ASSIGN and assign.args[1:] == (b"fg", data)
        assert assign.args[0] == handle  # one name for the job in the whole cluster
        sent = [encode_req(PT.WORK_DATA, handle, b"part-1"),
                encode_req(PT.WORK_WARNING, handle, b"careful"),
                encode_req(PT.WORK_STATUS, handle, b"1", b"2"),
                encode_req(PT.WORK_DATA, handle, big)]
        if ending is PT.WORK_FAIL:
            sent.append(encode_req(PT.WORK_FAIL, handle))
        else:
            sent.append(encode_req(ending, handle, data.upper()))
        worker.send(b"".join(sent))
        results[data] = client.packets(5)
    for data, packets in results.items():
        assert [p.type for p in packets[:4]] == [PT.WORK_DATA, PT.WORK_WARNING,
                                                 PT.WORK_STATUS, PT.WORK_DATA]
        assert packets[0].args[1] == b"part-1"
        assert packets[1].args[1] == b"careful"
        assert packets[2].args[1:] == (b"1", b"2")
        assert packets[3].args[1] == big
        end = packets[4]
        if data == b"ok":
            assert end.type is PT.WORK_COMPLETE and end.args[1] == b"OK"
        elif data == b"no":
            assert end.type is PT.WORK_FAIL
        else:
            assert end.type is PT.WORK_EXCEPTION and end.args[1] == b"OOPS"
    client.close()
    worker.close()
    assert cluster.wait_empty() == 0


def test_get_status_on_a_for_jobs_running_on_c(cluster: Cluster) -> None:
    a, c = cluster.server(), cluster.server()
    (bg_handle,) = handles(submit(a.port, [bg(b"st", b"background")]))
    client = Peer(a.port)
    client.send(encode_req(PT.SUBMIT_JOB, b"st", b"", b"foreground"))
    (created,) = client.packets(1)
    fg_handle = created.args[0]
    worker = Peer(c.port)
    worker.send(encode_req(PT.CAN_DO, b"st"))
    assigned: dict[bytes, bytes] = {}
    while len(assigned) < 2:
        worker.send(encode_req(PT.GRAB_JOB))
        reply = worker.packets(1)[0]
        if reply.type is PT.NO_JOB:
            worker.send(encode_req(PT.PRE_SLEEP))
            worker.packets(1)
            continue
        assigned[reply.args[2]] = reply.args[0]
    assert assigned == {b"background": bg_handle, b"foreground": fg_handle}
    worker.send(encode_req(PT.WORK_STATUS, fg_handle, b"3", b"4")
                + encode_req(PT.WORK_STATUS, bg_handle, b"5", b"6"))
    assert client.packets(1)[0].type is PT.WORK_STATUS
    asker = Peer(a.port)
    deadline = time.monotonic() + 10
    while True:  # C writes the background job's status to the shared table in batches
        asker.send(encode_req(PT.GET_STATUS, bg_handle))
        first = asker.packets(1)[0]
        if first.args[3] != b"0" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    asker.send(encode_req(PT.GET_STATUS, fg_handle) + encode_req(PT.GET_STATUS, b"H:nowhere:1"))
    second, third = asker.packets(2)
    assert first.args == (bg_handle, b"1", b"1", b"5", b"6")
    assert second.args == (fg_handle, b"1", b"1", b"3", b"4")
    assert third.args == (b"H:nowhere:1", b"0", b"0", b"0", b"0")
    worker.send(encode_req(PT.WORK_COMPLETE, bg_handle, b"")
                + encode_req(PT.WORK_COMPLETE, fg_handle, b"done"))
    assert client.packets(1)[0].type is PT.WORK_COMPLETE
    assert cluster.wait_empty() == 0
    asker.send(encode_req(PT.GET_STATUS, bg_handle))
    assert asker.packets(1)[0].args == (bg_handle, b"0", b"0", b"0", b"0")
    for peer in (asker, client, worker):
        peer.close()


def test_admin_status_shows_cluster_wide_queued_jobs(cluster: Cluster) -> None:
    a, b, c = cluster.server(), cluster.server(), cluster.server()
    handles(submit(a.port, [bg(b"counted", b"%d" % i) for i in range(7)]))
    handles(submit(b.port, [bg(b"counted", b"b%d" % i) for i in range(3)]))
    stuck = cluster.worker(c, b"counted", complete=False)
    stuck.wait_for(10)  # C claimed all ten for it (its claim: 16 for one worker)

    def status(port: int) -> list[bytes]:
        deadline = time.monotonic() + 10
        while True:  # the counts are refreshed when asked for once they are 1 s old
            lines = [line for line in admin(port, b"status") if line.startswith(b"counted")]
            if (lines and lines[0].startswith(b"counted\t10\t")) or (
                    time.monotonic() > deadline):
                return lines
            time.sleep(0.3)

    # Every server: the ten jobs of the cluster; its own running jobs and workers.
    assert status(a.port) == [b"counted\t10\t0\t0"]
    assert status(b.port) == [b"counted\t10\t0\t0"]
    assert status(c.port) == [b"counted\t10\t10\t1"]


def test_a_member_that_submits_and_runs_its_own_jobs(cluster: Cluster) -> None:
    """Clients and workers on the same member (its claims race its own hand-offs): each
    job runs once and the table ends empty."""
    a, b = cluster.server(), cluster.server()
    workers = [cluster.worker(a, b"own"), cluster.worker(b, b"own")]
    jobs = [bg(b"own", b"%d" % i) for i in range(2000)]
    handles(submit(a.port, jobs))
    deadline = time.monotonic() + 60
    while sum(len(w.got) for w in workers) < 2000 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    got = Counter(x for w in workers for x in w.got)
    assert len(got) == 2000 and all(n == 1 for n in got.values())
    assert cluster.wait_empty() == 0
    stats = json.loads(b"".join(admin(a.port, b"stats json")))
    print("member A:", stats["server"]["cluster"])


def test_a_relayed_job_runs_at_home_when_a_worker_arrives_there(cluster: Cluster) -> None:
    a, _b = cluster.server(), cluster.server()
    client = Peer(a.port)
    client.send(encode_req(PT.SUBMIT_JOB, b"home", b"", b"data"))
    (created,) = client.packets(1)
    time.sleep(0.3)  # in the shared table, no worker anywhere
    worker = cluster.worker(a, b"home")
    worker.wait_for(1)
    assert worker.handles == [created.args[0]]
    (done,) = client.packets(1)
    assert done.type is PT.WORK_COMPLETE and done.args == (created.args[0], b"done")
    client.close()
    assert cluster.wait_empty() == 0


def test_a_relayed_job_whose_client_left_does_not_run(cluster: Cluster) -> None:
    a, c = cluster.server(), cluster.server()
    client = Peer(a.port)
    client.send(encode_req(PT.SUBMIT_JOB, b"gone", b"", b"unwanted"))
    assert client.packets(1)[0].type is PT.JOB_CREATED
    deadline = time.monotonic() + 10
    while cluster.rows() != 1:  # the relayed job waits in the shared table
        assert time.monotonic() < deadline
        time.sleep(0.02)
    client.close()
    assert cluster.wait_empty() == 0  # withdrawn once nobody waits for it
    handles(submit(a.port, [bg(b"gone", b"wanted")]))
    worker = cluster.worker(c, b"gone")
    worker.wait_for(1)
    time.sleep(0.5)
    assert worker.got == [b"wanted"]


def test_jobs_queued_for_workers_that_left_run_elsewhere_at_once(cluster: Cluster) -> None:
    """A long lease (30 s): the jobs C claimed for a worker that left are given back at
    once, and A's foreground jobs queued for its own worker that left are relayed."""
    cluster.lease = "30"
    a, b, c = cluster.server(), cluster.server(), cluster.server()
    handles(submit(a.port, [bg(b"bgfn", b"%d" % i) for i in range(30)]))
    leaving = cluster.worker(c, b"bgfn", complete=False)
    leaving.wait_for(1)
    time.sleep(0.3)  # C claimed more than that one job for it
    leaving.close()  # the job it held is requeued on C, and given back with the rest
    stay = cluster.worker(b, b"bgfn")
    stay.wait_for(30, timeout=20)  # well within the lease
    assert sorted(stay.got) == sorted(b"%d" % i for i in range(30))
    # Foreground, on A: its own worker takes one job and leaves; both jobs run on C.
    mine = cluster.worker(a, b"fgfn", complete=False)
    client = Peer(a.port)
    client.send(encode_req(PT.SUBMIT_JOB, b"fgfn", b"", b"x")
                + encode_req(PT.SUBMIT_JOB, b"fgfn", b"", b"y"))
    created = handles(client.packets(2))
    mine.wait_for(1)
    mine.close()
    other = cluster.worker(c, b"fgfn")
    other.wait_for(2, timeout=20)
    done = client.packets(2)
    assert {p.type for p in done} == {PT.WORK_COMPLETE}
    assert sorted(p.args[0] for p in done) == sorted(created)
    client.close()
    assert cluster.wait_empty() == 0


def test_foreground_jobs_of_a_dead_member_are_dropped(cluster: Cluster) -> None:
    """A dies (kill -9) with a relayed foreground job waiting in the shared table: its
    client lost its connection with A, so the job is deleted, not run, once A's
    membership ends; A's background jobs still run."""
    a, c = cluster.server(), cluster.server()
    client = Peer(a.port)
    client.send(encode_req(PT.SUBMIT_JOB, b"orphan", b"", b"nobody waits")
                + encode_req(PT.SUBMIT_JOB_BG, b"orphan", b"", b"still wanted"))
    assert [p.type for p in client.packets(2)] == [PT.JOB_CREATED, PT.JOB_CREATED]
    deadline = time.monotonic() + 10
    while cluster.rows() != 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    assert cluster.rows() == 2  # A's membership outlives it by up to the lease
    with pytest.raises((EOFError, ConnectionError)):
        client.packets(1)
    deadline = time.monotonic() + 15  # A's membership lapses after the lease (2 s)
    while cluster.rows("origin IS NOT NULL") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cluster.rows("origin IS NOT NULL") == 0
    worker = cluster.worker(c, b"orphan")
    worker.wait_for(1)
    time.sleep(0.5)
    assert worker.got == [b"still wanted"]


def test_a_taken_back_job_goes_back_to_the_cluster_when_its_worker_leaves(
        cluster: Cluster) -> None:
    """A relays its client's job (no worker anywhere), takes it back when a worker of
    its own arrives, and that worker leaves without an answer: the job goes back to the
    shared table, runs on C, and the client on A gets its result, once."""
    cluster.lease = "30"  # the hand-back must not wait for a lease
    a, c = cluster.server(), cluster.server()
    client = Peer(a.port)
    client.send(encode_req(PT.SUBMIT_JOB, b"back", b"", b"job"))
    (created,) = handles(client.packets(1))
    deadline = time.monotonic() + 10
    while cluster.rows() != 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    mine = cluster.worker(a, b"back", complete=False)
    mine.wait_for(1)
    assert mine.handles == [created]
    mine.close()
    other = cluster.worker(c, b"back")
    other.wait_for(1, timeout=20)
    (done,) = client.packets(1)
    assert done.type is PT.WORK_COMPLETE and done.args == (created, b"done")
    time.sleep(0.5)
    assert other.got == [b"job"]
    client.close()
    assert cluster.wait_empty() == 0


def test_a_relayed_job_under_a_retry_policy_is_retried_where_it_runs(
        start_server: Callable[..., RunningServer], cluster: Cluster) -> None:
    """``--retry-policy rp=2,backoff=0.1..0.1,foreground`` on every member: C retries
    the job once, then its final WORK_FAIL reaches the client on A (A does not retry a
    failure that was retried where the job ran)."""
    policy = ["--retry-policy", "rp=2,backoff=0.1..0.1,foreground"]
    a = start_server("ours", *cluster.args(), *policy)
    c = start_server("ours", *cluster.args(), *policy)
    worker = Peer(c.port)
    worker.send(encode_req(PT.CAN_DO, b"rp"))
    client = Peer(a.port)
    client.send(encode_req(PT.SUBMIT_JOB, b"rp", b"", b"data"))
    (created,) = handles(client.packets(1))
    attempts = 0
    while attempts < 2:
        worker.send(encode_req(PT.GRAB_JOB))
        reply = worker.packets(1)[0]
        if reply.type is PT.NO_JOB:
            worker.send(encode_req(PT.PRE_SLEEP))
            assert worker.packets(1)[0].type is PT.NOOP
            continue
        assert reply.args[0] == created
        attempts += 1
        worker.send(encode_req(PT.WORK_FAIL, created))
    (failed,) = client.packets(1)
    assert failed.type is PT.WORK_FAIL and failed.args == (created,)
    client.close()
    worker.close()


def test_top_shows_the_shared_queue_once_beside_each_member(cluster: Cluster) -> None:
    """``gearadmin --top`` over two members: the jobs waiting in the shared table (no
    worker anywhere) are one row, ``cluster (shared)``, not one per member."""
    import subprocess
    import sys

    a, b = cluster.server(), cluster.server()
    handles(submit(a.port, [bg(b"waiting", b"%d" % i) for i in range(4)]))
    handles(submit(b.port, [bg(b"waiting", b"b%d" % i) for i in range(2)]))
    deadline = time.monotonic() + 15
    while True:  # each member refreshes its shared counts within a fallback poll
        out = subprocess.run(
            [sys.executable, "-m", "gearman_cli.gearadmin", "--top", "-h",
             f"127.0.0.1:{a.port}", "-h", f"127.0.0.1:{b.port}"],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert out.returncode == 0, out.stderr
        shared = [line.split("\t") for line in out.stdout.splitlines()
                  if line.startswith("cluster (shared)\twaiting\t")]
        if (len(shared) == 1 and shared[0][2] == "6") or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert len(shared) == 1 and shared[0][2] == "6", out.stdout

"""Retries with back-off, dead letters and the result cache in the I/O-free core, driven
by request packets with an injected clock (``server.outcomes``, ``server.retry``,
``server.results``)."""

from __future__ import annotations

import random

import pytest
from test_server_manager import T0, End, World, res

from protocol import PacketType
from server.results import MemoryBackend, Result, ResultCache, handle_key, unique_key
from server.retry import (
    DEAD_WHEN,
    DeadLetter,
    PolicyError,
    RetryPolicies,
    RetryPolicy,
    decode_envelope,
    duration,
    encode_envelope,
    parse_policy,
)

PT = PacketType


def world(policies: dict[bytes | None, RetryPolicy], **options: object) -> World:
    w = World(**options)
    w.m.retry = RetryPolicies(policies, rng=random.Random(7))
    return w


def run_and(w: World, wk: End, ptype: PacketType, *extra: bytes) -> bytes:
    """The worker grabs the next job and answers it with ``ptype``; its handle."""
    h = wk.grab_handle()
    wk.send(ptype, h, *extra)
    return h


# ---------------------------------------------------------------- policies


def test_parse_policy() -> None:
    assert parse_policy("resize=5,backoff=2s..10m") == (b"resize", RetryPolicy(5, 2.0, 600.0))
    assert parse_policy("*=3") == (None, RetryPolicy(3, 1.0, 600.0))
    assert parse_policy("a=b=2,backoff=250ms,foreground") == (
        b"a=b", RetryPolicy(2, 0.25, 0.25, True))
    assert duration("1h") == 3600.0
    for bad in ("resize", "=3", "f=0", "f=x", "f=2,backoff=5s..1s", "f=2,never",
                "f=2,backoff=soon"):
        with pytest.raises(PolicyError):
            parse_policy(bad)


def test_backoff_doubles_up_to_its_maximum_with_jitter() -> None:
    policies = RetryPolicies({b"f": RetryPolicy(10, 1.0, 8.0)}, rng=random.Random(1))
    policy = policies.get(b"f")
    assert policy is not None
    for failures, base in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (40, 8.0)):
        delays = [policies.delay(policy, failures) for _ in range(50)]
        assert all(base / 2 <= d <= base for d in delays)
        assert len(set(delays)) > 1  # jittered


# ---------------------------------------------------------------- retries


def test_background_failure_is_retried_after_backoff_then_dead() -> None:
    w = world({b"f": RetryPolicy(3, 2.0, 60.0)})
    c, wk = w.end(), w.end()
    h = c.submit(b"f", b"u1", b"payload", PT.SUBMIT_JOB_BG)
    wk.can_do(b"f")
    assert run_and(w, wk, PT.WORK_FAIL) == h
    job = w.m.jobs[h]
    assert job.waiting and job.assignment == 1 and job.retries == 1
    # Back-off after the first failure: between 1 and 2 seconds (jittered).
    assert T0 + 1.0 <= job.when <= T0 + 2.0
    assert wk.grab().type == PT.NO_JOB
    w.m.tick(job.when)
    w.clock.now = job.when
    assert run_and(w, wk, PT.WORK_EXCEPTION, b"boom") == h
    assert w.m.jobs[h].retry is not None
    second = w.m.jobs[h].when
    assert w.clock.now + 2.0 <= second <= w.clock.now + 4.0
    w.m.tick(second)
    w.clock.now = second
    assert run_and(w, wk, PT.WORK_FAIL) == h
    # Three attempts used: a dead letter, with its history.
    assert h not in w.m.jobs
    (letter,) = w.m.dead_letters.rows(b"f")
    assert (letter.handle, letter.unique, letter.data, letter.attempts) == (
        h, b"u1", b"payload", 3)
    assert letter.error == "WORK_FAIL"
    assert letter.first_failed == T0 and letter.last_failed == second
    assert w.m.stats[b"f"].requeued == 2 and w.m.stats[b"f"].failed == 1
    # The unique key is free again: a new submit is a new job.
    assert c.submit(b"f", b"u1", b"again", PT.SUBMIT_JOB_BG) != h


def test_exception_text_is_the_dead_letters_error() -> None:
    w = world({b"f": RetryPolicy(1)})
    c, wk = w.end(), w.end()
    c.submit(b"f", b"", b"x", PT.SUBMIT_JOB_BG)
    wk.can_do(b"f")
    run_and(w, wk, PT.WORK_EXCEPTION, b"ZeroDivisionError: division by zero")
    (letter,) = w.m.dead_letters.rows()
    assert letter.error == "exception: ZeroDivisionError: division by zero"


def test_lost_worker_and_timeout_follow_the_policy() -> None:
    w = world({None: RetryPolicy(2, 1.0, 1.0)})
    c, wk = w.end(), w.end()
    h = c.submit(b"f", b"", b"x", PT.SUBMIT_JOB_BG)
    wk.can_do(b"f")
    assert wk.grab_handle() == h
    wk.close()  # lost: retried after the back-off, not at once
    job = w.m.jobs[h]
    assert job.waiting and T0 + 0.5 <= job.when <= T0 + 1.0
    w.m.tick(T0 + 1.0)
    w.clock.now = T0 + 1.0
    wk2 = w.end()
    wk2.send(PT.CAN_DO_TIMEOUT, b"f", b"5000")
    assert wk2.grab_handle() == h
    w.m.tick(T0 + 6.0)  # timed out on the second attempt: dead
    (letter,) = w.m.dead_letters.rows(b"f")
    assert letter.attempts == 2 and letter.error == "timed out after 5 s"
    assert w.m.stats[b"f"].timed_out == 1
    w.clock.now = T0 + 6.0
    wk2.send(PT.WORK_COMPLETE, h, b"late")
    assert wk2.take() == [res(PT.ERROR, b"JOB_NOT_FOUND",
                              b"Job given in work result not found")]


def test_foreground_jobs_keep_the_protocol_unless_the_policy_says() -> None:
    w = world({b"f": RetryPolicy(3), b"g": RetryPolicy(2, 1.0, 1.0, foreground=True)})
    c, wk = w.end(), w.end()
    h = c.submit(b"f")
    wk.can_do(b"f", b"g")
    run_and(w, wk, PT.WORK_FAIL)
    assert c.take() == [res(PT.WORK_FAIL, h)]
    assert len(w.m.dead_letters) == 0
    hg = c.submit(b"g")
    run_and(w, wk, PT.WORK_FAIL)
    assert c.take() == []  # retried: the client waits for the final outcome
    w.m.tick(T0 + 1)
    w.clock.now = T0 + 1
    run_and(w, wk, PT.WORK_FAIL)
    assert c.take() == [res(PT.WORK_FAIL, hg)]
    assert [d.handle for d in w.m.dead_letters.rows(b"g")] == [hg]


def test_a_retried_job_that_completes_leaves_no_dead_letter() -> None:
    w = world({b"f": RetryPolicy(3, 1.0, 1.0)})
    c, wk = w.end(), w.end()
    h = c.submit(b"f", b"", b"x", PT.SUBMIT_JOB_BG)
    wk.can_do(b"f")
    run_and(w, wk, PT.WORK_FAIL)
    w.m.tick(T0 + 1)
    run_and(w, wk, PT.WORK_COMPLETE, b"ok")
    assert w.m.jobs == {} and len(w.m.dead_letters) == 0
    assert w.status(b"f") == (0, 0, 1)
    assert h not in w.m.jobs


def test_attempt_number_for_workers_that_ask() -> None:
    w = world({b"f": RetryPolicy(3, 1.0, 1.0)})
    c, wk, plain = w.end(), w.end(), w.end()
    wk.send(PT.OPTION_REQ, b"attempts")
    assert wk.take() == [res(PT.OPTION_RES, b"attempts")]
    h = c.submit(b"f", b"", b"x", PT.SUBMIT_JOB_BG)
    wk.can_do(b"f")
    wk.send(PT.GRAB_JOB_UNIQ)
    assert wk.take() == [res(PT.OPTION_RES, b"attempt=1"),
                         res(PT.JOB_ASSIGN_UNIQ, h, b"f", b"", b"x")]
    wk.send(PT.WORK_FAIL, h)
    w.m.tick(T0 + 1)
    plain.can_do(b"f")  # a worker that did not ask sees the protocol unchanged
    assert plain.grab() == res(PT.JOB_ASSIGN, h, b"f", b"x")


def test_a_dead_letter_queued_again_stays_dead_until_the_store_takes_it() -> None:
    """``retry dead`` with a store: the letter is let go only once its new job is
    committed; a failed commit keeps it (it is never lost), and it can be retried again."""
    from test_server_manager import FakeStore

    w = world({b"f": RetryPolicy(1)})
    store = FakeStore(w)
    c, wk = w.end(), w.end()
    wk.can_do(b"f")
    c.send(PT.SUBMIT_JOB_BG, b"f", b"u", b"data")
    store.commit()
    c.take()
    run_and(w, wk, PT.WORK_FAIL)
    assert len(w.m.dead_letters) == 1
    assert w.m.retry_dead(b"f", None, T0) == 1
    assert w.m.retry_dead(b"f", None, T0) == 0  # already on its way: not twice
    store.commit(ok=False)  # the store refuses the new job
    assert [d.data for d in w.m.dead_letters.rows(b"f")] == [b"data"]
    assert wk.grab() == res(PT.NO_JOB)
    assert w.m.retry_dead(b"f", None, T0) == 1
    store.commit(ok=True)
    assert len(w.m.dead_letters) == 0
    assert wk.grab().args[1:] == (b"f", b"data")


def test_a_dead_letter_joining_a_foreground_job_waits_for_its_commit_too() -> None:
    """The revived letter joins a waiting foreground job with its unique, which must now
    be stored: the letter goes only if that commit succeeds."""
    from test_server_manager import FakeStore

    w = world({b"f": RetryPolicy(1)})
    store = FakeStore(w)
    c, wk, fg = w.end(), w.end(), w.end()
    wk.can_do(b"f")
    c.send(PT.SUBMIT_JOB_BG, b"f", b"u", b"data")
    store.commit()
    c.take()
    run_and(w, wk, PT.WORK_FAIL)
    wk.send(PT.CANT_DO, b"f")
    fg.send(PT.SUBMIT_JOB, b"f", b"u", b"data")  # foreground: not stored
    (created,) = fg.take()
    assert w.m.retry_dead(b"f", None, T0) == 1  # joins it: it must be stored now
    store.commit(ok=False)
    assert [d.unique for d in w.m.dead_letters.rows(b"f")] == [b"u"]
    assert w.m.retry_dead(b"f", None, T0) == 1
    store.commit(ok=True)
    assert len(w.m.dead_letters) == 0
    assert w.m.jobs[created.args[0]].background


def test_retrying_ten_thousand_dead_letters_at_once_with_a_store() -> None:
    """10,000 letters (the default bound) in one ``retry dead FN all`` with a store; each
    on its way once. (The check for letters on their way was quadratic: 1.3 s here.)"""
    from test_server_manager import FakeStore

    w = world({b"f": RetryPolicy(1)})
    store = FakeStore(w)
    c, wk = w.end(), w.end()
    wk.can_do(b"f")
    n = 10_000
    for i in range(n):
        c.send(PT.SUBMIT_JOB_BG, b"f", b"", b"%d" % i)
        store.commit()
        run_and(w, wk, PT.WORK_FAIL)
    c.take()
    assert w.m.retry_dead(b"f", None, T0) == n
    assert w.m.retry_dead(b"f", None, T0) == 0  # all on their way already
    for _ in range(n):
        store.commit()
    assert len(w.m.dead_letters) == 0
    assert sum(1 for _ in w.m.iter_jobs()) == n


def test_dead_letters_retry_and_drop() -> None:
    w = world({b"f": RetryPolicy(1)})
    c, wk = w.end(), w.end()
    wk.can_do(b"f")
    handles = [c.submit(b"f", b"u%d" % i, b"d%d" % i, PT.SUBMIT_JOB_BG) for i in range(3)]
    for _ in handles:
        run_and(w, wk, PT.WORK_FAIL)
    assert [d.handle for d in w.m.dead_letters.rows(b"f")] == handles
    assert w.m.retry_dead(b"f", b"H:nope", T0) == 0
    assert w.m.retry_dead(b"f", handles[1], T0) == 1
    new = wk.grab()
    assert new.type == PT.JOB_ASSIGN and new.args[1:] == (b"f", b"d1")
    assert new.args[0] not in handles  # a new job, its attempts start over
    assert w.m.jobs[new.args[0]].unique == b"u1"
    assert w.m.drop_dead(b"f", None) == 2
    assert len(w.m.dead_letters) == 0
    assert w.m.drop_dead(b"g", None) == 0


def test_dead_letters_are_bounded_per_function() -> None:
    w = world({b"f": RetryPolicy(1)})
    w.m.dead_letters.limit = 2
    c, wk = w.end(), w.end()
    wk.can_do(b"f")
    handles = [c.submit(b"f", b"", b"x", PT.SUBMIT_JOB_BG) for _ in range(3)]
    for _ in handles:
        run_and(w, wk, PT.WORK_FAIL)
    assert [d.handle for d in w.m.dead_letters.rows()] == handles[1:]
    assert w.m.dead_letters.overflowed == 1


def test_dead_letter_envelope_round_trips() -> None:
    letter = DeadLetter(b"f", b"H:x:1", b"u", b"\0data\xff", 2, b"red", 4, "exception: \u00e9",
                        T0, T0 + 5, "key1")
    raw = encode_envelope(letter)
    assert decode_envelope(b"f", b"u", 2, b"red", raw, "key1") == letter
    with pytest.raises(ValueError):
        decode_envelope(b"f", b"u", 2, b"", b"plain job data", "k")
    assert DEAD_WHEN < 0


# ---------------------------------------------------------------- results


def test_results_of_background_jobs_are_kept_for_their_ttl() -> None:
    w = world({b"f": RetryPolicy(1)})
    cache = w.m.results = ResultCache({None: 60.0, b"short": 1.0}, MemoryBackend())
    backend = cache.backend
    c, wk = w.end(), w.end()
    wk.can_do(b"f", b"short", b"fg")
    h = c.submit(b"f", b"key", b"x", PT.SUBMIT_JOB_BG)
    run_and(w, wk, PT.WORK_COMPLETE, b"the result")
    raw = backend.get(handle_key(h), T0 + 59)
    assert raw is not None
    assert Result.decode(raw) == Result("done", b"the result", b"f", b"key", h, 1, T0)
    assert backend.get(unique_key(b"f", b"key"), T0) == raw
    assert backend.get(handle_key(h), T0 + 60) is None  # expired
    h2 = c.submit(b"f", b"", b"x", PT.SUBMIT_JOB_BG)
    run_and(w, wk, PT.WORK_FAIL)  # dead: failed, with its error
    raw = backend.get(handle_key(h2), T0)
    assert raw is not None and Result.decode(raw).state == "failed"
    h3 = c.submit(b"short", b"", b"x", PT.SUBMIT_JOB_BG)
    run_and(w, wk, PT.WORK_EXCEPTION, b"oops")
    raw = backend.get(handle_key(h3), T0 + 0.5)
    assert raw is not None and Result.decode(raw).data == b"oops"
    assert backend.get(handle_key(h3), T0 + 1) is None
    h4 = c.submit(b"fg")  # foreground: its client had the result; nothing kept
    run_and(w, wk, PT.WORK_COMPLETE, b"r")
    assert backend.get(handle_key(h4), T0) is None


def test_memory_cache_evicts_least_recently_used_past_its_bound() -> None:
    backend = MemoryBackend(max_bytes=300)
    for i in range(3):
        backend.put([(f"k{i}", b"v" * 90, 60.0)], T0)
    assert backend.get("k0", T0) is not None  # k0 used: k1 is now the oldest
    backend.put([("k3", b"v" * 90, 60.0)], T0)
    assert backend.get("k1", T0) is None
    assert all(backend.get(k, T0) is not None for k in ("k0", "k2", "k3"))
    assert backend.bytes <= 300 and backend.evicted == 1
    backend.put([("huge", b"v" * 1000, 60.0)], T0)  # larger than the bound: not kept
    assert backend.get("huge", T0) is None and backend.get("k3", T0) is not None


def test_events_say_retrying_and_dead_with_the_attempt() -> None:
    from test_server_events import listen

    w = world({b"f": RetryPolicy(2, 1.0, 1.0)})
    events, got = listen(w)
    c, wk = w.end(), w.end()
    wk.can_do(b"f")
    h = c.submit(b"f", b"", b"x", PT.SUBMIT_JOB_BG)
    run_and(w, wk, PT.WORK_FAIL)
    w.m.tick(T0 + 1)
    run_and(w, wk, PT.WORK_EXCEPTION, b"boom")
    events.drain()
    mine = [(e["event"], e.get("attempt")) for e in got if e["handle"] == h.decode()]
    assert mine == [("submitted", None), ("started", 1), ("retrying", 1), ("started", 2),
                    ("dead", 2)]


def test_a_dead_letter_the_queue_refuses_stays_dead() -> None:
    w = world({b"f": RetryPolicy(1)})
    c, wk = w.end(), w.end()
    wk.can_do(b"f")
    h = c.submit(b"f", b"", b"x", PT.SUBMIT_JOB_BG)
    run_and(w, wk, PT.WORK_FAIL)
    c.submit(b"f", b"", b"y", PT.SUBMIT_JOB_BG)
    w.m.functions[b"f"].maxqueue = [1, 1, 1]  # full: one job queued
    assert w.m.retry_dead(b"f", None, T0) == 0
    assert [d.handle for d in w.m.dead_letters.rows()] == [h]
    now = w.m.connections_now()
    assert (now["client"], now["internal"]) == (1, 1)  # the internal one is not a client


def test_cancelled_or_abandoned_jobs_are_not_retried() -> None:
    w = world({None: RetryPolicy(3, 1.0, 1.0, foreground=True)})
    c, wk = w.end(), w.end()
    wk.send(PT.CAN_DO_TIMEOUT, b"f", b"1000")
    h = c.submit(b"f", b"", b"x", PT.SUBMIT_JOB_BG)
    assert wk.grab_handle() == h
    assert w.m.cancel(h)
    w.m.tick(T0 + 1)  # times out while cancelled: simply gone
    assert w.m.jobs == {} and w.m.stats[b"f"].failed == 0
    h2 = c.submit(b"f")
    assert wk.grab_handle() == h2
    c.close()  # its only client left: a failure now is not retried for nobody
    wk.send(PT.WORK_FAIL, h2)
    assert w.m.jobs == {} and len(w.m.dead_letters) == 0


def test_admin_dead_letter_commands() -> None:
    from protocol import parse_admin_line
    from server.admin import AdminContext, handle_admin

    w = world({b"f": RetryPolicy(1)})
    ctx = AdminContext(manager=w.m, version="1", verbose="ERROR", pid=1,
                       shutdown=lambda graceful: None, clock=lambda: w.clock.now)
    c, wk = w.end(), w.end()
    wk.can_do(b"f")
    handles = [c.submit(b"f", b"u%d" % i, b"x", PT.SUBMIT_JOB_BG) for i in range(3)]
    for _ in handles:
        run_and(w, wk, PT.WORK_EXCEPTION, b"bad\tinput\nhere")

    def admin(line: bytes) -> bytes:
        return handle_admin(ctx, c.conn, parse_admin_line(line))

    rows = admin(b"show dead f").split(b"\n")
    assert rows[0] == b"\t".join([b"f", handles[0], b"u0", b"1", b"%.3f" % T0, b"%.3f" % T0,
                                  b"exception: bad input here"])
    assert len(rows) == 5 and rows[3:] == [b".", b""]
    assert admin(b"show dead g") == b".\n"
    assert admin(b"retry dead f " + handles[0]) == b"OK 1\r\n"
    assert admin(b"retry dead f nope") == b"ERR UNKNOWN_JOB\r\n"
    assert admin(b"drop dead f " + handles[1]) == b"OK 1\r\n"
    assert admin(b"drop dead f") == b"OK 1\r\n"
    assert admin(b"drop dead").startswith(b"ERR INVALID_ARGUMENTS")
    assert admin(b"result H:nope:1") == b"OK unknown\r\n"
    assert admin(b"result").startswith(b"ERR INVALID_ARGUMENTS")
    queued = c.submit(b"f", b"q", b"x", PT.SUBMIT_JOB_BG)
    assert admin(b"result " + queued) == b"OK queued\r\n"
    assert admin(b"result unique f q") == b"OK queued\r\n"
    elsewhere = w.end("10.0.0.1").conn
    for line in (b"retry dead f all", b"drop dead f all"):
        assert handle_admin(ctx, elsewhere, parse_admin_line(line)).startswith(
            b"ERR PERMISSION_DENIED")


def test_dead_letters_with_the_same_handle_are_kept_apart() -> None:
    # Handles count from 1 in each run: a letter replayed from the store may share its
    # handle with a letter of this run.
    w = world({b"f": RetryPolicy(1)})
    old = DeadLetter(b"f", b"H:test:1", b"old", b"o", 1, b"", 1, "WORK_FAIL", T0, T0)
    w.m.dead_letters.add(old, persist=False)
    c, wk = w.end(), w.end()
    wk.can_do(b"f")
    h = c.submit(b"f", b"new", b"n", PT.SUBMIT_JOB_BG)
    assert h == b"H:test:1"
    run_and(w, wk, PT.WORK_FAIL)
    assert [d.unique for d in w.m.dead_letters.rows()] == [b"old", b"new"]
    assert w.m.retry_dead(b"f", h, T0) == 2  # both: the handle names them both
    assert len(w.m.dead_letters) == 0


def test_with_a_remote_result_cache_handles_name_the_server_s_start() -> None:
    """Handles count from 1 at each start; a Redis or memcached cache outlives the server,
    so there an old handle must not find a newer job's result: each start's handles carry
    a token of their own. (The memory cache dies with the server: handles stay plain.)"""
    from server.app import Server
    from server.config import ServerConfig

    def prefix(cache: str) -> bytes:
        config = ServerConfig(listen=("127.0.0.1",), port=0, job_handle_prefix="H:host",
                              result_ttls=((None, 60.0),), result_cache=cache)
        return Server(config).manager.handle_prefix

    assert prefix("memory") == b"H:host:"
    first, second = prefix("redis://127.0.0.1:6379/15"), prefix("redis://127.0.0.1:6379/15")
    assert first.startswith(b"H:host:") and second.startswith(b"H:host:")
    assert first != second and len(first) == len(b"H:host:") + 7

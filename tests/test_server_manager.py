"""Behaviour of the I/O-free job manager, as a client or worker on the wire would see it.

Every test drives ``server.manager.Manager`` with request packets and asserts on the
packets fake peers were sent (decoded with ``protocol.Parser``). Spec sections (§) are
those of ../shared/spec/reference.md; decisions.md wins where they differ.
"""

from __future__ import annotations

import time

import pytest
from fake_peer import FakePeer

from protocol import Packet, PacketType
from server.manager import Conn, Job, Limits, Manager, next_cron_time

PT = PacketType
T0 = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now


class End:
    """One connection: send request packets, take the reply packets."""

    def __init__(self, m: Manager, clock: Clock, address: str = "127.0.0.1") -> None:
        self.m = m
        self.clock = clock
        self.peer = FakePeer()
        self.conn: Conn = m.connect(self.peer, address)

    def send(self, ptype: PacketType, *args: bytes) -> None:
        self.m.handle_packet(self.conn, ptype, tuple(args), self.clock.now)

    def take(self) -> list[Packet]:
        out, self.peer.packets = self.peer.packets, []
        return out

    def close(self) -> None:
        self.m.disconnect(self.conn, self.clock.now)

    # conveniences

    def submit(self, function: bytes, unique: bytes = b"", data: bytes = b"x",
               ptype: PacketType = PT.SUBMIT_JOB) -> bytes:
        """Submit and return the handle from the JOB_CREATED reply (the only reply)."""
        self.send(ptype, function, unique, data)
        (reply,) = self.take()
        assert reply.type == PT.JOB_CREATED, reply
        return reply.args[0]

    def can_do(self, *functions: bytes) -> None:
        for f in functions:
            self.send(PT.CAN_DO, f)

    def grab(self, ptype: PacketType = PT.GRAB_JOB) -> Packet:
        self.send(ptype)
        (reply,) = self.take()
        return reply

    def grab_handle(self) -> bytes:
        reply = self.grab()
        assert reply.type == PT.JOB_ASSIGN, reply
        return reply.args[0]


def res(ptype: PacketType, *args: bytes) -> Packet:
    return Packet.res(ptype, *args)


class World:
    def __init__(self, **options: object) -> None:
        self.clock = Clock()
        self.m = Manager(handle_prefix="H:test", **options)  # type: ignore[arg-type]

    def end(self, address: str = "127.0.0.1") -> End:
        return End(self.m, self.clock, address)

    def status(self, function: bytes) -> tuple[int, int, int]:
        """(total, running, workers) as the admin ``status`` shows them; a function
        nothing refers to any more is freed, which reads as (0, 0, 0)."""
        fn = self.m.functions.get(function)
        if fn is None:
            return 0, 0, 0
        return fn.total, fn.running, len(fn.workers)


@pytest.fixture
def w() -> World:
    return World()


# ---------------------------------------------------------------- simple requests


def test_echo_returns_payload_byte_for_byte(w: World) -> None:
    c = w.end()
    c.send(PT.ECHO_REQ, b"a\0b\0\xff")
    assert c.take() == [res(PT.ECHO_RES, b"a\0b\0\xff")]


@pytest.mark.parametrize("name", [b"exceptions", b"EXCEPTIONS", b"Exceptions"])
def test_option_req_exceptions_echoes_name_as_sent(w: World, name: bytes) -> None:
    c = w.end()
    c.send(PT.OPTION_REQ, name)
    assert c.take() == [res(PT.OPTION_RES, name)]
    assert c.conn.exceptions


def test_option_req_unknown(w: World) -> None:
    c = w.end()
    c.send(PT.OPTION_REQ, b"frobnicate")
    assert c.take() == [res(PT.ERROR, b"UNKNOWN_OPTION",
                            b"Server does not recognize given option")]
    assert not c.conn.exceptions


def test_set_client_id_is_silent_and_truncated(w: World) -> None:
    c = w.end()
    c.send(PT.SET_CLIENT_ID, b"worker one " + b"x" * 200)
    assert c.take() == []
    assert c.conn.client_id == (b"worker one " + b"x" * 200)[:127]


def test_all_yours_is_accepted_silently(w: World) -> None:
    c = w.end()
    c.send(PT.ALL_YOURS)
    assert c.take() == []


@pytest.mark.parametrize("ptype", [
    PT.NOOP, PT.JOB_CREATED, PT.NO_JOB, PT.JOB_ASSIGN, PT.ECHO_RES, PT.ERROR,
    PT.STATUS_RES, PT.OPTION_RES, PT.JOB_ASSIGN_UNIQ, PT.JOB_ASSIGN_ALL,
    PT.STATUS_RES_UNIQUE,
])
def test_server_only_types_are_rejected(w: World, ptype: PacketType) -> None:
    from protocol import PACKET_SPECS

    c = w.end()
    nargs = len(PACKET_SPECS[ptype].args)
    c.send(ptype, *([b"a"] * nargs))
    assert c.take() == [res(PT.ERROR, b"INVALID_COMMAND", b"Command not expected")]


# ---------------------------------------------------------------- submit and handles


def test_job_created_per_submit_with_counting_handles(w: World) -> None:
    c = w.end()
    handles = [c.submit(b"f", ptype=pt) for pt in (
        PT.SUBMIT_JOB, PT.SUBMIT_JOB_BG, PT.SUBMIT_JOB_HIGH, PT.SUBMIT_JOB_HIGH_BG,
        PT.SUBMIT_JOB_LOW, PT.SUBMIT_JOB_LOW_BG)]
    assert handles == [f"H:test:{n}".encode() for n in range(1, 7)]
    assert w.status(b"f") == (6, 0, 0)


def test_handle_prefix_option() -> None:
    m = Manager(handle_prefix="P")
    c = End(m, Clock())
    assert c.submit(b"f") == b"P:1"


def test_empty_function_name_is_accepted(w: World) -> None:
    c, wk = w.end(), w.end()
    h = c.submit(b"")
    wk.can_do(b"")
    assert wk.grab() == res(PT.JOB_ASSIGN, h, b"", b"x")


def test_submit_reduce_job_stores_reducer_for_grab_all(w: World) -> None:
    c, wk = w.end(), w.end()
    c.send(PT.SUBMIT_REDUCE_JOB, b"f", b"u", b"red", b"", b"data")
    (created,) = c.take()
    h = created.args[0]
    wk.can_do(b"f")
    assert wk.grab(PT.GRAB_JOB_ALL) == res(PT.JOB_ASSIGN_ALL, h, b"f", b"u", b"red", b"data")
    wk.send(PT.WORK_COMPLETE, h, b"r")
    assert c.take() == [res(PT.WORK_COMPLETE, h, b"r")]


# ---------------------------------------------------------------- unique coalescing


def test_fg_fg_coalesce_and_both_get_every_work_packet(w: World) -> None:
    a, b, wk = w.end(), w.end(), w.end()
    h = a.submit(b"f", b"u", b"one")
    assert b.submit(b"f", b"u", b"two") == h
    assert w.status(b"f") == (1, 0, 0)
    wk.can_do(b"f")
    assert wk.grab() == res(PT.JOB_ASSIGN, h, b"f", b"one")  # the first data wins
    wk.send(PT.WORK_DATA, h, b"d")
    wk.send(PT.WORK_WARNING, h, b"w")
    wk.send(PT.WORK_STATUS, h, b"1", b"2")
    wk.send(PT.WORK_COMPLETE, h, b"done")
    expect = [res(PT.WORK_DATA, h, b"d"), res(PT.WORK_WARNING, h, b"w"),
              res(PT.WORK_STATUS, h, b"1", b"2"), res(PT.WORK_COMPLETE, h, b"done")]
    assert a.take() == expect
    assert b.take() == expect
    assert wk.take() == []


def test_bg_bg_coalesce(w: World) -> None:
    a, b = w.end(), w.end()
    h = a.submit(b"f", b"u", ptype=PT.SUBMIT_JOB_BG)
    assert b.submit(b"f", b"u", ptype=PT.SUBMIT_JOB_LOW_BG) == h
    assert w.status(b"f") == (1, 0, 0)


def test_fg_onto_bg_gets_result(w: World) -> None:
    a, b, wk = w.end(), w.end(), w.end()
    h = a.submit(b"f", b"u", ptype=PT.SUBMIT_JOB_BG)
    assert b.submit(b"f", b"u") == h
    wk.can_do(b"f")
    wk.grab()
    wk.send(PT.WORK_COMPLETE, h, b"r")
    assert b.take() == [res(PT.WORK_COMPLETE, h, b"r")]
    assert a.take() == []


def test_bg_onto_running_fg_and_fg_leaving_does_not_kill_it(w: World) -> None:
    a, b, wk = w.end(), w.end(), w.end()
    h = a.submit(b"f", b"u")
    wk.can_do(b"f")
    wk.grab()
    assert b.submit(b"f", b"u", ptype=PT.SUBMIT_JOB_BG) == h
    a.close()
    wk.close()  # requeued: the bg submitter still wants it
    assert w.status(b"f") == (1, 0, 0)
    wk2 = w.end()
    wk2.can_do(b"f")
    assert wk2.grab_handle() == h


def test_fg_coalesced_onto_bg_leaving_does_not_kill_it(w: World) -> None:
    a, b, wk = w.end(), w.end(), w.end()
    h = a.submit(b"f", b"u", ptype=PT.SUBMIT_JOB_BG)
    assert b.submit(b"f", b"u") == h
    b.close()
    assert w.status(b"f") == (1, 0, 0)
    wk.can_do(b"f")
    assert wk.grab_handle() == h


def test_fg_coalesced_onto_queued_fg_then_one_leaves(w: World) -> None:
    a, b, wk = w.end(), w.end(), w.end()
    h = a.submit(b"f", b"u")
    b.submit(b"f", b"u")
    a.close()
    wk.can_do(b"f")
    assert wk.grab_handle() == h
    wk.send(PT.WORK_COMPLETE, h, b"r")
    assert b.take() == [res(PT.WORK_COMPLETE, h, b"r")]


def test_dash_unique_coalesces_by_workload(w: World) -> None:
    a, wk = w.end(), w.end()
    h1 = a.submit(b"f", b"-", b"same")
    assert a.submit(b"f", b"-", b"same") == h1
    h2 = a.submit(b"f", b"-", b"other")
    assert h2 != h1
    # empty workload: never coalesced
    assert a.submit(b"f", b"-", b"") != a.submit(b"f", b"-", b"")
    # another function: separate
    assert a.submit(b"g", b"-", b"same") != h1
    wk.can_do(b"f")
    assert wk.grab(PT.GRAB_JOB_UNIQ) == res(PT.JOB_ASSIGN_UNIQ, h1, b"f", b"-", b"same")


def test_empty_unique_never_coalesces(w: World) -> None:
    a = w.end()
    assert a.submit(b"f", b"", b"d") != a.submit(b"f", b"", b"d")
    assert w.status(b"f") == (2, 0, 0)


def test_same_unique_different_functions_are_separate(w: World) -> None:
    a = w.end()
    assert a.submit(b"f", b"u") != a.submit(b"g", b"u")


def test_unique_longer_than_64_is_rejected(w: World) -> None:
    a = w.end()
    a.send(PT.SUBMIT_JOB, b"f", b"u" * 65, b"d")
    assert a.take() == [res(PT.ERROR, b"ARGUMENT_TOO_LARGE", b"Unique value too large")]
    assert w.m.jobs == {}


def test_unique_of_exactly_64_bytes_is_kept_whole(w: World) -> None:
    a, wk = w.end(), w.end()
    u64 = bytes(range(65, 65 + 26)) * 2 + b"0123456789AB"
    assert len(u64) == 64
    h = a.submit(b"f", u64)
    # a 63-byte prefix is a different unique (the reference truncates; we do not)
    assert a.submit(b"f", u64[:63]) != h
    assert a.submit(b"f", u64) == h
    wk.can_do(b"f")
    assert wk.grab(PT.GRAB_JOB_UNIQ) == res(PT.JOB_ASSIGN_UNIQ, h, b"f", u64, b"x")


def test_coalesced_submit_of_same_client_twice_then_disconnect(w: World) -> None:
    """A client that submitted one unique twice and left must not keep the job alive."""
    a, b, wk = w.end(), w.end(), w.end()
    h = a.submit(b"f", b"u")
    assert a.submit(b"f", b"u") == h
    a.close()
    assert w.status(b"f") == (0, 0, 0)
    h2 = b.submit(b"f", b"u")
    assert h2 != h
    wk.can_do(b"f")
    assert wk.grab_handle() == h2
    wk.send(PT.WORK_COMPLETE, h2, b"r")
    assert a.take() == []
    assert b.take() == [res(PT.WORK_COMPLETE, h2, b"r")]


# ---------------------------------------------------------------- grab


def test_grab_reply_shapes(w: World) -> None:
    c, wk = w.end(), w.end()
    h1 = c.submit(b"f", b"u1", b"d1")
    h2 = c.submit(b"f", b"u2", b"d2")
    h3 = c.submit(b"f", b"u3", b"d3")
    wk.can_do(b"f")
    assert wk.grab(PT.GRAB_JOB) == res(PT.JOB_ASSIGN, h1, b"f", b"d1")
    assert wk.grab(PT.GRAB_JOB_UNIQ) == res(PT.JOB_ASSIGN_UNIQ, h2, b"f", b"u2", b"d2")
    # no reducer: GRAB_JOB_ALL answers JOB_ASSIGN_UNIQ, as the reference does
    assert wk.grab(PT.GRAB_JOB_ALL) == res(PT.JOB_ASSIGN_UNIQ, h3, b"f", b"u3", b"d3")


@pytest.mark.parametrize("ptype", [PT.GRAB_JOB, PT.GRAB_JOB_UNIQ, PT.GRAB_JOB_ALL])
def test_no_job(w: World, ptype: PacketType) -> None:
    c, wk = w.end(), w.end()
    assert wk.grab(ptype) == res(PT.NO_JOB)  # no abilities at all
    c.submit(b"other")
    wk.can_do(b"f")
    assert wk.grab(ptype) == res(PT.NO_JOB)  # work only for another function


def test_payload_with_nul_survives(w: World) -> None:
    c, wk = w.end(), w.end()
    h = c.submit(b"f", b"", b"a\0b")
    wk.can_do(b"f")
    assert wk.grab() == res(PT.JOB_ASSIGN, h, b"f", b"a\0b")
    wk.send(PT.WORK_COMPLETE, h, b"\0r\0")
    assert c.take() == [res(PT.WORK_COMPLETE, h, b"\0r\0")]


def test_worker_may_hold_several_jobs(w: World) -> None:
    c, wk = w.end(), w.end()
    h1, h2 = c.submit(b"f"), c.submit(b"f")
    wk.can_do(b"f")
    assert [wk.grab_handle(), wk.grab_handle()] == [h1, h2]
    assert w.status(b"f") == (2, 2, 1)
    wk.send(PT.WORK_COMPLETE, h2, b"2")
    wk.send(PT.WORK_COMPLETE, h1, b"1")
    assert c.take() == [res(PT.WORK_COMPLETE, h2, b"2"), res(PT.WORK_COMPLETE, h1, b"1")]
    assert w.status(b"f") == (0, 0, 1)


# ---------------------------------------------------------------- priority and fairness


def test_priority_is_global_across_functions(w: World) -> None:
    c, wk = w.end(), w.end()
    a_low = c.submit(b"a", ptype=PT.SUBMIT_JOB_LOW)
    a_norm = c.submit(b"a")
    a_high = c.submit(b"a", ptype=PT.SUBMIT_JOB_HIGH)
    b_low = c.submit(b"b", ptype=PT.SUBMIT_JOB_LOW_BG)
    b_norm = c.submit(b"b", ptype=PT.SUBMIT_JOB_BG)
    b_high = c.submit(b"b", ptype=PT.SUBMIT_JOB_HIGH_BG)
    wk.can_do(b"a", b"b")
    got = [wk.grab_handle() for _ in range(6)]
    assert set(got[:2]) == {a_high, b_high}
    assert set(got[2:4]) == {a_norm, b_norm}
    assert set(got[4:]) == {a_low, b_low}
    assert wk.grab() == res(PT.NO_JOB)


def test_fifo_within_a_level(w: World) -> None:
    c, wk = w.end(), w.end()
    hs = [c.submit(b"f", ptype=PT.SUBMIT_JOB_LOW) for _ in range(3)]
    hi = [c.submit(b"f", ptype=PT.SUBMIT_JOB_HIGH) for _ in range(3)]
    wk.can_do(b"f")
    assert [wk.grab_handle() for _ in range(6)] == hi + hs


def test_fair_rotation_between_functions_of_equal_priority(w: World) -> None:
    c, wk = w.end(), w.end()
    a = [c.submit(b"a") for _ in range(4)]
    b = [c.submit(b"b") for _ in range(4)]
    wk.can_do(b"a", b"b")
    got = [wk.grab_handle() for _ in range(8)]
    fns = [b"a" if h in a else b"b" for h in got]
    assert fns in ([b"a", b"b"] * 4, [b"b", b"a"] * 4)
    assert [h for h in got if h in a] == a  # FIFO per function
    assert [h for h in got if h in b] == b


def test_rotation_with_three_functions_skips_empty_ones(w: World) -> None:
    c, wk = w.end(), w.end()
    a = [c.submit(b"a") for _ in range(3)]
    cc = [c.submit(b"c") for _ in range(3)]
    wk.can_do(b"a", b"b", b"c")
    got = [wk.grab_handle() for _ in range(6)]
    fns = [b"a" if h in a else b"c" for h in got]
    assert fns in ([b"a", b"c"] * 3, [b"c", b"a"] * 3)
    assert cc == [h for h in got if h in cc]


# ---------------------------------------------------------------- wake-up


def test_pre_sleep_with_work_gets_noop_at_once(w: World) -> None:
    c, wk = w.end(), w.end()
    c.submit(b"f")
    wk.can_do(b"f")
    wk.send(PT.PRE_SLEEP)
    assert wk.take() == [res(PT.NOOP)]


def test_pre_sleep_then_exactly_one_noop(w: World) -> None:
    c, wk, other = w.end(), w.end(), w.end()
    wk.can_do(b"f")
    other.can_do(b"g")
    wk.send(PT.PRE_SLEEP)
    other.send(PT.PRE_SLEEP)
    assert wk.take() == []
    h = c.submit(b"f")
    assert wk.take() == [res(PT.NOOP)]
    c.submit(b"f")  # a second job before the GRAB: no second NOOP
    assert wk.take() == []
    assert other.take() == []  # sleepers of other functions are left alone
    assert wk.grab_handle() == h
    wk.send(PT.PRE_SLEEP)  # there is still work: NOOP at once
    assert wk.take() == [res(PT.NOOP)]


def test_no_noop_without_pre_sleep(w: World) -> None:
    c, wk = w.end(), w.end()
    wk.can_do(b"f")
    c.submit(b"f")
    assert wk.take() == []


def test_worker_sleeping_before_can_do_is_woken_by_can_do_with_work(w: World) -> None:
    c, wk = w.end(), w.end()
    c.submit(b"f")
    wk.send(PT.PRE_SLEEP)
    assert wk.take() == []
    wk.can_do(b"f")
    assert wk.take() == [res(PT.NOOP)]


def test_one_sleeper_woken_per_ready_job_the_last_asleep_first(w: World) -> None:
    """server/wakeups.py: not every sleeper for every job (the reference's default)."""
    c = w.end()
    sleepers = [w.end() for _ in range(3)]
    for s in sleepers:
        s.can_do(b"f")
        s.send(PT.PRE_SLEEP)
    woken = []
    for _ in range(3):
        c.submit(b"f")
        woken.append([i for i, s in enumerate(sleepers) if s.take()])
    assert woken == [[2], [1], [0]]
    c.submit(b"f")  # nobody left asleep
    assert [s.take() for s in sleepers] == [[], [], []]
    assert w.m.functions[b"f"].waking == 3


def test_a_woken_worker_that_takes_other_work_passes_its_wakeup_on(w: World) -> None:
    c, a, b = w.end(), w.end(), w.end()
    a.can_do(b"f")
    a.send(PT.PRE_SLEEP)
    b.can_do(b"f", b"g")
    b.send(PT.PRE_SLEEP)
    c.submit(b"f")
    assert (a.take(), b.take()) == ([], [res(PT.NOOP)])  # b fell asleep last
    c.submit(b"g", data=b"urgent", ptype=PT.SUBMIT_JOB_HIGH)  # b is woken: no NOOP
    assert b.take() == []
    reply = b.grab()  # b takes the high-priority g job, so f's job needs someone else
    assert reply.type is PT.JOB_ASSIGN and reply.args[1] == b"g"
    assert a.take() == [res(PT.NOOP)]
    assert a.grab().args[1] == b"f"


def test_a_woken_worker_that_grabs_nothing_or_sleeps_again_wakes_the_next(w: World) -> None:
    c, a, b = w.end(), w.end(), w.end()
    for x in (a, b):
        x.can_do(b"f")
        x.send(PT.PRE_SLEEP)
    c.submit(b"f")
    assert b.take() == [res(PT.NOOP)]
    b.send(PT.CANT_DO, b"f")  # gives the function up before grabbing
    assert a.take() == [res(PT.NOOP)]
    a.send(PT.PRE_SLEEP)  # sleeps again without grabbing: woken again at once (work waits)
    assert a.take() == [res(PT.NOOP)]
    assert a.grab().type is PT.JOB_ASSIGN
    assert w.m.functions[b"f"].waking == 0


def test_a_woken_worker_that_leaves_wakes_the_next(w: World) -> None:
    c, a, b = w.end(), w.end(), w.end()
    for x in (a, b):
        x.can_do(b"f")
        x.send(PT.PRE_SLEEP)
    c.submit(b"f")
    assert (a.take(), b.take()) == ([], [res(PT.NOOP)])
    b.close()
    assert a.take() == [res(PT.NOOP)]


def test_a_silent_woken_worker_is_replaced_after_the_grace(w: World) -> None:
    """A peer gone quiet without closing must not hold a job back for ever."""
    from server.wakeups import GRACE

    c, a, b = w.end(), w.end(), w.end()
    for x in (a, b):
        x.can_do(b"f")
        x.send(PT.PRE_SLEEP)
    c.submit(b"f")
    assert b.take() == [res(PT.NOOP)]
    assert w.m.next_deadline() == T0 + GRACE
    w.m.tick(T0 + GRACE / 2)
    assert a.take() == []
    w.m.tick(T0 + GRACE)
    assert a.take() == [res(PT.NOOP)]
    assert a.grab().type is PT.JOB_ASSIGN
    assert b.grab() == res(PT.NO_JOB)  # the late answer is harmless
    assert w.m.functions[b"f"].waking == 0
    assert w.m.next_deadline() is None


def test_worker_wakeup_is_accepted_and_wakes_no_more_than_the_work() -> None:
    w = World(worker_wakeup=1)
    c = w.end()
    sleepers = [w.end() for _ in range(3)]
    for s in sleepers:
        s.can_do(b"f")
        s.send(PT.PRE_SLEEP)
    c.submit(b"f")
    assert [bool(s.take()) for s in sleepers] == [False, False, True]


def test_requeue_wakes_sleepers(w: World) -> None:
    c, wk, s = w.end(), w.end(), w.end()
    c.submit(b"f")
    wk.can_do(b"f")
    wk.grab()
    s.can_do(b"f")
    s.send(PT.PRE_SLEEP)
    wk.close()
    assert s.take() == [res(PT.NOOP)]


def test_dying_sleeper_does_not_swallow_the_only_noop() -> None:
    """worker_wakeup=1: a worker that sleeps while holding a job and then disconnects
    must not be the one NOOPed for its own requeued job; the live sleeper must be."""
    w = World(worker_wakeup=1)
    c, w1, w2 = w.end(), w.end(), w.end()
    c.submit(b"f")
    w1.can_do(b"f")
    w2.can_do(b"f")
    w1.grab()
    w1.send(PT.PRE_SLEEP)
    w2.send(PT.PRE_SLEEP)
    assert w1.take() == w2.take() == []
    w1.close()
    assert w1.take() == []
    assert w2.take() == [res(PT.NOOP)]


# ---------------------------------------------------------------- worker loss, retries


def test_worker_disconnect_requeues_with_retry_and_status_reset(w: World) -> None:
    c, wk, wk2 = w.end(), w.end(), w.end()
    h = c.submit(b"f")
    wk.can_do(b"f")
    wk.grab()
    wk.send(PT.WORK_STATUS, h, b"3", b"7")
    assert c.take() == [res(PT.WORK_STATUS, h, b"3", b"7")]
    c.send(PT.GET_STATUS, h)
    assert c.take() == [res(PT.STATUS_RES, h, b"1", b"1", b"3", b"7")]
    wk.close()
    assert c.take() == []  # clients are not told
    c.send(PT.GET_STATUS, h)
    assert c.take() == [res(PT.STATUS_RES, h, b"1", b"0", b"0", b"0")]
    assert w.m.jobs[h].retries == 1
    assert w.status(b"f") == (1, 0, 0)
    wk2.can_do(b"f")
    assert wk2.grab_handle() == h
    wk2.send(PT.WORK_COMPLETE, h, b"ok")
    assert c.take() == [res(PT.WORK_COMPLETE, h, b"ok")]


def test_requeue_goes_to_tail_of_its_level(w: World) -> None:
    c, wk = w.end(), w.end()
    h1, h2 = c.submit(b"f"), c.submit(b"f")
    wk.can_do(b"f")
    assert wk.grab_handle() == h1
    wk.close()
    wk2 = w.end()
    wk2.can_do(b"f")
    assert [wk2.grab_handle(), wk2.grab_handle()] == [h2, h1]


def test_unlimited_retries_by_default(w: World) -> None:
    c = w.end()
    h = c.submit(b"f")
    for _ in range(10):
        wk = w.end()
        wk.can_do(b"f")
        assert wk.grab_handle() == h
        wk.close()
    assert c.take() == []
    assert w.m.jobs[h].retries == 10


def test_job_retries_zero_fails_on_first_loss() -> None:
    w = World(job_retries=0)
    c, wk = w.end(), w.end()
    h = c.submit(b"f")
    wk.can_do(b"f")
    wk.grab()
    wk.close()
    assert c.take() == [res(PT.WORK_FAIL, h)]
    assert w.status(b"f") == (0, 0, 0)
    c.send(PT.GET_STATUS, h)
    assert c.take() == [res(PT.STATUS_RES, h, b"0", b"0", b"0", b"0")]


def test_job_retries_n_fails_when_retries_reach_n() -> None:
    w = World(job_retries=2)
    c = w.end()
    h = c.submit(b"f", b"u")
    bg = c.submit(b"f", ptype=PT.SUBMIT_JOB_BG)
    wk = w.end()
    wk.can_do(b"f")
    assert wk.grab_handle() == h
    wk.close()
    assert c.take() == []  # first loss: requeued
    wk = w.end()
    wk.can_do(b"f")
    assert wk.grab_handle() == bg
    assert wk.grab_handle() == h
    wk.close()
    assert c.take() == [res(PT.WORK_FAIL, h)]  # second loss: failed
    assert w.status(b"f") == (1, 0, 0)  # only the bg job (retries 1) is left
    assert c.submit(b"f", b"u") != h  # the failed job is gone from the unique index


def test_cant_do_requeues_and_later_result_is_not_found(w: World) -> None:
    c, wk = w.end(), w.end()
    h = c.submit(b"f")
    wk.can_do(b"f", b"g")
    wk.grab()
    wk.send(PT.CANT_DO, b"f")
    assert w.status(b"f") == (1, 0, 0)
    assert w.m.jobs[h].retries == 1
    wk.send(PT.WORK_COMPLETE, h, b"late")
    assert wk.take() == [res(PT.ERROR, b"JOB_NOT_FOUND", b"Job given in work result not found")]
    assert c.take() == []
    assert wk.grab() == res(PT.NO_JOB)  # it can no longer do f


def test_reset_abilities_requeues(w: World) -> None:
    c, wk, wk2 = w.end(), w.end(), w.end()
    h = c.submit(b"f")
    wk.can_do(b"f")
    wk.grab()
    wk.send(PT.RESET_ABILITIES)
    assert wk.take() == []
    assert w.status(b"f") == (1, 0, 0)
    wk.send(PT.WORK_FAIL, h)
    assert wk.take() == [res(PT.ERROR, b"JOB_NOT_FOUND", b"Job given in work result not found")]
    wk2.can_do(b"f")
    assert wk2.grab_handle() == h


# ---------------------------------------------------------------- work results


@pytest.mark.parametrize(("ptype", "args", "text"), [
    (PT.WORK_STATUS, (b"1", b"2"), b"Job given in work result not found"),
    (PT.WORK_COMPLETE, (b"r",), b"Job given in work result not found"),
    (PT.WORK_FAIL, (), b"Job given in work result not found"),
    (PT.WORK_DATA, (b"d",), b"Job does not exist on server"),
    (PT.WORK_WARNING, (b"d",), b"Job does not exist on server"),
    (PT.WORK_EXCEPTION, (b"e",),
     b"An exception was received for a job that does not exist"),
])
def test_work_packets_for_jobs_not_owned(w: World, ptype: PacketType, args: tuple[bytes, ...],
                                         text: bytes) -> None:
    c, wk, intruder = w.end(), w.end(), w.end()
    h = c.submit(b"f")
    queued = c.submit(b"f")
    wk.can_do(b"f")
    wk.grab()
    intruder.can_do(b"f")
    for handle in (h, queued, b"H:test:999"):
        intruder.send(ptype, handle, *args)
        assert intruder.take() == [res(PT.ERROR, b"JOB_NOT_FOUND", text)]
    assert c.take() == []
    assert w.status(b"f") == (2, 1, 2)  # nothing changed


def test_work_fail_forwards_bare_handle(w: World) -> None:
    c, wk = w.end(), w.end()
    h = c.submit(b"f")
    wk.can_do(b"f")
    wk.grab()
    wk.send(PT.WORK_FAIL, h)
    assert c.peer.raw.endswith(h)
    assert c.take() == [res(PT.WORK_FAIL, h)]
    assert w.status(b"f") == (0, 0, 1)


def test_work_exception_forwarded_or_converted(w: World) -> None:
    wants, plain, wk = w.end(), w.end(), w.end()
    wants.send(PT.OPTION_REQ, b"exceptions")
    wants.take()
    h = wants.submit(b"f", b"u")
    assert plain.submit(b"f", b"u") == h
    wk.can_do(b"f")
    wk.grab()
    wk.send(PT.WORK_EXCEPTION, h, b"boom")
    assert wants.take() == [res(PT.WORK_EXCEPTION, h, b"boom")]
    assert plain.take() == [res(PT.WORK_FAIL, h)]
    # the bare handle: no trailing NUL (decisions.md)
    size = len(h).to_bytes(4, "big")
    assert plain.peer.raw == b"\0RES\0\0\0\x08" + size + h + b"\0RES\0\0\0\x0e" + size + h
    assert w.status(b"f") == (0, 0, 1)
    assert wk.take() == []


def test_exceptions_server_flag_starts_connections_with_it() -> None:
    w = World(exceptions=True)
    c, wk = w.end(), w.end()
    h = c.submit(b"f")
    wk.can_do(b"f")
    wk.grab()
    wk.send(PT.WORK_EXCEPTION, h, b"boom")
    assert c.take() == [res(PT.WORK_EXCEPTION, h, b"boom")]


def test_work_results_for_bg_job_are_accepted_and_status_recorded(w: World) -> None:
    c, wk = w.end(), w.end()
    h = c.submit(b"f", ptype=PT.SUBMIT_JOB_BG)
    wk.can_do(b"f")
    wk.grab()
    wk.send(PT.WORK_DATA, h, b"d")
    wk.send(PT.WORK_STATUS, h, b"5", b"10")
    assert wk.take() == []
    c.send(PT.GET_STATUS, h)
    assert c.take() == [res(PT.STATUS_RES, h, b"1", b"1", b"5", b"10")]
    wk.send(PT.WORK_COMPLETE, h, b"r")
    assert wk.take() == [] and c.take() == []
    c.send(PT.GET_STATUS, h)
    assert c.take() == [res(PT.STATUS_RES, h, b"0", b"0", b"0", b"0")]


# ---------------------------------------------------------------- status


def test_get_status(w: World) -> None:
    c, wk = w.end(), w.end()
    c.send(PT.GET_STATUS, b"H:test:77")
    assert c.take() == [res(PT.STATUS_RES, b"H:test:77", b"0", b"0", b"0", b"0")]
    h = c.submit(b"f")
    c.send(PT.GET_STATUS, h)
    assert c.take() == [res(PT.STATUS_RES, h, b"1", b"0", b"0", b"0")]
    wk.can_do(b"f")
    wk.grab()
    c.send(PT.GET_STATUS, h)
    assert c.take() == [res(PT.STATUS_RES, h, b"1", b"1", b"0", b"0")]
    wk.send(PT.WORK_STATUS, h, b"1", b"4")
    c.take()
    c.send(PT.GET_STATUS, h)
    assert c.take() == [res(PT.STATUS_RES, h, b"1", b"1", b"1", b"4")]


def test_get_status_unique(w: World) -> None:
    a, b, wk, asker = w.end(), w.end(), w.end(), w.end()
    asker.send(PT.GET_STATUS_UNIQUE, b"u")
    assert asker.take() == [res(PT.STATUS_RES_UNIQUE, b"u", b"0", b"0", b"0", b"0", b"0")]
    a.submit(b"f", b"u")
    b.submit(b"f", b"u")
    asker.send(PT.GET_STATUS_UNIQUE, b"u")
    assert asker.take() == [res(PT.STATUS_RES_UNIQUE, b"u", b"1", b"0", b"0", b"0", b"2")]
    wk.can_do(b"f")
    h = wk.grab_handle()
    wk.send(PT.WORK_STATUS, h, b"2", b"3")
    b.close()
    assert a.take() == [res(PT.WORK_STATUS, h, b"2", b"3")]
    asker.send(PT.GET_STATUS_UNIQUE, b"u")
    assert asker.take() == [res(PT.STATUS_RES_UNIQUE, b"u", b"1", b"1", b"2", b"3", b"1")]
    bg = a.submit(b"g", b"v", ptype=PT.SUBMIT_JOB_BG)
    asker.send(PT.GET_STATUS_UNIQUE, b"v")
    assert asker.take() == [res(PT.STATUS_RES_UNIQUE, b"v", b"1", b"0", b"0", b"0", b"0")]
    assert bg
    # '-' jobs are coalesced by workload and cannot be looked up by unique
    a.submit(b"f", b"-", b"w")
    asker.send(PT.GET_STATUS_UNIQUE, b"-")
    assert asker.take() == [res(PT.STATUS_RES_UNIQUE, b"-", b"0", b"0", b"0", b"0", b"0")]


# ---------------------------------------------------------------- epoch and sched


def test_epoch_job_waits_for_its_time_and_tick_wakes_sleepers(w: World) -> None:
    c, wk = w.end(), w.end()
    due = int(T0) + 60
    c.send(PT.SUBMIT_JOB_EPOCH, b"f", b"", str(due).encode(), b"later")
    (created,) = c.take()
    h = created.args[0]
    assert created.type == PT.JOB_CREATED
    assert w.status(b"f") == (1, 0, 0)
    wk.can_do(b"f")
    assert wk.grab() == res(PT.NO_JOB)
    wk.send(PT.PRE_SLEEP)
    assert wk.take() == []  # nothing is ready
    w.m.tick(T0 + 59)
    assert wk.take() == []
    assert w.m.next_deadline() == due
    w.m.tick(due)
    assert wk.take() == [res(PT.NOOP)]
    w.clock.now = due
    assert wk.grab() == res(PT.JOB_ASSIGN, h, b"f", b"later")


def test_epoch_in_the_past_or_garbage_runs_now(w: World) -> None:
    c, wk = w.end(), w.end()
    c.send(PT.SUBMIT_JOB_EPOCH, b"f", b"", b"12", b"a")
    c.send(PT.SUBMIT_JOB_EPOCH, b"f", b"", b"soon", b"b")
    c.take()
    wk.can_do(b"f")
    assert [wk.grab().args[2] for _ in range(2)] == [b"a", b"b"]


def test_future_epoch_jobs_never_hide_ready_jobs(w: World) -> None:
    c, wk = w.end(), w.end()
    c.send(PT.SUBMIT_JOB_EPOCH, b"f", b"", str(int(T0) + 3600).encode(), b"later")
    c.take()
    ready_low = c.submit(b"f", ptype=PT.SUBMIT_JOB_LOW_BG)
    wk.can_do(b"f")
    wk.send(PT.PRE_SLEEP)
    assert wk.take() == [res(PT.NOOP)]
    assert wk.grab_handle() == ready_low
    assert wk.grab() == res(PT.NO_JOB)


def test_cancelled_epoch_job_does_not_come_back(w: World) -> None:
    c, wk = w.end(), w.end()
    c.send(PT.SUBMIT_JOB_EPOCH, b"f", b"", str(int(T0) + 10).encode(), b"x")
    (created,) = c.take()
    assert w.m.cancel(created.args[0])
    assert w.status(b"f") == (0, 0, 0)
    w.m.tick(T0 + 20)
    wk.can_do(b"f")
    w.clock.now = T0 + 20
    assert wk.grab() == res(PT.NO_JOB)


def test_submit_job_sched_is_accepted_and_runs_at_next_matching_minute(w: World) -> None:
    c, wk = w.end(), w.end()
    c.send(PT.SUBMIT_JOB_SCHED, b"f", b"", b"", b"", b"", b"", b"", b"cron")
    (created,) = c.take()
    assert created.type == PT.JOB_CREATED
    at = next_cron_time((b"",) * 5, T0)
    assert at is not None and T0 < at <= T0 + 60 and at % 60 == 0
    wk.can_do(b"f")
    assert wk.grab() == res(PT.NO_JOB)
    w.m.tick(at)
    w.clock.now = at
    assert wk.grab() == res(PT.JOB_ASSIGN, created.args[0], b"f", b"cron")


def test_next_cron_time_matches_fields() -> None:
    now = time.mktime((2024, 3, 10, 12, 30, 15, 0, 0, -1))
    at = next_cron_time((b"5", b"14", b"", b"", b""), now)
    assert at is not None
    tm = time.localtime(at)
    assert (tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec) == (10, 14, 5, 0)
    assert next_cron_time((b"x", b"", b"", b"", b""), now) is None


# ---------------------------------------------------------------- CAN_DO_TIMEOUT


def test_can_do_timeout_fails_the_job(w: World) -> None:
    # decisions.md "Job life": on expiry the job fails (as PROTOCOL and gearmand 1.0.x).
    c, wk, wk2 = w.end(), w.end(), w.end()
    h = c.submit(b"f")
    wk.send(PT.CAN_DO_TIMEOUT, b"f", b"3000")
    wk.grab()
    w.m.tick(T0 + 2.9)
    assert w.status(b"f") == (1, 1, 1)
    assert c.take() == []
    w.m.tick(T0 + 3.0)
    assert c.take() == [res(PT.WORK_FAIL, h)]
    assert w.status(b"f") == (0, 0, 1)
    assert w.m.jobs == {}
    assert w.m.stats[b"f"].timed_out == 1 and w.m.stats[b"f"].failed == 1
    w.clock.now = T0 + 3.0
    wk.send(PT.WORK_COMPLETE, h, b"late")
    assert wk.take() == [res(PT.ERROR, b"JOB_NOT_FOUND", b"Job given in work result not found")]
    wk2.can_do(b"f")
    assert wk2.grab().type == PT.NO_JOB


def test_can_do_timeout_below_one_second_is_raised(w: World) -> None:
    c, wk = w.end(), w.end()
    h = c.submit(b"f")
    wk.send(PT.CAN_DO_TIMEOUT, b"f", b"1")
    wk.grab()
    w.m.tick(T0 + 0.5)
    assert w.status(b"f") == (1, 1, 1)
    w.m.tick(T0 + 1.0)
    assert c.take() == [res(PT.WORK_FAIL, h)]


def test_can_do_timeout_cancelled_when_job_completes(w: World) -> None:
    c, wk = w.end(), w.end()
    h = c.submit(b"f", b"u")
    wk.send(PT.CAN_DO_TIMEOUT, b"f", b"1000")
    wk.grab()
    wk.send(PT.WORK_COMPLETE, h, b"r")
    assert c.take() == [res(PT.WORK_COMPLETE, h, b"r")]
    w.m.tick(T0 + 5)
    assert w.status(b"f") == (0, 0, 1)  # no ghost job
    assert w.m.jobs == {}


def test_can_do_timeout_background_without_policy_is_dropped(w: World) -> None:
    c, wk = w.end(), w.end()
    c.submit(b"f", ptype=PT.SUBMIT_JOB_BG)
    wk.send(PT.CAN_DO_TIMEOUT, b"f", b"1000")
    wk.grab()
    w.m.tick(T0 + 1)
    assert w.m.jobs == {}
    assert w.status(b"f") == (0, 0, 1)
    assert len(w.m.dead_letters) == 0


def test_can_do_timeout_stale_timer_after_requeue(w: World) -> None:
    # A lost worker still re-queues; the first assignment's timer is then stale.
    c, wk, wk2 = w.end(), w.end(), w.end()
    h = c.submit(b"f")
    wk.send(PT.CAN_DO_TIMEOUT, b"f", b"2000")
    wk.grab()
    w.clock.now = T0 + 1
    wk.close()
    wk2.send(PT.CAN_DO_TIMEOUT, b"f", b"2000")
    assert wk2.grab_handle() == h  # timer armed to T0 + 3
    w.m.tick(T0 + 2)
    assert w.status(b"f") == (1, 1, 1)
    w.m.tick(T0 + 3)
    assert c.take() == [res(PT.WORK_FAIL, h)]


def test_can_do_timeout_non_numeric_means_no_timeout(w: World) -> None:
    c, wk = w.end(), w.end()
    c.submit(b"f")
    wk.send(PT.CAN_DO_TIMEOUT, b"f", b"abc")
    wk.grab()
    w.m.tick(T0 + 10_000)
    assert w.status(b"f") == (1, 1, 1)


# ---------------------------------------------------------------- client disconnect


def test_queued_job_whose_last_client_left_is_removed(w: World) -> None:
    a, b, wk = w.end(), w.end(), w.end()
    h = a.submit(b"f", b"u")
    a.close()
    assert w.status(b"f") == (0, 0, 0)
    h2 = b.submit(b"f", b"u")
    assert h2 != h
    wk.can_do(b"f")
    assert wk.grab_handle() == h2
    wk.send(PT.WORK_COMPLETE, h2, b"r")
    assert b.take() == [res(PT.WORK_COMPLETE, h2, b"r")]


def test_running_job_whose_last_client_left_is_discarded(w: World) -> None:
    a, b, wk = w.end(), w.end(), w.end()
    h = a.submit(b"f", b"u")
    wk.can_do(b"f")
    wk.grab()
    a.close()
    h2 = b.submit(b"f", b"u")
    assert h2 != h  # a fresh job, never the doomed one
    wk.send(PT.WORK_DATA, h, b"d")
    wk.send(PT.WORK_COMPLETE, h, b"r")
    assert wk.take() == []  # accepted without error
    assert b.take() == []
    assert a.take() == []
    assert wk.grab_handle() == h2
    wk.send(PT.WORK_COMPLETE, h2, b"r2")
    assert b.take() == [res(PT.WORK_COMPLETE, h2, b"r2")]


def test_running_job_without_clients_is_not_requeued_on_worker_loss(w: World) -> None:
    a, wk = w.end(), w.end()
    a.submit(b"f")
    wk.can_do(b"f")
    wk.grab()
    a.close()
    wk.close()
    assert w.status(b"f") == (0, 0, 0)
    assert w.m.jobs == {}


def test_many_abandoned_jobs_do_not_lose_live_ones(w: World) -> None:
    """Over 64 abandoned entries trigger a queue compaction; live jobs must survive it."""
    keep, wk = w.end(), w.end()
    first = keep.submit(b"f", b"", b"first")
    leavers = [w.end() for _ in range(100)]
    for c in leavers:
        c.submit(b"f")
    last = keep.submit(b"f", b"", b"last")
    for c in leavers:
        c.close()
    assert w.status(b"f") == (2, 0, 0)
    wk.can_do(b"f")
    assert [wk.grab_handle(), wk.grab_handle()] == [first, last]
    assert wk.grab() == res(PT.NO_JOB)
    wk.send(PT.PRE_SLEEP)
    assert wk.take() == []  # no phantom work: no NOOP busy loop


# ---------------------------------------------------------------- cancel


def test_cancel_queued_job(w: World) -> None:
    c, wk = w.end(), w.end()
    h = c.submit(b"f", b"u")
    assert w.m.cancel(h)
    assert c.take() == [res(PT.WORK_FAIL, h)]
    assert w.status(b"f") == (0, 0, 0)
    wk.can_do(b"f")
    assert wk.grab() == res(PT.NO_JOB)
    assert c.submit(b"f", b"u") != h
    assert not w.m.cancel(b"H:test:999")


def test_cancel_running_job(w: World) -> None:
    c, wk = w.end(), w.end()
    h = c.submit(b"f", b"u")
    wk.can_do(b"f")
    wk.grab()
    assert w.m.cancel(h)
    assert c.take() == [res(PT.WORK_FAIL, h)]
    c.send(PT.GET_STATUS, h)
    assert c.take() == [res(PT.STATUS_RES, h, b"0", b"0", b"0", b"0")]
    h2 = c.submit(b"f", b"u")
    assert h2 != h
    wk.send(PT.WORK_STATUS, h, b"1", b"2")
    wk.send(PT.WORK_COMPLETE, h, b"r")
    assert wk.take() == []  # discarded without error
    assert c.take() == []
    assert w.status(b"f") == (1, 0, 1)


def test_cancel_running_job_then_worker_lost_does_not_requeue(w: World) -> None:
    c, wk = w.end(), w.end()
    h = c.submit(b"f", ptype=PT.SUBMIT_JOB_BG)
    wk.can_do(b"f")
    wk.grab()
    w.m.cancel(h)
    wk.close()
    assert w.status(b"f") == (0, 0, 0)


# ---------------------------------------------------------------- maxqueue


def test_maxqueue_rejects_new_jobs_but_coalescing_succeeds(w: World) -> None:
    c = w.end()
    fn = w.m.function(b"f")
    fn.maxqueue = [0, 2, 0]
    h = c.submit(b"f", b"u")
    c.submit(b"f")
    c.send(PT.SUBMIT_JOB, b"f", b"", b"x")
    assert c.take() == [res(PT.ERROR, b"QUEUE_ERROR", b"Job queue is full")]
    assert c.submit(b"f", b"u") == h  # coalescing still works when full
    # HIGH has no limit here
    c.submit(b"f", ptype=PT.SUBMIT_JOB_HIGH)
    # the total counts every priority, so NORMAL stays full
    c.send(PT.SUBMIT_JOB_BG, b"f", b"", b"x")
    assert c.take() == [res(PT.ERROR, b"QUEUE_ERROR", b"Job queue is full")]
    assert w.status(b"f") == (3, 0, 0)


def test_maxqueue_counts_running_jobs(w: World) -> None:
    c, wk = w.end(), w.end()
    w.m.function(b"f").maxqueue = [1, 1, 1]
    c.submit(b"f")
    wk.can_do(b"f")
    h = wk.grab_handle()
    c.send(PT.SUBMIT_JOB, b"f", b"", b"x")
    assert c.take() == [res(PT.ERROR, b"QUEUE_ERROR", b"Job queue is full")]
    wk.send(PT.WORK_COMPLETE, h, b"")
    c.take()
    c.submit(b"f")


# ---------------------------------------------------------------- functions


def test_drop_function(w: World) -> None:
    c, wk = w.end(), w.end()
    w.m.function(b"Empty")
    assert w.m.drop_function(b"empty") is None
    assert b"Empty" not in w.m.functions
    c.submit(b"q")
    assert w.m.drop_function(b"q") == "there are still queued jobs"
    wk.can_do(b"busy")
    assert w.m.drop_function(b"busy") == \
        "there are still connected workers or executing clients"
    assert w.m.drop_function(b"nothere") == "function not found"


def test_get_status_unique_finds_the_fresh_job_not_the_dead_one(w: World) -> None:
    a, b, wk, asker = w.end(), w.end(), w.end(), w.end()
    h = a.submit(b"f", b"u")
    wk.can_do(b"f")
    wk.grab()
    assert w.m.cancel(h)  # running, cancelled: its worker is still busy with it
    b.submit(b"f", b"u")
    asker.send(PT.GET_STATUS_UNIQUE, b"u")
    assert asker.take() == [res(PT.STATUS_RES_UNIQUE, b"u", b"1", b"0", b"0", b"0", b"1")]
    c, wk2 = w.end(), w.end()
    h3 = c.submit(b"g", b"v")
    wk2.can_do(b"g")
    wk2.grab()
    c.close()  # running job abandoned by its only client
    d = w.end()
    d.submit(b"g", b"v")
    asker.send(PT.GET_STATUS_UNIQUE, b"v")
    assert asker.take() == [res(PT.STATUS_RES_UNIQUE, b"v", b"1", b"0", b"0", b"0", b"1")]
    assert h3


# ---------------------------------------------------------------- error replies (decisions.md)


def test_over_long_handle_in_get_status_gets_an_error(w: World) -> None:
    c = w.end()
    c.send(PT.GET_STATUS, b"H" * 64)
    (reply,) = c.take()
    assert reply.type == PT.ERROR and reply.args[0] == b"ARGUMENT_TOO_LARGE"


def test_over_long_unique_in_get_status_unique_gets_an_error(w: World) -> None:
    c = w.end()
    c.send(PT.GET_STATUS_UNIQUE, b"u" * 65)
    (reply,) = c.take()
    assert reply.type == PT.ERROR and reply.args[0] == b"ARGUMENT_TOO_LARGE"


def test_over_long_timeout_string_gets_an_error(w: World) -> None:
    c = w.end()
    c.send(PT.CAN_DO_TIMEOUT, b"f", b"1" * 21)
    (reply,) = c.take()
    assert reply.type == PT.ERROR
    assert c.conn.abilities == {}


def test_epoch_overflow_gets_an_error(w: World) -> None:
    c = w.end()
    c.send(PT.SUBMIT_JOB_EPOCH, b"f", b"", b"9" * 30, b"x")
    (reply,) = c.take()
    assert reply.type == PT.ERROR
    assert w.m.jobs == {}


def test_sched_with_bad_field_gets_an_error(w: World) -> None:
    c = w.end()
    c.send(PT.SUBMIT_JOB_SCHED, b"f", b"", b"every", b"", b"", b"", b"", b"x")
    (reply,) = c.take()
    assert reply.type == PT.ERROR
    assert w.m.jobs == {}


# ---------------------------------------------------------------- odds and ends


def test_submit_reduce_job_background(w: World) -> None:
    c, wk = w.end(), w.end()
    c.send(PT.SUBMIT_REDUCE_JOB_BACKGROUND, b"f", b"", b"red", b"", b"data")
    (created,) = c.take()
    assert created.type == PT.JOB_CREATED
    c.close()  # a bg job outlives its submitter
    wk.can_do(b"f")
    assert wk.grab(PT.GRAB_JOB_ALL) == res(PT.JOB_ASSIGN_ALL, created.args[0], b"f", b"",
                                           b"red", b"data")


def test_work_exception_ends_a_bg_job(w: World) -> None:
    c, wk = w.end(), w.end()
    h = c.submit(b"f", ptype=PT.SUBMIT_JOB_BG)
    wk.can_do(b"f")
    wk.grab()
    wk.send(PT.WORK_EXCEPTION, h, b"boom")
    assert wk.take() == [] and c.take() == []
    assert w.status(b"f") == (0, 0, 1)


def test_worker_requests_have_no_reply(w: World) -> None:
    wk = w.end()
    wk.send(PT.CAN_DO, b"f")
    wk.send(PT.CAN_DO_TIMEOUT, b"g", b"5000")
    wk.send(PT.CANT_DO, b"g")
    wk.send(PT.CANT_DO, b"never-registered")
    wk.send(PT.RESET_ABILITIES)
    wk.send(PT.PRE_SLEEP)
    assert wk.take() == []


def test_several_epoch_jobs_due_together_send_one_noop(w: World) -> None:
    c, wk = w.end(), w.end()
    for _ in range(3):
        c.send(PT.SUBMIT_JOB_EPOCH, b"f", b"", str(int(T0) + 5).encode(), b"x")
    assert [p.type for p in c.take()] == [PT.JOB_CREATED] * 3
    wk.can_do(b"f")
    wk.send(PT.PRE_SLEEP)
    w.m.tick(T0 + 5)
    assert wk.take() == [res(PT.NOOP)]
    assert wk.grab().type is PT.JOB_ASSIGN
    assert w.m.next_deadline() is None


def test_fg_client_on_waiting_epoch_job(w: World) -> None:
    a, b, wk = w.end(), w.end(), w.end()
    a.send(PT.SUBMIT_JOB_EPOCH, b"f", b"u", str(int(T0) + 5).encode(), b"x")
    (created,) = a.take()
    h = created.args[0]
    assert b.submit(b"f", b"u") == h
    b.close()  # the epoch job is background: it stays
    assert w.status(b"f") == (1, 0, 0)
    c = w.end()
    assert c.submit(b"f", b"u") == h
    w.m.tick(T0 + 5)
    w.clock.now = T0 + 5
    wk.can_do(b"f")
    assert wk.grab_handle() == h
    wk.send(PT.WORK_COMPLETE, h, b"r")
    assert c.take() == [res(PT.WORK_COMPLETE, h, b"r")]


# ---------------------------------------------------------------- review regressions


@pytest.mark.parametrize("ptype", [PT.GET_STATUS, PT.GET_STATUS_UNIQUE])
def test_status_query_with_nul_is_an_error_not_a_crash(w: World, ptype: PacketType) -> None:
    c = w.end()
    c.send(ptype, b"a\0b")
    (reply,) = c.take()
    assert reply.type is PT.ERROR and reply.args[0] == b"INVALID_ARGUMENT"


def test_huge_epoch_is_an_error_not_a_crash(w: World) -> None:
    c = w.end()
    c.send(PT.SUBMIT_JOB_EPOCH, b"f", b"", b"9" * 5000, b"x")
    (reply,) = c.take()
    assert reply.type is PT.ERROR


@pytest.mark.parametrize("fields", [
    (b"9" * 5000, b"", b"", b"", b""),   # not a number int() takes
    (b"99", b"", b"", b"", b""),         # minute out of range
    (b"", b"", b"31", b"2", b""),        # 31 February never comes
    (b"", b"", b"", b"13", b""),         # no 13th month
])
def test_impossible_schedule_is_refused_quickly(w: World, fields: tuple[bytes, ...]) -> None:
    import sys
    from types import FrameType
    from typing import Any

    c = w.end()
    # One packet must not stall the server: count the Python lines run (an operation
    # count, not a clock). A day-by-day search over four years is a few thousand; a
    # minute-by-minute one would be millions.
    steps = 0

    def count(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal steps
        steps += 1
        return count

    previous = sys.gettrace()
    sys.settrace(count)
    try:
        for _ in range(20):
            c.send(PT.SUBMIT_JOB_SCHED, b"f", b"", *fields, b"x")
    finally:
        sys.settrace(previous)
    assert steps < 20 * 50_000, steps
    replies = c.take()
    assert [r.type for r in replies] == [PT.ERROR] * 20


def test_schedule_finds_next_matching_minute() -> None:
    now = time.mktime((2026, 11, 27, 10, 30, 15, 0, 0, -1))
    # Every field empty: the next minute.
    assert next_cron_time((b"",) * 5, now) == time.mktime((2026, 11, 27, 10, 31, 0, 0, 0, -1))
    # 09:05 has passed today: tomorrow.
    assert next_cron_time((b"5", b"9", b"", b"", b""), now) == time.mktime(
        (2026, 11, 28, 9, 5, 0, 0, 0, -1))
    # 29 February: the next leap year.
    assert next_cron_time((b"0", b"0", b"29", b"2", b""), now) == time.mktime(
        (2028, 2, 29, 0, 0, 0, 0, 0, -1))
    # Sunday (0) at noon: 2026-11-29 is a Sunday.
    assert next_cron_time((b"0", b"12", b"", b"", b"0"), now) == time.mktime(
        (2026, 11, 29, 12, 0, 0, 0, 0, -1))


def test_work_status_numbers_are_stored_as_numbers(w: World) -> None:
    c, wk = w.end(), w.end()
    h = c.submit(b"f", b"u1")
    wk.can_do(b"f")
    wk.grab_handle()
    wk.send(PT.WORK_STATUS, h, b"3abc", b"4\0x")
    assert c.take() == [res(PT.WORK_STATUS, h, b"3abc", b"4\0x")]  # forwarded as sent
    c.send(PT.GET_STATUS, h)
    c.send(PT.GET_STATUS_UNIQUE, b"u1")
    assert c.take() == [res(PT.STATUS_RES, h, b"1", b"1", b"3", b"4"),
                        res(PT.STATUS_RES_UNIQUE, b"u1", b"1", b"1", b"3", b"4", b"1")]


class FakeStore:
    """Plays persistence (a ``JobStore``): records the jobs waiting for a commit, and
    ends each commit when the test says so."""

    def __init__(self, w: World) -> None:
        self.w = w
        self.pending: list[Job] = []
        self.forgotten: list[str] = []
        w.m.attach_store(self)

    def persist(self, job: Job) -> None:
        assert job.store_key is not None
        self.pending.append(job)

    def forget(self, key: str) -> None:
        self.forgotten.append(key)

    def commit(self, ok: bool = True) -> Job:
        """End the oldest pending commit."""
        job = self.pending.pop(0)
        self.w.m.persisted(job, ok, self.w.clock.now)
        return job


def queue_error() -> Packet:
    return res(PT.ERROR, b"QUEUE_ERROR", b"QUEUE_ERROR")


def test_background_job_is_acknowledged_once_committed(w: World) -> None:
    store = FakeStore(w)
    c, wk = w.end(), w.end()
    c.send(PT.SUBMIT_JOB_BG, b"f", b"", b"x")
    assert c.take() == []  # no JOB_CREATED before the commit
    wk.can_do(b"f")
    assert wk.grab().type is PT.NO_JOB  # not queued before the commit either
    job = store.commit()
    assert c.take() == [res(PT.JOB_CREATED, job.handle)]
    assert wk.grab_handle() == job.handle


def test_replies_after_a_pending_submit_wait_behind_its_acknowledgement(w: World) -> None:
    store = FakeStore(w)
    c = w.end()
    c.send(PT.SUBMIT_JOB_BG, b"f", b"", b"x")
    c.send(PT.ECHO_REQ, b"after")
    assert c.take() == []
    job = store.commit()
    assert c.take() == [res(PT.JOB_CREATED, job.handle), res(PT.ECHO_RES, b"after")]


@pytest.mark.parametrize("joiner", [PT.SUBMIT_JOB_BG, PT.SUBMIT_JOB])
def test_submit_joining_a_job_being_committed_waits_for_the_commit(
        w: World, joiner: PacketType) -> None:
    """Issue 12: B joined A's job while A's commit was pending, was told JOB_CREATED at
    once, then the commit failed and the job B was told exists was gone."""
    store = FakeStore(w)
    a, b = w.end(), w.end()
    a.send(PT.SUBMIT_JOB_BG, b"f", b"u", b"x")
    b.send(joiner, b"f", b"u", b"x")
    assert a.take() == [] and b.take() == []  # nobody is told before the commit
    store.commit(ok=False)
    assert a.take() == [queue_error()]
    assert b.take() == [queue_error()]  # never JOB_CREATED, so no WORK_FAIL either
    assert not w.m.jobs and not w.m.unique_index
    assert w.status(b"f") == (0, 0, 0)
    # A new submit of the same unique makes a new job.
    a.send(PT.SUBMIT_JOB_BG, b"f", b"u", b"x")
    job = store.commit()
    assert a.take() == [res(PT.JOB_CREATED, job.handle)]


@pytest.mark.parametrize("joiner", [PT.SUBMIT_JOB_BG, PT.SUBMIT_JOB])
def test_submit_joining_a_job_being_committed_hears_the_commit(
        w: World, joiner: PacketType) -> None:
    store = FakeStore(w)
    a, b, wk = w.end(), w.end(), w.end()
    a.send(PT.SUBMIT_JOB_BG, b"f", b"u", b"x")
    b.send(joiner, b"f", b"u", b"x")
    job = store.commit()
    assert a.take() == [res(PT.JOB_CREATED, job.handle)]
    assert b.take() == [res(PT.JOB_CREATED, job.handle)]
    assert len(store.pending) == 0  # one job, stored once
    key = job.store_key
    wk.can_do(b"f")
    assert wk.grab_handle() == job.handle
    wk.send(PT.WORK_COMPLETE, job.handle, b"done")
    expected = [res(PT.WORK_COMPLETE, job.handle, b"done")] if joiner is PT.SUBMIT_JOB else []
    assert b.take() == expected
    assert store.forgotten == [key]


def test_background_submit_joining_a_foreground_job_stores_it(w: World) -> None:
    """Issue 12: a background submit that joined a queued foreground job was
    acknowledged but never stored, so a crash lost a job its submitter was promised."""
    store = FakeStore(w)
    fg, bg, wk = w.end(), w.end(), w.end()
    h = fg.submit(b"f", b"u")
    assert store.pending == []  # foreground jobs are not stored
    bg.send(PT.SUBMIT_JOB_BG, b"f", b"u", b"x")
    assert bg.take() == []  # stored first
    job = store.commit()
    key = job.store_key
    assert job.handle == h and key is not None
    assert bg.take() == [res(PT.JOB_CREATED, h)]
    # The foreground client leaves: the job must still run (it is background now).
    fg.close()
    wk.can_do(b"f")
    assert wk.grab_handle() == h
    wk.send(PT.WORK_COMPLETE, h, b"")
    assert store.forgotten == [key]


def test_failed_store_of_a_joined_foreground_job_leaves_it_foreground(w: World) -> None:
    store = FakeStore(w)
    fg, bg, wk = w.end(), w.end(), w.end()
    h = fg.submit(b"f", b"u")
    bg.send(PT.SUBMIT_JOB_BG, b"f", b"u", b"x")
    store.commit(ok=False)
    assert bg.take() == [queue_error()]
    job = w.m.jobs[h]
    assert not job.background and job.store_key is None
    wk.can_do(b"f")
    assert wk.grab_handle() == h
    wk.send(PT.WORK_COMPLETE, h, b"r")
    assert fg.take() == [res(PT.WORK_COMPLETE, h, b"r")]


def test_failed_store_of_a_joined_job_nobody_waits_for_drops_it(w: World) -> None:
    store = FakeStore(w)
    fg, bg = w.end(), w.end()
    fg.submit(b"f", b"u")
    bg.send(PT.SUBMIT_JOB_BG, b"f", b"u", b"x")
    fg.close()  # the job stays: it is background while its store is pending
    assert w.status(b"f") == (1, 0, 0)
    store.commit(ok=False)
    assert bg.take() == [queue_error()]
    assert w.status(b"f") == (0, 0, 0) and not w.m.jobs


def test_drop_function_refused_while_a_job_waits_for_the_store(w: World) -> None:
    store = FakeStore(w)
    bg = w.end()
    bg.send(PT.SUBMIT_JOB_BG, b"f", b"", b"x")
    assert w.m.drop_function(b"f") == "there are still queued jobs"
    store.commit()
    wk = w.end()
    wk.can_do(b"f")
    assert wk.grab().type is PT.JOB_ASSIGN


def test_maxqueue_counts_jobs_waiting_for_the_store(w: World) -> None:
    store = FakeStore(w)
    w.m.function(b"f").maxqueue = [1, 1, 1]
    c = w.end()
    c.send(PT.SUBMIT_JOB_BG, b"f", b"", b"one")
    c.send(PT.SUBMIT_JOB_BG, b"f", b"", b"two")
    assert c.take() == []  # the refusal waits behind the first acknowledgement
    job = store.commit()
    assert c.take() == [res(PT.JOB_CREATED, job.handle),
                        res(PT.ERROR, b"QUEUE_ERROR", b"Job queue is full")]


def test_finished_jobs_are_not_kept_alive_by_their_timeout(w: World) -> None:
    c, wk = w.end(), w.end()
    wk.send(PT.CAN_DO_TIMEOUT, b"f", b"3600000")
    for _ in range(10):
        h = c.submit(b"f", data=b"x" * 1000, ptype=PT.SUBMIT_JOB_BG)
        wk.grab_handle()
        wk.send(PT.WORK_COMPLETE, h, b"")
    assert not w.m.jobs
    # The timers are still pending, but they hold no job (nor its data).
    assert len(w.m._timeouts) == 10
    assert all(not isinstance(part, Job) for entry in w.m._timeouts for part in entry)


# ---------------------------------------------------------------- abuse (issue 12)


def test_status_by_unique_does_not_scan_every_function(w: World) -> None:
    """100,000 CAN_DO names then GET_STATUS_UNIQUE: each query used to scan every
    function. The index answers from the unique alone (and picks the oldest job)."""
    wk, c = w.end(), w.end()
    for i in range(2000):
        wk.send(PT.CAN_DO, b"fn%d" % i)
    h1 = c.submit(b"fn1999", b"u")
    h2 = c.submit(b"fn5", b"u")
    calls = 0
    real_get = dict.get

    class Counting(dict[tuple[bytes, ...], Job]):
        def get(self, key: tuple[bytes, ...], default: object = None) -> object:  # type: ignore[override]
            nonlocal calls
            calls += 1
            return real_get(self, key, default)

    w.m.unique_index = Counting(w.m.unique_index)
    c.send(PT.GET_STATUS_UNIQUE, b"u")
    assert c.take() == [res(PT.STATUS_RES_UNIQUE, b"u", b"1", b"0", b"0", b"0", b"1")]
    assert calls == 0  # no per-function look-ups
    assert w.m.job_by_unique(b"u") is w.m.jobs[h1]  # the oldest of the two
    wk.take()  # the NOOPs of the two submits
    wk.send(PT.GRAB_JOB)
    (assign,) = wk.take()
    wk.send(PT.WORK_COMPLETE, assign.args[0], b"")
    remaining = h2 if assign.args[0] == h1 else h1
    assert w.m.job_by_unique(b"u") is w.m.jobs[remaining]
    # Built at the first query, then kept up to date by submits and endings.
    c.take()  # the WORK_COMPLETE
    h3 = c.submit(b"fn7", b"v")
    c.send(PT.GET_STATUS_UNIQUE, b"v")
    assert c.take()[0].args[:2] == (b"v", b"1")
    assert w.m.job_by_unique(b"v") is w.m.jobs[h3]
    c.send(PT.SUBMIT_JOB, b"fn1999", b"", b"x")  # no unique: not indexed
    assert set(w.m.by_unique or {}) == {b"u", b"v"}


def test_functions_nothing_refers_to_are_freed(w: World) -> None:
    wk, c = w.end(), w.end()
    for i in range(100):
        wk.send(PT.CAN_DO, b"fn%d" % i)
    assert len(w.m.functions) == 100
    wk.send(PT.RESET_ABILITIES)
    assert w.m.functions == {}
    h = c.submit(b"queued", data=b"x", ptype=PT.SUBMIT_JOB_BG)
    wk.can_do(b"queued", b"other")
    wk.close()  # a job still refers to "queued"; nothing to "other"
    assert set(w.m.functions) == {b"queued"}
    wk2 = w.end()
    wk2.can_do(b"queued")
    assert wk2.grab_handle() == h
    wk2.send(PT.WORK_COMPLETE, h, b"")
    assert set(w.m.functions) == {b"queued"}  # its worker is still there
    wk2.send(PT.CANT_DO, b"queued")
    assert w.m.functions == {}


def test_functions_are_bounded_per_worker_and_in_total() -> None:
    w = World(limits=Limits(max_functions=5, max_worker_functions=3))
    wk, other, c = w.end(), w.end(), w.end()
    wk.can_do(b"a", b"b", b"c")
    assert wk.take() == []
    wk.send(PT.CAN_DO, b"d")
    assert wk.take() == [res(PT.ERROR, b"TOO_MANY_FUNCTIONS",
                             b"This connection can do as many functions as allowed")]
    wk.send(PT.CAN_DO, b"a")  # one it has already is fine
    assert wk.take() == []
    other.can_do(b"d", b"e")
    other.send(PT.CAN_DO, b"f")
    assert other.take() == [res(PT.ERROR, b"TOO_MANY_FUNCTIONS",
                                b"The server has as many functions as it allows")]
    c.send(PT.SUBMIT_JOB, b"g", b"", b"x")
    assert [p.args[0] for p in c.take()] == [b"TOO_MANY_FUNCTIONS"]
    c.submit(b"a")  # existing functions still take jobs
    assert set(w.m.functions) == {b"a", b"b", b"c", b"d", b"e"}


@pytest.mark.parametrize("ptype", [PT.CAN_DO, PT.SUBMIT_JOB, PT.SUBMIT_JOB_BG, PT.SET_CLIENT_ID])
def test_names_are_bounded(ptype: PacketType) -> None:
    """A 32 MiB function name was accepted, and every status reply then carried it."""
    w = World(limits=Limits(max_name=512))
    c = w.end()
    ok, long = b"n" * 512, b"n" * 513
    args = {PT.CAN_DO: [], PT.SET_CLIENT_ID: []}.get(ptype, [b"", b"data"])
    c.send(ptype, ok, *args)
    replies = c.take()
    assert all(p.type is not PT.ERROR for p in replies), replies
    c.send(ptype, long, *args)
    what = b"Client id" if ptype is PT.SET_CLIENT_ID else b"Function name"
    assert c.take() == [res(PT.ERROR, b"ARGUMENT_TOO_LARGE", what + b" too long")]
    assert long not in w.m.functions


@pytest.mark.parametrize("name", [b"a\nb", b"fn\n.\nforged\t9\t9\t9", b"cr\rhere", b"\x7f",
                                  b"\x1b[31m", b"nul\x00"])
def test_names_with_control_characters_are_refused(w: World, name: bytes) -> None:
    """A name holding "\\n.\\n" forged or cut short the admin replies (status, workers)."""
    wk, c = w.end(), w.end()
    wk.send(PT.CAN_DO, name)
    assert wk.take() == [res(PT.ERROR, b"INVALID_ARGUMENT",
                             b"Function name contains control characters")]
    c.send(PT.SUBMIT_JOB_BG, name, b"", b"x")
    assert [p.args[0] for p in c.take()] == [b"INVALID_ARGUMENT"]
    c.send(PT.SET_CLIENT_ID, name)
    assert c.take() == [res(PT.ERROR, b"INVALID_ARGUMENT",
                            b"Client id contains control characters")]
    assert w.m.functions == {} and c.conn.client_id == b"-"
    wk.send(PT.CAN_DO, b"spaces and \xff bytes are fine")
    wk.send(PT.CAN_DO, b"prefix\tfunction")  # Perl Gearman::Worker's prefix form
    assert wk.take() == []


def test_a_job_cancelled_while_its_commit_is_pending_frees_its_function(w: World) -> None:
    store = FakeStore(w)
    c = w.end()
    c.send(PT.SUBMIT_JOB_BG, b"f", b"", b"x")
    (job,) = store.pending
    assert w.m.cancel(job.handle)
    store.commit()
    assert w.m.functions == {}

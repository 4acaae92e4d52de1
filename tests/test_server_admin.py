"""Admin text replies (spec §3, decisions.md "Admin"), byte for byte, without sockets.

Lines go through ``protocol.parse_admin_line`` and ``server.admin.handle_admin`` against a
real ``Manager`` whose binary clients and workers are fake peers.
"""

from __future__ import annotations

import pytest
from fake_peer import FakePeer

from protocol import Packet, PacketType, parse_admin_line
from server.admin import AdminContext, handle_admin
from server.manager import Conn, Manager

PT = PacketType
NOW = 1_700_000_000.0
INVALID = b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+"


class Admin:
    """A manager, an admin connection, and helpers to drive binary peers."""

    def __init__(self, address: str = "127.0.0.1", *, anywhere: bool = False) -> None:
        self.m = Manager(handle_prefix="H:adm")
        self.shutdowns: list[bool] = []
        self.ctx = AdminContext(manager=self.m, version="9.8.7", verbose="WARNING",
                                pid=4242, shutdown=self.shutdowns.append,
                                admin_from_anywhere=anywhere)
        self.peer = FakePeer()
        self.conn = self.m.connect(self.peer, address)

    def __call__(self, line: bytes) -> bytes:
        assert line.endswith(b"\n")
        return handle_admin(self.ctx, self.conn, parse_admin_line(line[:-1]))

    def peer_conn(self, address: str = "127.0.0.1") -> Conn:
        return self.m.connect(FakePeer(), address)

    def send(self, conn: Conn, ptype: PacketType, *args: bytes) -> list[Packet]:
        peer = conn.peer
        assert isinstance(peer, FakePeer)
        peer.packets.clear()
        self.m.handle_packet(conn, ptype, args, NOW)
        return list(peer.packets)

    def submit(self, conn: Conn, function: bytes, unique: bytes = b"",
               ptype: PacketType = PT.SUBMIT_JOB) -> bytes:
        (reply,) = self.send(conn, ptype, function, unique, b"data")
        assert reply.type == PT.JOB_CREATED
        return reply.args[0]


@pytest.fixture
def adm() -> Admin:
    return Admin()


def test_status_empty(adm: Admin) -> None:
    assert adm(b"status\n") == b".\n"
    assert adm(b"prioritystatus\n") == b".\n"
    assert adm(b"show jobs\n") == b".\n"
    assert adm(b"show unique jobs\n") == b".\n"


def test_status_and_prioritystatus_sorted(adm: Admin) -> None:
    c, wk = adm.peer_conn(), adm.peer_conn()
    for fn in (b"zeta", b"alpha", b"mid"):
        adm.submit(c, fn)
    adm.submit(c, b"alpha", ptype=PT.SUBMIT_JOB_HIGH)
    adm.submit(c, b"alpha", ptype=PT.SUBMIT_JOB_LOW_BG)
    adm.submit(c, b"alpha", ptype=PT.SUBMIT_JOB_LOW)
    adm.send(wk, PT.CAN_DO, b"zeta")
    assert adm.send(wk, PT.GRAB_JOB)[0].type == PT.JOB_ASSIGN
    adm.send(wk, PT.CAN_DO, b"mid")
    assert adm(b"status\n") == b"alpha\t4\t0\t0\nmid\t1\t0\t1\nzeta\t1\t1\t1\n.\n"
    assert adm(b"STATUS\r\n") == adm(b"status\n")
    assert adm(b"prioritystatus\n") == (
        b"alpha\t1\t1\t2\t0\nmid\t0\t1\t0\t1\nzeta\t0\t0\t0\t1\n.\n")


def test_status_counts_epoch_jobs_as_queued_normal(adm: Admin) -> None:
    c = adm.peer_conn()
    (reply,) = adm.send(c, PT.SUBMIT_JOB_EPOCH, b"later", b"", str(int(NOW) + 600).encode(),
                        b"x")
    assert reply.type == PT.JOB_CREATED
    assert adm(b"status\n") == b"later\t1\t0\t0\n.\n"
    assert adm(b"prioritystatus\n") == b"later\t0\t1\t0\t0\n.\n"


def test_workers_lists_every_connection_sorted(adm: Admin) -> None:
    wk = adm.peer_conn("127.0.0.5")
    adm.send(wk, PT.SET_CLIENT_ID, b"worker-1")
    adm.send(wk, PT.CAN_DO, b"rev")
    adm.send(wk, PT.CAN_DO, b"other")
    client = adm.peer_conn("10.1.2.3")
    assert adm(b"workers\n") == (
        f"{adm.conn.id} 127.0.0.1 - :\n".encode()
        + f"{wk.id} 127.0.0.5 worker-1 : other rev\n".encode()
        + f"{client.id} 10.1.2.3 - :\n".encode()
        + b".\n")
    adm.m.disconnect(wk, NOW)
    assert adm(b"workers\n") == (
        f"{adm.conn.id} 127.0.0.1 - :\n{client.id} 10.1.2.3 - :\n.\n".encode())


def test_show_jobs_and_unique_jobs(adm: Admin) -> None:
    c, wk = adm.peer_conn(), adm.peer_conn()
    h1 = adm.submit(c, b"f", b"u1")
    h2 = adm.submit(c, b"f", b"", ptype=PT.SUBMIT_JOB_BG)
    h3 = adm.submit(c, b"g", b"-")
    adm.send(wk, PT.CAN_DO, b"f")
    adm.send(wk, PT.GRAB_JOB)
    adm.m.disconnect(wk, NOW)  # h1 requeued: retries 1
    assert adm(b"show jobs\n") == (
        h1 + b"\t1\t0\t0\n" + h2 + b"\t0\t0\t1\n" + h3 + b"\t0\t0\t0\n.\n")
    assert adm(b"SHOW UNIQUE JOBS\n") == b"u1\n\n-\n.\n"


def test_show_jobs_marks_cancelled_running_job(adm: Admin) -> None:
    c, wk = adm.peer_conn(), adm.peer_conn()
    h = adm.submit(c, b"f")
    adm.send(wk, PT.CAN_DO, b"f")
    adm.send(wk, PT.GRAB_JOB)
    assert adm(b"cancel job " + h + b"\n") == b"OK\r\n"
    assert adm(b"show jobs\n") == h + b"\t0\t1\t0\n.\n"


@pytest.mark.parametrize(("line", "reply"), [
    (b"show\n", b"ERR UNKNOWN_COMMAND Unknown+server+commandshow\r\n"),
    (b"show foo\n", b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"),
    (b"show jobs x\n", b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"),
    (b"frobnicate\n", b"ERR UNKNOWN_COMMAND Unknown+server+commandfrobnicate\r\n"),
    (b"\n", b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n"),
    (b"\r\n", b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n"),
    (b"jobs\n", b"ERR UNKNOWN_COMMAND Unknown+server+commandjobs\r\n"),
    (b"cancel\n", b"ERR UNKNOWN_COMMAND Unknown+server+commandcancel\r\n"),
    (b"cancel job\n", b"ERR UNKNOWN_COMMAND Unknown+server+commandcancel\r\n"),
    (b"cancel job a b\n", b"ERR UNKNOWN_ERROR\r\n"),
    (b"cancel foo X\n", b"ERR UNKNOWN_ERROR\r\n"),
    (b"cancel job H:adm:99\n", b"ERR UNKNOWN_JOB\r\n"),
    (b"create function\n", INVALID + b"create\r\n"),
    (b"create function a b\n", INVALID + b"create\r\n"),
    (b"drop function\n", INVALID + b"drop\r\n"),
    (b"drop function nothere\n", b"ERR function not found\r\n"),
    (b"maxqueue\n", INVALID + b"maxqueue\r\n"),
    (b"getpid\n", b"OK 4242\n"),
    (b"verbose\n", b"OK WARNING\n"),
    (b"version\n", b"OK 9.8.7\n"),
    (b"Version\r\n", b"OK 9.8.7\n"),
])
def test_fixed_replies(adm: Admin, line: bytes, reply: bytes) -> None:
    assert adm(line) == reply


def test_more_than_five_words_is_an_err_line(adm: Admin) -> None:
    reply = adm(b"status a b c d e\n")
    assert reply.startswith(b"ERR ") and reply.endswith(b"\r\n")
    assert reply.count(b"\n") == 1
    assert adm(b"maxqueue f 1 2 3\n") == b"OK\r\n"  # five words are fine
    assert adm(b"status\n") == b".\n"  # and the connection still answers


def test_cancel_job_queued(adm: Admin) -> None:
    c = adm.peer_conn()
    peer = c.peer
    assert isinstance(peer, FakePeer)
    h = adm.submit(c, b"f", b"u")
    assert peer.packets == [Packet.res(PT.JOB_CREATED, h)]
    assert adm(b"cancel job " + h + b"\n") == b"OK\r\n"
    assert peer.packets[-1] == Packet.res(PT.WORK_FAIL, h)
    assert adm(b"status\n") == b".\n"  # nothing refers to f any more: freed
    assert adm(b"show jobs\n") == b".\n"
    assert adm(b"CANCEL JOB " + h + b"\n") == b"ERR UNKNOWN_JOB\r\n"


def test_create_function_with_bare_newline_keeps_whole_name(adm: Admin) -> None:
    assert adm(b"create function newf\n") == b"OK\r\n"
    assert adm(b"create function other\r\n") == b"OK\r\n"
    assert adm(b"status\n") == b"newf\t0\t0\t0\nother\t0\t0\t0\n.\n"


def test_drop_function(adm: Admin) -> None:
    c, wk = adm.peer_conn(), adm.peer_conn()
    adm(b"create function Spare\n")
    assert adm(b"drop function spare\n") == b"OK\r\n"  # compared case-insensitively
    assert adm(b"status\n") == b".\n"
    h = adm.submit(c, b"queued")
    assert adm(b"drop function queued\n") == b"ERR there are still queued jobs\r\n"
    assert adm(b"show jobs\n") == h + b"\t0\t0\t0\n.\n"
    adm.send(wk, PT.CAN_DO, b"queued")
    adm.send(wk, PT.GRAB_JOB)
    adm.send(wk, PT.CANT_DO, b"queued")  # requeued, no workers: still refused
    assert adm(b"drop function queued\n") == b"ERR there are still queued jobs\r\n"
    adm.send(wk, PT.CAN_DO, b"queued")
    adm.send(wk, PT.GRAB_JOB)
    assert adm(b"drop function queued\n") == (
        b"ERR there are still connected workers or executing clients\r\n")
    adm.send(wk, PT.WORK_COMPLETE, h, b"")
    adm.send(wk, PT.RESET_ABILITIES)
    # Nothing refers to it any more: freed already (issue 12), so nothing to drop.
    assert adm(b"status\n") == b".\n"
    assert adm(b"drop function queued\n") == b"ERR function not found\r\n"
    adm(b"create function queued\n")  # one the admin created stays until dropped
    adm.send(wk, PT.CAN_DO, b"queued")
    adm.send(wk, PT.RESET_ABILITIES)
    assert adm(b"status\n") == b"queued\t0\t0\t0\n.\n"
    assert adm(b"drop function queued\n") == b"OK\r\n"
    assert adm(b"status\n") == b".\n"


@pytest.mark.parametrize(("args", "limits"), [
    (b"", [0, 0, 0]),
    (b" 3", [3, 3, 3]),
    (b" 3 4", [3, 4, 0]),
    (b" 3 4 5", [3, 4, 5]),
    (b" -2 4 -1", [0, 4, 0]),
])
def test_maxqueue_variants(adm: Admin, args: bytes, limits: list[int]) -> None:
    adm(b"create function f\n")
    adm.m.functions[b"f"].maxqueue = [9, 9, 9]
    assert adm(b"maxqueue f" + args + b"\n") == b"OK\r\n"
    assert adm.m.functions[b"f"].maxqueue == limits


def test_maxqueue_limits_submissions_per_priority(adm: Admin) -> None:
    c = adm.peer_conn()
    adm(b"create function f\n")
    assert adm(b"maxqueue f 3 1 0\n") == b"OK\r\n"
    adm.submit(c, b"f")  # total 1
    assert adm.send(c, PT.SUBMIT_JOB, b"f", b"", b"x") == [
        Packet.res(PT.ERROR, b"QUEUE_ERROR", b"Job queue is full")]
    adm.submit(c, b"f", ptype=PT.SUBMIT_JOB_HIGH)
    adm.submit(c, b"f", ptype=PT.SUBMIT_JOB_LOW)  # low unlimited
    assert adm.send(c, PT.SUBMIT_JOB_HIGH, b"f", b"", b"x") == [
        Packet.res(PT.ERROR, b"QUEUE_ERROR", b"Job queue is full")]
    assert adm(b"maxqueue f\n") == b"OK\r\n"
    adm.submit(c, b"f")


def test_maxqueue_unknown_function_is_ok_and_not_created(adm: Admin) -> None:
    assert adm(b"maxqueue ghost 5\n") == b"OK\r\n"
    assert adm(b"status\n") == b".\n"


def test_maxqueue_function_name_is_case_sensitive(adm: Admin) -> None:
    adm(b"create function F\n")
    assert adm(b"maxqueue f 5\n") == b"OK\r\n"
    assert adm.m.functions[b"F"].maxqueue == [0, 0, 0]


def test_shutdown_calls_the_callback(adm: Admin) -> None:
    assert adm(b"shutdown\n") == b"OK\r\n"
    assert adm(b"shutdown graceful\n") == b"OK\r\n"
    assert adm.shutdowns == [False, True]
    reply = adm(b"shutdown now please\n")
    assert reply.startswith(b"ERR ")
    assert adm.shutdowns == [False, True]


@pytest.mark.parametrize("line", [
    b"shutdown\n", b"shutdown graceful\n", b"cancel job H:adm:1\n",
    b"drop function f\n", b"maxqueue f 1\n", b"create function g\n",
])
def test_mutating_commands_refused_from_non_loopback(line: bytes) -> None:
    adm = Admin("192.0.2.7")
    c = adm.peer_conn()
    adm(b"status\n")
    adm.m.function(b"f")
    h = adm.submit(c, b"f")
    assert h == b"H:adm:1"
    reply = adm(line)
    assert reply.startswith(b"ERR ") and reply.endswith(b"\r\n")
    assert adm.shutdowns == []
    assert adm.m.functions[b"f"].maxqueue == [0, 0, 0]
    assert b"g" not in adm.m.functions
    assert adm(b"status\n") == b"f\t1\t0\t0\n.\n"  # job still there, f not dropped
    # read-only commands still work from anywhere
    assert adm(b"version\n") == b"OK 9.8.7\n"


def test_mutating_commands_allowed_from_anywhere_when_configured() -> None:
    adm = Admin("192.0.2.7", anywhere=True)
    assert adm(b"create function g\n") == b"OK\r\n"
    assert adm(b"shutdown\n") == b"OK\r\n"
    assert adm.shutdowns == [False]


@pytest.mark.parametrize("address", ["-", "", "localhost", "128.0.0.1", "::2"])
def test_unknown_or_non_loopback_addresses_may_not_mutate(address: str) -> None:
    # Issue 12 item 2: "-" (address unknown, e.g. the peer reset before getpeername) was
    # trusted as loopback, so "shutdown" + an immediate RST stopped the server from anywhere.
    adm = Admin(address)
    assert adm(b"shutdown\n").startswith(b"ERR PERMISSION_DENIED")
    assert adm.shutdowns == []


@pytest.mark.parametrize("address", ["::1", "127.0.0.1", "127.9.9.9", "::ffff:127.0.0.1"])
def test_loopback_addresses_may_mutate(address: str) -> None:
    adm = Admin(address)
    assert adm(b"create function g\n") == b"OK\r\n"

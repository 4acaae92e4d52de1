"""Access rules and tenants (``--acl-file``, server/acl.py, docs/acl.md), without sockets.

A real ``Manager`` with ``Acl`` attached, driven by Gear packets and admin lines from fake
peers; identities are set on the connection as the TLS front-end would set them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from fake_peer import FakePeer

from protocol import Packet, PacketType, parse_admin_line
from server import acl as acl_module
from server.acl import Acl, AclError, parse
from server.admin import AdminContext, handle_admin
from server.events import Events
from server.manager import Conn, Manager

PT = PacketType
NOW = 1_700_000_000.0

RULES = """
[tenants.alpha]
[tenants.beta]
max-queued-jobs = 2
max-queued-bytes = 10

[[rule]]
identity = "CN=root"
register = "*"
submit = "*"
admin-read = true
admin-write = true

[[rule]]
identity = ["CN=alpha-*"]
tenant = "alpha"
register = ["resize", "thumb-*"]
submit = "*"
admin-read = true
admin-write = true

[[rule]]
identity = "CN=beta"
tenant = "beta"
register = "*"
submit = "*"
admin-read = true
admin-write = true

[[rule]]
address = ["10.0.0.0/8", "::1"]
submit = "public-*"
admin-read = true

[[rule]]
address = "192.0.2.1"
register = "*"

[default]
submit = "open"
"""


class World:
    """A manager with access rules, and helpers to drive its connections."""

    def __init__(self, text: str = RULES, path: Path | None = None) -> None:
        self.m = Manager(handle_prefix="H:acl")
        self.acl = Acl(parse(text), path)
        self.m.attach_acl(self.acl)
        self.shutdowns: list[bool] = []
        self.ctx = AdminContext(manager=self.m, version="1", verbose="ERROR", pid=1,
                                shutdown=self.shutdowns.append, acl=self.acl)

    def conn(self, identity: str | None = None, address: str = "-") -> Conn:
        conn = self.m.connect(FakePeer(), address)
        conn.identity = identity
        return conn

    def send(self, conn: Conn, ptype: PacketType, *args: bytes) -> list[Packet]:
        peer = conn.peer
        assert isinstance(peer, FakePeer)
        peer.packets.clear()
        self.m.handle_packet(conn, ptype, args, NOW)
        return list(peer.packets)

    def submit(self, conn: Conn, function: bytes, unique: bytes = b"",
               data: bytes = b"x", ptype: PacketType = PT.SUBMIT_JOB_BG) -> Packet:
        (reply,) = self.send(conn, ptype, function, unique, data)
        return reply

    def admin(self, conn: Conn, line: bytes) -> bytes:
        return handle_admin(self.ctx, conn, parse_admin_line(line))


def denied(packet: Packet) -> bool:
    return packet.type == PT.ERROR and packet.args[0] == b"PERMISSION_DENIED"


# ---------------------------------------------------------------------- the four rights


def test_register_denied_with_error_and_log(caplog: pytest.LogCaptureFixture) -> None:
    w = World()
    worker = w.conn("CN=alpha-1")
    with caplog.at_level(logging.WARNING, logger="server.acl"):
        (reply,) = w.send(worker, PT.CAN_DO, b"encode")
    assert denied(reply)
    assert reply.args[1] == b"no register right for function encode"
    (line,) = [r.getMessage() for r in caplog.records if "PERMISSION_DENIED" in r.getMessage()]
    assert "identity 'CN=alpha-1'" in line and "rule 2" in line and "encode" in line
    # the connection goes on: an allowed function registers, the refused one did not
    assert w.send(worker, PT.CAN_DO, b"thumb-small") == []
    assert w.send(worker, PT.ECHO_REQ, b"hi")[0].args == (b"hi",)
    assert [plain for plain in worker.abilities] == [b"alpha\x1fthumb-small"]
    assert w.admin(w.conn("CN=alpha-2"), b"status") == b"thumb-small\t0\t0\t1\n.\n"


def test_submit_denied_with_error_and_log(caplog: pytest.LogCaptureFixture) -> None:
    w = World()
    client = w.conn(address="10.1.2.3")
    with caplog.at_level(logging.WARNING, logger="server.acl"):
        reply = w.submit(client, b"private", ptype=PT.SUBMIT_JOB)
    assert denied(reply) and reply.args[1] == b"no submit right for function private"
    assert any("10.1.2.3" in r.getMessage() and "rule 4" in r.getMessage()
               for r in caplog.records)
    assert not w.m.jobs and not w.m.functions
    assert w.submit(client, b"public-x").type == PT.JOB_CREATED


def test_admin_read_denied_with_err_and_log(caplog: pytest.LogCaptureFixture) -> None:
    w = World()
    worker = w.conn(address="192.0.2.1")  # may register, nothing else
    with caplog.at_level(logging.WARNING, logger="server.acl"):
        for line in (b"status", b"workers", b"show jobs", b"stats", b"prioritystatus",
                     b"getpid", b"watch"):
            assert w.admin(worker, line) == b"ERR PERMISSION_DENIED no+admin-read+right\r\n"
    assert sum("192.0.2.1" in r.getMessage() for r in caplog.records) == 7
    assert w.admin(worker, b"version") == b"OK 1\n"  # no right needed


def test_admin_write_denied_with_err_and_log(caplog: pytest.LogCaptureFixture) -> None:
    w = World()
    reader = w.conn(address="10.9.9.9")  # admin-read, not admin-write
    handle = w.submit(w.conn(address="10.0.0.1"), b"public-a").args[0]
    with caplog.at_level(logging.WARNING, logger="server.acl"):
        for line in (b"cancel job " + handle, b"drop function public-a",
                     b"maxqueue public-a 1", b"create function g", b"shutdown",
                     b"verbose"):
            assert w.admin(reader, line) == b"ERR PERMISSION_DENIED no+admin-write+right\r\n"
    assert sum("admin-write" in r.getMessage() for r in caplog.records) == 6
    assert handle in w.m.jobs and w.shutdowns == []
    assert w.admin(reader, b"status") == b"public-a\t1\t0\t0\n.\n"


def test_unknown_address_gets_only_the_default() -> None:
    w = World()
    for address in ("-", "internal", "", "10.0.0.0/8"):
        c = w.conn(address=address)
        assert denied(w.submit(c, b"public-x"))
        assert w.submit(c, b"open").type == PT.JOB_CREATED


def test_addresses_cidr_ipv6_and_mapped_ipv4() -> None:
    w = World()
    assert w.submit(w.conn(address="::ffff:10.200.0.1"), b"public-x").type == PT.JOB_CREATED
    assert w.submit(w.conn(address="::1"), b"public-x").type == PT.JOB_CREATED
    assert denied(w.submit(w.conn(address="11.0.0.1"), b"public-x"))


def test_identity_is_matched_by_identity_rules_only() -> None:
    # A peer with a certificate identity is never matched by its address (10.x here).
    w = World()
    c = w.conn("CN=nobody", address="10.0.0.5")
    assert denied(w.submit(c, b"public-x"))
    assert w.submit(c, b"open").type == PT.JOB_CREATED


def test_bad_names_are_refused_before_the_rules() -> None:
    w = World()
    root = w.conn("CN=root")
    for name in (b"alpha\x1fresize", b"a\nb"):
        (reply,) = w.send(root, PT.CAN_DO, name)
        assert reply.args[0] == b"INVALID_ARGUMENT"
        assert w.submit(root, name).args[0] == b"INVALID_ARGUMENT"
        assert w.m.submit_checked(root, name, b"", b"", 1, True, NOW) is None
        (reply,) = w.send(root, PT.SET_CLIENT_ID, name)
        assert reply.args == (b"INVALID_ARGUMENT", b"Client id contains control characters")
        assert w.admin(root, b"create function " + name).startswith(b"ERR INVALID_ARGUMENT")
    assert not w.m.functions and root.client_id == b"-"


# ---------------------------------------------------------------------- tenants


def test_two_tenants_same_function_never_meet() -> None:
    w = World()
    a_client, b_client = w.conn("CN=alpha-c"), w.conn("CN=beta")
    a_worker, b_worker = w.conn("CN=alpha-w"), w.conn("CN=beta")
    for worker in (a_worker, b_worker):
        w.send(worker, PT.CAN_DO, b"resize")
    ha = w.submit(a_client, b"resize", b"u1", b"A").args[0]
    hb = w.submit(b_client, b"resize", b"u1", b"B").args[0]
    assert ha != hb  # same unique, other tenant: no coalescing
    # each worker gets its own tenant's job, under the plain name
    (assign,) = w.send(b_worker, PT.GRAB_JOB_UNIQ)
    assert assign.type == PT.JOB_ASSIGN_UNIQ and assign.args == (hb, b"resize", b"u1", b"B")
    (assign,) = w.send(a_worker, PT.GRAB_JOB)
    assert assign.args == (ha, b"resize", b"A")
    assert w.send(a_worker, PT.GRAB_JOB)[0].type == PT.NO_JOB
    # a same-tenant submit with the same unique joins
    assert w.submit(w.conn("CN=alpha-x"), b"resize", b"u1", b"A").args[0] == ha


def test_status_by_handle_and_unique_stay_in_the_tenant() -> None:
    w = World()
    a, b, root = w.conn("CN=alpha-c"), w.conn("CN=beta"), w.conn("CN=root")
    ha = w.submit(a, b"resize", b"same").args[0]
    for other in (b, root):
        (res,) = w.send(other, PT.GET_STATUS, ha)
        assert res.args == (ha, b"0", b"0", b"0", b"0")
        (res,) = w.send(other, PT.GET_STATUS_UNIQUE, b"same")
        assert res.args[1] == b"0"
    assert w.send(a, PT.GET_STATUS, ha)[0].args[1] == b"1"
    assert w.send(a, PT.GET_STATUS_UNIQUE, b"same")[0].args[1] == b"1"
    hb = w.submit(b, b"resize", b"same").args[0]
    (res,) = w.send(b, PT.GET_STATUS_UNIQUE, b"same")
    assert res.args[:2] == (b"same", b"1")
    # beta's admin cannot cancel alpha's job; alpha's admin can
    assert w.admin(b, b"cancel job " + ha) == b"ERR UNKNOWN_JOB\r\n"
    assert w.admin(a, b"cancel job " + ha) == b"OK\r\n"
    assert hb in w.m.jobs and ha not in w.m.jobs


def test_admin_listings_per_tenant_and_for_all() -> None:
    w = World()
    a, b, root = w.conn("CN=alpha-c"), w.conn("CN=beta"), w.conn("CN=root")
    aw = w.conn("CN=alpha-w")
    w.send(aw, PT.SET_CLIENT_ID, b"aw")
    w.send(aw, PT.CAN_DO, b"resize")
    ha = w.submit(a, b"resize", b"ua").args[0]
    hb = w.submit(b, b"resize", b"ub").args[0]
    w.submit(root, b"resize", b"ur")
    assert w.admin(a, b"status") == b"resize\t1\t0\t1\n.\n"
    assert w.admin(b, b"status") == b"resize\t1\t0\t0\n.\n"
    assert w.admin(root, b"status") == (b"alpha:resize\t1\t0\t1\nbeta:resize\t1\t0\t0\n"
                                        b"resize\t1\t0\t0\n.\n")
    assert w.admin(b, b"prioritystatus") == b"resize\t0\t1\t0\t0\n.\n"
    assert w.admin(a, b"workers") == b"%d - - :\n%d - aw : resize\n.\n" % (a.id, aw.id)
    assert b"aw : alpha:resize" in w.admin(root, b"workers")
    assert w.admin(b, b"workers") == b"%d - - :\n.\n" % b.id
    assert w.admin(b, b"show jobs") == b"%s\t0\t0\t1\n.\n" % hb
    assert w.admin(a, b"show unique jobs") == b"ua\n.\n"
    assert ha in w.admin(root, b"show jobs") and hb in w.admin(root, b"show jobs")
    assert w.admin(a, b"stats").split(b"\t")[0] == b"resize"
    doc = json.loads(w.admin(b, b"stats json")[:-3])
    assert list(doc["functions"]) == ["resize"] and doc["workers"] == []
    doc = json.loads(w.admin(root, b"stats json")[:-3])
    assert sorted(doc["functions"]) == ["alpha:resize", "beta:resize", "resize"]
    assert doc["workers"][0]["functions"] == ["alpha:resize"]


def test_admin_commands_name_the_tenants_functions() -> None:
    w = World()
    a, b, root = w.conn("CN=alpha-c"), w.conn("CN=beta"), w.conn("CN=root")
    assert w.admin(a, b"create function resize") == b"OK\r\n"
    assert w.admin(b, b"create function resize") == b"OK\r\n"
    assert w.admin(b, b"maxqueue resize 1") == b"OK\r\n"
    assert w.m.functions[b"beta\x1fresize"].maxqueue == [1, 1, 1]
    assert w.m.functions[b"alpha\x1fresize"].maxqueue == [0, 0, 0]
    assert w.admin(root, b"maxqueue alpha:resize 3") == b"OK\r\n"
    assert w.m.functions[b"alpha\x1fresize"].maxqueue == [3, 3, 3]
    assert w.admin(b, b"drop function resize") == b"OK\r\n"
    assert b"alpha\x1fresize" in w.m.functions and b"beta\x1fresize" not in w.m.functions
    assert w.admin(root, b"drop function alpha:resize") == b"OK\r\n"
    assert not w.m.functions
    # shutdown and verbose are the whole server's: a tenant's admin may not
    assert w.admin(a, b"shutdown").startswith(b"ERR PERMISSION_DENIED")
    assert w.admin(a, b"verbose").startswith(b"ERR PERMISSION_DENIED")
    assert w.admin(root, b"verbose") == b"OK ERROR\n"
    assert w.admin(root, b"shutdown") == b"OK\r\n" and w.shutdowns == [False]


def test_tenant_limits_jobs_and_bytes() -> None:
    w = World()
    b = w.conn("CN=beta")
    assert w.submit(b, b"f", b"u1", b"12345").type == PT.JOB_CREATED
    assert w.submit(b, b"g", b"u2", b"1234").type == PT.JOB_CREATED
    full = w.submit(b, b"f", b"u3", b"")
    assert full.type == PT.ERROR and full.args == (b"QUEUE_ERROR", b"Job queue is full")
    # joining a queued job adds none: allowed at the limit
    assert w.submit(b, b"f", b"u1", b"12345").type == PT.JOB_CREATED
    # alpha has no limits; beta's bytes: 9 queued, 2 more would pass 10
    for i in range(5):
        assert w.submit(w.conn("CN=alpha-c"), b"f", b"%d" % i).type == PT.JOB_CREATED
    worker = w.conn("CN=beta")
    w.send(worker, PT.CAN_DO, b"g")
    w.send(worker, PT.GRAB_JOB)  # one job running: one may be queued again
    assert w.submit(b, b"h", b"u4", b"1").type == PT.JOB_CREATED
    assert w.submit(b, b"h", b"u5", b"1").type == PT.ERROR


def test_tenant_bytes_limit() -> None:
    w = World()
    b = w.conn("CN=beta")
    assert w.submit(b, b"f", b"", b"123456").type == PT.JOB_CREATED
    assert w.submit(b, b"f", b"", b"12345").args[0] == b"QUEUE_ERROR"
    assert w.submit(b, b"f", b"", b"1234").type == PT.JOB_CREATED


def test_events_carry_the_tenant_and_watchers_see_their_own() -> None:
    w = World()
    events = Events()
    w.m.attach_events(events)
    lines: list[bytes] = []
    events.add_hook(lines.append)
    a, b = w.conn("CN=alpha-c"), w.conn("CN=beta")

    class Out:
        def __init__(self) -> None:
            self.out = bytearray()
            self.limit = 1 << 20
            self.broken = False

        def write(self, data: bytes) -> None:
            self.out += data

        def drop(self) -> None:
            self.broken = True

    watch_b, watch_all = Out(), Out()
    events.watch(b.id, watch_b, frozenset(), w.acl.view(b).prefix)
    events.watch(99, watch_all, frozenset())
    w.submit(a, b"resize")
    w.submit(b, b"resize")
    events.drain()
    seen = [json.loads(line) for line in lines]
    assert [(e["function"], e["tenant"]) for e in seen] == [("resize", "alpha"),
                                                            ("resize", "beta")]
    (only,) = [json.loads(line) for line in watch_b.out.splitlines()]
    assert only["tenant"] == "beta"
    assert len(watch_all.out.splitlines()) == 2


def test_store_replay_brings_a_job_back_into_its_tenant() -> None:
    # The store keeps the internal name; restore() puts the job back in the tenant.
    w = World()
    job = w.m.restore(b"alpha\x1fresize", b"u", b"d", 1, 0.0, b"", "k1", NOW)
    worker = w.conn("CN=alpha-w")
    w.send(worker, PT.CAN_DO, b"resize")
    assert w.send(worker, PT.GRAB_JOB)[0].args == (job.handle, b"resize", b"d")
    assert w.send(w.conn("CN=beta"), PT.GET_STATUS, job.handle)[0].args[1] == b"0"


def test_cant_do_names_the_tenants_function() -> None:
    w = World()
    worker = w.conn("CN=beta")
    w.send(worker, PT.CAN_DO, b"resize")
    w.send(worker, PT.CANT_DO, b"resize")
    assert not worker.abilities


# ---------------------------------------------------------------------- reload


def test_reload_applies_new_rules_and_a_broken_file_keeps_them(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "acl.toml"
    path.write_text('[[rule]]\naddress = "10.0.0.0/8"\nregister = "*"\nsubmit = "*"\n')
    w = World(path.read_text(), path)
    worker, client = w.conn(address="10.0.0.2"), w.conn(address="10.0.0.3")
    w.send(worker, PT.CAN_DO, b"a")
    w.send(worker, PT.CAN_DO, b"b")
    path.write_text('[[rule]]\naddress = "10.0.0.0/8"\nregister = "a"\nsubmit = "a"\n')
    assert w.acl.reload()
    w.m.acl_reloaded(NOW)
    assert list(worker.abilities) == [b"a"]  # b was given up
    assert denied(w.submit(client, b"b"))
    assert w.submit(client, b"a").type == PT.JOB_CREATED
    for broken in ("[[rule]\n", '[[rule]]\naddress = "10.0.0.0/33"\n',
                   '[[rule]]\naddress = "10.0.0.0/8"\nsubmitt = "*"\n'):
        path.write_text(broken)
        with caplog.at_level(logging.ERROR, logger="server.acl"):
            assert not w.acl.reload()
        assert "old rules stay in force" in caplog.records[-1].getMessage()
        assert str(path) in caplog.records[-1].getMessage()
        assert denied(w.submit(client, b"b"))
        assert w.submit(client, b"a").type == PT.JOB_CREATED
    path.unlink()
    assert not w.acl.reload()


def test_reload_ends_a_watch_that_may_no_longer_read(tmp_path: Path) -> None:
    """A ``watch`` started under admin-read stops with an ERR line once a reload takes
    the right away; one that keeps it goes on."""
    path = tmp_path / "acl.toml"
    rules = '[[rule]]\naddress = "10.0.0.2"\nadmin-read = true\nsubmit = "*"\n' \
            '[[rule]]\naddress = "10.0.0.3"\nadmin-read = true\nsubmit = "*"\n'
    path.write_text(rules)
    w = World(rules, path)
    events = Events()
    w.m.attach_events(events)
    kept, lost = w.conn(address="10.0.0.2"), w.conn(address="10.0.0.3")

    class Out:
        def __init__(self) -> None:
            self.out = bytearray()
            self.limit = 1 << 20
            self.broken = False

        def write(self, data: bytes) -> None:
            self.out += data

        def drop(self) -> None:
            self.broken = True

    outs = {kept.id: Out(), lost.id: Out()}
    for conn in (kept, lost):
        assert w.acl.admin(conn, "admin-read") is None
        events.watch(conn.id, outs[conn.id], frozenset(), w.acl.view(conn).prefix)
    path.write_text(rules.replace('address = "10.0.0.3"\nadmin-read = true',
                                  'address = "10.0.0.3"\nadmin-read = false'))
    assert w.acl.reload()
    w.m.acl_reloaded(NOW)
    assert set(events.watchers) == {kept.id}
    assert bytes(outs[lost.id].out) == (b"ERR PERMISSION_DENIED "
                                        b"watch+ended+by+an+access-rule+reload\r\n")
    w.submit(kept, b"f")
    events.drain()
    (event,) = [json.loads(line) for line in bytes(outs[kept.id].out).splitlines()]
    assert event["function"] == "f"
    assert bytes(outs[lost.id].out).count(b"\n") == 1  # nothing after its ERR line


def test_reload_moving_a_connection_to_another_tenant_takes_its_rights(
        tmp_path: Path) -> None:
    path = tmp_path / "acl.toml"
    text = '[tenants.t1]\n[tenants.t2]\n[[rule]]\nidentity = "x"\ntenant = "%s"\nsubmit = "*"\n'
    path.write_text(text % "t1")
    w = World(path.read_text(), path)
    c = w.conn("x")
    assert w.submit(c, b"f").type == PT.JOB_CREATED
    path.write_text(text % "t2")
    assert w.acl.reload()
    assert denied(w.submit(c, b"f"))
    assert c.tenant == "t1"
    assert w.submit(w.conn("x"), b"f").type == PT.JOB_CREATED  # a new connection: t2
    assert sorted(w.m.functions) == [b"t1\x1ff", b"t2\x1ff"]


# ---------------------------------------------------------------------- the file


@pytest.mark.parametrize(("text", "message"), [
    ("[[rule]", "not valid TOML"),
    ("[other]\n", "unknown section 'other'"),
    ("rule = [1]\n", "rule 1: rules are written"),
    ("rule = 1\n", "rules are written"),
    ("tenants = 1\n", "must be a table of tables"),
    ("[[rule]]\nsubmit = '*'\n", "rule 1: it needs an address or an identity"),
    ("[[rule]]\naddress = 'example.com'\n", "rule 1: 'example.com' is not an IP address"),
    ("[[rule]]\naddress = []\n", "rule 1: address must be a string or a non-empty list"),
    ("[[rule]]\naddress = '::1'\nadmin-read = 'yes'\n", "admin-read must be true or false"),
    ("[[rule]]\naddress = '::1'\nregister = 3\n", "register must be a glob or a list"),
    ("[[rule]]\naddress = '::1'\ntenant = 'nope'\n", "tenant 'nope' is not declared"),
    ("[tenants.'a b']\n", "a tenant name is"),
    ("[tenants.a]\n[tenants.A]\n", "declared twice"),
    ("[tenants.a]\nmax-queued-jobs = -1\n", "max-queued-jobs must be a number"),
    ("[tenants.a]\nlimit = 1\n", "only max-queued-jobs and max-queued-bytes"),
    ("[default]\naddress = '::1'\n", "[default] may only hold"),
])
def test_bad_files_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(AclError, match=message.replace("[", r"\[")):
        parse(text)


def test_globs_are_whole_name_and_case_sensitive() -> None:
    rules = parse("[[rule]]\naddress = '::1'\nsubmit = ['img-*', 'a?c', 'x[0-9]']\n")
    rights = rules.rules[0].rights
    for name, ok in ((b"img-1", True), (b"IMG-1", False), (b"ximg-1", False),
                     (b"abc", True), (b"abbc", False), (b"x5", True), (b"xa", False)):
        assert rights.allows("submit", name) is ok
    assert not rights.allows("register", b"img-1")


def test_display_and_plain_names() -> None:
    assert acl_module.display(b"t\x1fresize") == b"t:resize"
    assert acl_module.display(b"resize") == b"resize"
    assert acl_module.plain(b"t\x1fresize") == b"resize"


# ---------------------------------------------------------------------- without a file


@pytest.mark.parametrize("line", [b"verbose", b"shutdown", b"cancel job H:x:1",
                                  b"drop function f", b"maxqueue f 1", b"create function f"])
def test_without_acl_admin_write_is_loopback_only(line: bytes) -> None:
    m = Manager()
    ctx = AdminContext(manager=m, version="1", verbose="ERROR", pid=1,
                       shutdown=lambda graceful: None)
    remote = m.connect(FakePeer(), "192.0.2.9")
    reply = handle_admin(ctx, remote, parse_admin_line(line))
    assert reply.startswith(b"ERR PERMISSION_DENIED")
    # reading stays open to all
    assert handle_admin(ctx, remote, parse_admin_line(b"status")) == b".\n"
    local = m.connect(FakePeer(), "127.0.0.1")
    assert not handle_admin(ctx, local, parse_admin_line(line)).startswith(b"ERR PERM")


def test_long_listings_are_checked_and_filtered_too(caplog: pytest.LogCaptureFixture) -> None:
    from server.admin import CHUNKED_ROWS, admin_listing

    w = World()
    for i in range(CHUNKED_ROWS):
        w.m.function(b"f%d" % i).pinned = True
    w.m.function(b"alpha\x1fmine").pinned = True
    cmd = parse_admin_line(b"status")
    refused = w.conn(address="192.0.2.1")
    with caplog.at_level(logging.WARNING, logger="server.acl"):
        assert admin_listing(w.ctx, refused, cmd) is None  # handle_admin refuses it...
        assert handle_admin(w.ctx, refused, cmd).startswith(b"ERR PERMISSION_DENIED")
    assert len(caplog.records) == 1  # ...and logs it, once
    rows = admin_listing(w.ctx, w.conn("CN=alpha-1"), cmd)
    assert rows is not None and b"".join(rows) == b"mine\t0\t0\t0\n.\n"
    rows = admin_listing(w.ctx, w.conn("CN=root"), cmd)
    assert rows is not None and len(b"".join(rows).splitlines()) == CHUNKED_ROWS + 2


def test_the_memo_of_checked_names_is_bounded_and_stays_right() -> None:
    w = World()
    client = w.conn(address="10.0.0.1")
    for i in range(5000):
        w.m.submit_checked(client, b"public-%d" % i, b"", b"", 1, True, NOW)
    memo = w.acl.rights(client).memo["submit"]
    assert 0 < len(memo) <= 4096
    assert denied(w.submit(client, b"private"))
    assert denied(w.submit(client, b"private"))  # remembered as refused, still refused
    assert w.submit(client, b"public-1").type == PT.JOB_CREATED
    assert w.submit(client, b"public-\x01").args[0] == b"INVALID_ARGUMENT"


def test_every_admin_command_is_classified() -> None:
    # A command added later must be given a right (or be knowingly free, as version).
    from server import admin

    commands = set(admin._COMMANDS) | set(admin._LISTINGS)
    assert admin._MUTATING | admin._READING | {"version"} == commands
    assert not admin._MUTATING & admin._READING
    assert admin._SERVER_WIDE <= admin._MUTATING


def test_the_documented_examples_parse() -> None:
    repo = Path(__file__).resolve().parent.parent
    doc = (repo / "docs" / "acl.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    rules = parse(example)
    assert [r.rights.tenant for r in rules.rules] == [None, "media", "billing"]
    assert rules.tenants["media"].max_jobs == 10000
    page = (repo / "man" / "gearmand.8").read_text()
    section = page.split('.SH "ACCESS RULES"', 1)[1]
    example = section.split(".EX\n", 1)[1].split(".EE", 1)[0].replace("\\-", "-")
    rules = parse(example)
    assert [r.rights.tenant for r in rules.rules] == [None, "media"]
    assert rules.default.allows("submit", b"public-x")


def test_refusals_of_one_connection_are_logged_up_to_a_bound(
        caplog: pytest.LogCaptureFixture) -> None:
    w = World()
    client = w.conn(address="10.0.0.1")
    with caplog.at_level(logging.WARNING, logger="server.acl"):
        for _ in range(acl_module.LOGGED_REFUSALS + 30):
            assert denied(w.submit(client, b"private"))
        w.m.disconnect(client, NOW)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == acl_module.LOGGED_REFUSALS + 2
    assert "more refusals of this connection are not logged" in lines[-2]
    assert lines[-1].endswith("closed after 50 refusals")


# ------------------------------------------------------- dead letters and results


def test_dead_letters_and_results_stay_in_their_tenant() -> None:
    """``show dead``, ``retry``/``drop dead`` and ``result`` (server/retry.py,
    server/results.py) name a tenant's functions plainly and never show another's."""
    from server.results import MemoryBackend, ResultCache
    from server.retry import RetryPolicies, RetryPolicy

    w = World()
    w.m.retry = RetryPolicies({None: RetryPolicy(1, 1.0, 1.0)})
    w.m.results = ResultCache({None: 60.0}, MemoryBackend())
    w.ctx.clock = lambda: NOW  # the manager's time, for the results' expiry
    a, b, root = w.conn("CN=alpha-c"), w.conn("CN=beta"), w.conn("CN=root")
    aw = w.conn("CN=alpha-w")
    w.send(aw, PT.CAN_DO, b"resize")
    failed = w.submit(a, b"resize", b"k", b"bad").args[0]
    (assigned,) = w.send(aw, PT.GRAB_JOB)
    w.send(aw, PT.WORK_FAIL, assigned.args[0])  # one attempt: a dead letter at once
    done = w.submit(a, b"resize", b"k2", b"good").args[0]
    (assigned,) = w.send(aw, PT.GRAB_JOB)
    w.send(aw, PT.WORK_COMPLETE, assigned.args[0], b"resized")

    mine = w.admin(a, b"show dead").splitlines()
    assert len(mine) == 2 and mine[0].split(b"\t")[:2] == [b"resize", failed]
    assert w.admin(b, b"show dead") == b".\n"
    assert w.admin(b, b"show dead resize") == b".\n"
    assert w.admin(root, b"show dead").split(b"\t")[0] == b"alpha:resize"
    assert w.admin(a, b"result " + done).startswith(b"OK done 1 ")
    assert w.admin(b, b"result " + done) == b"OK unknown\r\n"  # another tenant's handle
    assert w.admin(a, b"result unique resize k2").startswith(b"OK done")
    assert w.admin(b, b"result unique resize k2") == b"OK unknown\r\n"
    assert w.admin(b, b"drop dead resize " + failed) == b"ERR UNKNOWN_JOB\r\n"
    assert w.admin(b, b"retry dead resize all") == b"OK 0\r\n"
    from server.metrics import render

    dead = "gearman_dead_letters{"
    assert [line for line in render(w.ctx, w.ctx.view(a)).decode().splitlines()
            if line.startswith(dead)] == ['gearman_dead_letters{function="resize"} 1.0']
    assert not [line for line in render(w.ctx, w.ctx.view(b)).decode().splitlines()
                if line.startswith(dead)]  # beta has none, and sees none of alpha's
    assert w.admin(a, b"retry dead resize " + failed) == b"OK 1\r\n"

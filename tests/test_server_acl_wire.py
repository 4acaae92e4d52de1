"""Access rules over real sockets: our server in-process (Gear, HTTP, memcached, metrics
on port 0), peers on 127.0.0.1 matched by address (docs/acl.md). The last test runs
``python -m server`` as a process with a third-party client (the ``gear`` library),
and SIGHUP reloads."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from protocol import NEED_DATA, Packet, PacketType, Parser, encode_req
from server.app import Server
from server.cli import CliError, parse_args
from server.config import ServerConfig
from tests.conftest import RunningServer

PT = PacketType

RULES = """
[tenants.t]

[[rule]]
address = "127.0.0.0/8"
tenant = "t"
register = "ok-*"
submit = "ok-*"
admin-read = true
"""


class Peer:
    """A raw connection: Gear packets, admin lines or any bytes."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.parser = Parser()
        self.buf = b""

    @classmethod
    async def open(cls, port: int) -> Peer:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def packet(self, ptype: PacketType, *args: bytes) -> Packet:
        await self.stream.send_all(encode_req(ptype, *args))
        while True:
            event = self.parser.next_event()
            if event is NEED_DATA:
                self.parser.receive_data(await self.stream.receive_some(65536))
                continue
            assert isinstance(event, Packet)
            return event

    async def ask(self, data: bytes, end: bytes) -> bytes:
        await self.stream.send_all(data)
        while end not in self.buf:
            chunk = await self.stream.receive_some(65536)
            assert chunk, self.buf
            self.buf += chunk
        reply, _, self.buf = self.buf.partition(end)
        return reply + end


@pytest.fixture
async def server(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Server]:
    path = tmp_path / "acl.toml"
    path.write_text(RULES)
    config = ServerConfig(listen=("127.0.0.1",), port=0, protocols=("http", "memcached"),
                          http_port=0, memcached_port=0, metrics_port=0, acl_file=path)
    srv = Server(config)
    await nursery.start(srv.serve)
    srv.manager.function(b"global-fn").pinned = True
    srv.manager.function(b"t\x1fok-mine").pinned = True
    yield srv
    srv.shutdown()


async def test_gear_and_admin_by_address(server: Server,
                                         caplog: pytest.LogCaptureFixture) -> None:
    peer = await Peer.open(server.addresses[0][1])
    with caplog.at_level(logging.WARNING, logger="server.acl"):
        reply = await peer.packet(PT.SUBMIT_JOB_BG, b"private", b"", b"x")
        assert reply.type == PT.ERROR
        assert reply.args == (b"PERMISSION_DENIED", b"no submit right for function private")
        assert (await peer.packet(PT.SUBMIT_JOB_BG, b"ok-1", b"", b"x")).type == PT.JOB_CREATED
        assert await peer.ask(b"status\n", b".\n") == b"ok-1\t1\t0\t0\nok-mine\t0\t0\t0\n.\n"
        assert await peer.ask(b"shutdown\n", b"\r\n") == \
            b"ERR PERMISSION_DENIED no+admin-write+right\r\n"
    assert sum("127.0.0.1" in r.getMessage() for r in caplog.records) == 2
    assert b"t\x1fok-1" in server.manager.functions


async def test_http_and_metrics(server: Server) -> None:
    http = await Peer.open(server.http_addresses[0][1])
    answer = await http.ask(b"POST /private HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                            b"X-Gearman-Background: true\r\n\r\nx", b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert b"X-Gearman-Error: PERMISSION_DENIED" in answer
    await http.ask(b"", b"private")  # the body: the refusal's text
    answer = await http.ask(b"POST /ok-2 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                            b"X-Gearman-Background: true\r\n\r\nx", b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    metrics = await Peer.open(server.metrics_addresses[0][1])
    page = await metrics.ask(b"GET /metrics HTTP/1.0\r\n\r\n", b"gearman_build_info{")
    assert b'gearman_queued_jobs{function="ok-2"} 1.0' in page
    assert b'function="ok-mine"' in page and b"global-fn" not in page
    assert b"\\x1f" not in page


async def test_memcached(server: Server) -> None:
    mc = await Peer.open(server.frontend_addresses["memcached"][0][1])
    assert await mc.ask(b"set private 0 0 1\r\nx\r\n", b"\r\n") == \
        b"SERVER_ERROR no submit right for function private\r\n"
    assert await mc.ask(b"set ok-3 0 0 1\r\nx\r\n", b"\r\n") == b"STORED\r\n"
    assert server.manager.functions[b"t\x1fok-3"].queued == 1
    server.manager.restore(b"global-fn", b"", b"x", 1, 0.0, b"", "k", 0.0)
    stats = await mc.ask(b"stats\r\n", b"END\r\n")
    # the tenant's own functions (ok-mine, ok-3) and job only
    assert b"STAT functions 2\r\n" in stats and b"STAT jobs 1\r\n" in stats


async def test_metrics_need_admin_read(nursery: trio.Nursery, tmp_path: Path) -> None:
    path = tmp_path / "acl.toml"
    path.write_text('[[rule]]\naddress = "127.0.0.1"\nsubmit = "*"\n')
    srv = Server(ServerConfig(listen=("127.0.0.1",), port=0, metrics_port=0, acl_file=path))
    await nursery.start(srv.serve)
    metrics = await Peer.open(srv.metrics_addresses[0][1])
    page = await metrics.ask(b"GET /stats.json HTTP/1.0\r\n\r\n", b"\r\n\r\n")
    assert page.startswith(b"HTTP/1.1 403 ")
    srv.shutdown()


def test_cli_refuses_a_bad_file_and_says_why(tmp_path: Path) -> None:
    path = tmp_path / "acl.toml"
    path.write_text("[[rule]]\naddress = '10.0.0.0/40'\n")
    with pytest.raises(CliError) as info:
        parse_args(["--acl-file", str(path)], {})
    assert info.value.format_message() == (
        f"--acl-file: {path}: rule 1: '10.0.0.0/40' is not an IP address or CIDR network")
    with pytest.raises(CliError, match="cannot read the ACL file"):
        parse_args(["--acl-file", str(tmp_path / "absent.toml")], {})
    path.write_text(RULES)
    inv = parse_args(["--acl-file", str(path), "--admin-from-anywhere"], {})
    assert inv.config.acl_file == path
    assert "--admin-from-anywhere has no effect with --acl-file" in inv.notes


# ---------------------------------------------------------------------- as a process


def _wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 15
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:notifyAll:DeprecationWarning")
def test_gear_library_survives_the_error_and_sighup_reloads(
        start_server: Callable[..., RunningServer], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    gear = pytest.importorskip("gear")
    path = tmp_path / "acl.toml"
    path.write_text('[[rule]]\naddress = ["127.0.0.1", "::1"]\nsubmit = "ok-*"\n'
                    'admin-read = true\n')
    srv = start_server("ours", "--acl-file", str(path), "--verbose=WARNING")
    client = gear.Client("acl-test")
    try:
        client.addServer("127.0.0.1", srv.port)
        client.waitForServer(timeout=10)
        (connection,) = client.active_connections
        with caplog.at_level(logging.ERROR, logger="gear.Client"), \
                pytest.raises(gear.GearmanError):
            client.submitJob(gear.Job(b"private", b"x"), background=True, timeout=10)
        # gear logs the server's ERROR and fails the submit...
        assert any("PERMISSION_DENIED" in r.getMessage()
                   and "no submit right for function private" in r.getMessage()
                   for r in caplog.records)
        # ...and keeps its connection, on which the next submit is accepted
        assert client.active_connections == [connection]
        allowed = gear.Job(b"ok-1", b"x")
        client.submitJob(allowed, background=True, timeout=10)
        assert allowed.handle is not None and allowed.handle.startswith(b"H:")
        assert allowed.connection is connection
        log = srv.log.read_text()
        assert "PERMISSION_DENIED connection" in log and "127.0.0.1" in log
        assert "no submit right for function private" in log

        # SIGHUP: a broken file keeps the rules (and says why), a good one replaces them
        path.write_text("[[rule]]\naddress = 'nowhere'\n")
        os.kill(srv.proc.pid, signal.SIGHUP)
        _wait_for(lambda: "old rules stay in force" in srv.log.read_text(), "the refusal")
        assert "'nowhere' is not an IP address" in srv.log.read_text()
        again = gear.Job(b"ok-2", b"x")
        client.submitJob(again, background=True, timeout=10)
        assert again.handle is not None
        path.write_text('[[rule]]\naddress = "127.0.0.1"\nsubmit = "private"\n')
        os.kill(srv.proc.pid, signal.SIGHUP)
        _wait_for(lambda: "ACL reloaded from" in srv.log.read_text(), "the reload")
        now_ok = gear.Job(b"private", b"x")
        client.submitJob(now_ok, background=True, timeout=10)
        assert now_ok.handle is not None
        with pytest.raises(gear.GearmanError):
            client.submitJob(gear.Job(b"ok-3", b"x"), background=True, timeout=10)
        assert client.active_connections == [connection]
        assert srv.proc.poll() is None
    finally:
        client.shutdown()


def test_a_tenants_stored_job_comes_back_into_the_tenant(
        start_inprocess: Callable[..., object], tmp_path: Path) -> None:
    from tests.wire import connect

    path = tmp_path / "acl.toml"
    path.write_text(RULES.replace('register = "ok-*"', 'register = "*"'))
    args = ("--acl-file", str(path), "-q", "libsqlite3",
            f"--libsqlite3-db={tmp_path / 'q.db'}")
    first: Any = start_inprocess(*args)
    with connect(first.port) as client:
        client.send(PT.SUBMIT_JOB_BG, b"ok-stored", b"u1", b"payload")
        handle = client.recv().args[0]
    first.stop()
    second: Any = start_inprocess(*args)
    assert b"t\x1fok-stored" in second.server.manager.functions
    with connect(second.port) as worker:
        assert worker.admin("status") == b"ok-stored\t1\t0\t0\n.\n"
        worker.send(PT.CAN_DO, b"ok-stored")
        assign = worker.request(PT.GRAB_JOB_UNIQ)
        assert assign.type == PT.JOB_ASSIGN_UNIQ
        assert assign.args[1:] == (b"ok-stored", b"u1", b"payload")
    assert handle.startswith(b"H:")


TENANTS_BY_ADDRESS = """
[tenants.a]
[tenants.b]
[[rule]]
address = "127.0.0.1"
register = "*"
submit = "*"
admin-read = true
[[rule]]
address = "127.0.0.2"
tenant = "a"
register = "*"
submit = "*"
admin-read = true
[[rule]]
address = "127.0.0.3"
tenant = "b"
register = "*"
submit = "*"
admin-read = true
"""


def test_two_tenants_by_address_share_a_server(start_inprocess: Callable[..., object],
                                               tmp_path: Path) -> None:
    """End to end: peers from 127.0.0.2 (tenant a) and 127.0.0.3 (tenant b) use the same
    function names and unique keys and never meet; 127.0.0.1 (no tenant) sees both."""
    from tests.wire import Wire

    path = tmp_path / "acl.toml"
    path.write_text(TENANTS_BY_ADDRESS)
    srv: Any = start_inprocess("--acl-file", str(path))
    peers = {name: [Wire(srv.port, source=address) for _ in range(2)]
             for name, address in (("a", "127.0.0.2"), ("b", "127.0.0.3"))}
    try:
        handles = {}
        for name, (client, worker) in peers.items():
            worker.send(PT.CAN_DO, b"resize")
            worker.sync()
            created = client.request(PT.SUBMIT_JOB_BG, b"resize", b"same", name.encode())
            assert created.type == PT.JOB_CREATED
            handles[name] = created.args[0]
        assert handles["a"] != handles["b"]
        for name, (client, worker) in peers.items():
            other = handles["b" if name == "a" else "a"]
            assign = worker.request(PT.GRAB_JOB_UNIQ)
            assert assign.args == (handles[name], b"resize", b"same", name.encode())
            assert worker.request(PT.GRAB_JOB).type == PT.NO_JOB
            status = client.request(PT.GET_STATUS, other)
            assert status.args == (other, b"0", b"0", b"0", b"0")
            unique = client.request(PT.GET_STATUS_UNIQUE, b"same")
            assert unique.args[:3] == (b"same", b"1", b"1")
            assert client.admin("status") == b"resize\t1\t1\t1\n.\n"
            assert handles[name] in client.admin("show jobs")
            assert other not in client.admin("show jobs")
        with Wire(srv.port) as root:
            assert root.admin("status") == b"a:resize\t1\t1\t1\nb:resize\t1\t1\t1\n.\n"
            assert root.request(PT.GET_STATUS_UNIQUE, b"same").args[1] == b"0"
    finally:
        for pair in peers.values():
            for wire in pair:
                wire.close()

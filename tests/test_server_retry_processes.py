"""Retries, dead letters and the result cache with real processes: our gearmand with a
persistent store across restarts, our ``gearman``/``gearadmin`` commands, a shared result
cache in memcached and Redis, and Perl's Gearman::Worker sending CAN_DO_TIMEOUT."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from protocol import PacketType, encode_req
from tests.cli_helpers import gearadmin, gearman, status
from tests.conftest import RunningServer, free_port
from tests.test_server_persistence import RawPeer, submit_background

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

PT = PacketType
IN_CI = os.environ.get("CI") == "true"


def grab_next(peer: RawPeer, function: bytes) -> tuple[bytes, ...]:
    """JOB_ASSIGN's arguments for the next job of ``function`` (a stored job is queued
    once its commit ends: poll)."""
    peer.send(encode_req(PT.CAN_DO, function))
    deadline = time.monotonic() + 10
    while True:
        peer.send(encode_req(PT.GRAB_JOB))
        (reply,) = peer.packets(1)
        if reply.type is PT.JOB_ASSIGN:
            return reply.args
        assert time.monotonic() < deadline, "no job came"
        time.sleep(0.05)


def fail_next(port: int, function: bytes, how: PacketType = PT.WORK_FAIL) -> bytes:
    """A raw worker takes the next job of ``function`` and fails it; its handle."""
    peer = RawPeer(port)
    handle = grab_next(peer, function)[0]
    extra = (b"it broke",) if how is PT.WORK_EXCEPTION else ()
    peer.send(encode_req(how, handle, *extra))
    peer.send(encode_req(PT.ECHO_REQ, b"sync"))
    assert peer.packets(1)[0].type is PT.ECHO_RES
    peer.close()
    return handle


def complete_next(port: int, function: bytes, result: bytes) -> bytes:
    """A raw worker takes the next job of ``function`` and completes it; its data."""
    peer = RawPeer(port)
    handle, _, data = grab_next(peer, function)
    peer.send(encode_req(PT.WORK_COMPLETE, handle, result))
    peer.send(encode_req(PT.ECHO_REQ, b"sync"))
    assert peer.packets(1)[0].type is PT.ECHO_RES
    peer.close()
    return data


def dead_rows(server: RunningServer) -> list[list[bytes]]:
    done = gearadmin(server, "--dead")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == b"."
    return [line.split(b"\t") for line in lines[:-1]]


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_dead_letters_survive_restarts_with_sqlite(
        start_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    args = ["-q", "libsqlite3", "--libsqlite3-db", str(tmp_path / "q.db"),
            "--retry-policy", "dl=1"]
    first = start_server("ours", *args)
    submit_background(first.port, [(PT.SUBMIT_JOB_BG, b"dl", b"u-1", b"payload-1"),
                                   (PT.SUBMIT_JOB_BG, b"dl", b"", b"payload-2")])
    h1 = fail_next(first.port, b"dl", PT.WORK_EXCEPTION)
    h2 = fail_next(first.port, b"dl")
    rows = dead_rows(first)
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        (b"dl", h1, b"u-1", b"1"), (b"dl", h2, b"", b"1")]
    assert rows[0][6] == b"exception: it broke" and rows[1][6] == b"WORK_FAIL"
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)

    second = start_server("ours", *args)
    rows = dead_rows(second)
    assert [(r[1], r[2], r[6]) for r in rows] == [(h1, b"u-1", b"exception: it broke"),
                                                 (h2, b"", b"WORK_FAIL")]
    # Nothing was queued again by the restart: the letters are not jobs.
    assert b"dl" not in gearadmin(second, "--status").stdout
    retried = gearadmin(second, "--retry-dead", f"dl {h1.decode()}")
    assert (retried.returncode, retried.stdout) == (0, b"1\n")
    assert complete_next(second.port, b"dl", b"ok") == b"payload-1"
    dropped = gearadmin(second, "--drop-dead", "dl")
    assert (dropped.returncode, dropped.stdout) == (0, b"1\n")
    unknown = gearadmin(second, "--drop-dead", "dl H:nope:1")
    assert unknown.returncode == 1 and b"UNKNOWN_JOB" in unknown.stderr
    second.proc.send_signal(signal.SIGTERM)
    second.proc.wait(10)

    third = start_server("ours", *args)
    assert dead_rows(third) == []
    assert b"dl" not in gearadmin(third, "--status").stdout


def test_dead_letters_with_store_queue_on_shutdown(
        start_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    args = ["-q", "libsqlite3", "--libsqlite3-db", str(tmp_path / "q.db"),
            "--store-queue-on-shutdown", "--retry-policy", "*=1"]
    first = start_server("ours", *args)
    submit_background(first.port, [(PT.SUBMIT_JOB_BG, b"s", b"u", b"d")])
    handle = fail_next(first.port, b"s")
    first.proc.send_signal(signal.SIGTERM)  # a clean stop writes the snapshot
    first.proc.wait(10)
    second = start_server("ours", *args)
    assert [(r[0], r[1], r[2]) for r in dead_rows(second)] == [(b"s", handle, b"u")]
    second.proc.send_signal(signal.SIGTERM)
    second.proc.wait(10)
    third = start_server("ours", *args)  # written again at the second stop
    assert [r[1] for r in dead_rows(third)] == [handle]


def test_gearman_result_exit_statuses(start_server: Callable[..., RunningServer]) -> None:
    server = start_server("ours", "--result-ttl", "60", "--retry-policy", "bad=1")
    submit_background(server.port, [(PT.SUBMIT_JOB_BG, b"good", b"key-7", b"x"),
                                    (PT.SUBMIT_JOB_BG, b"bad", b"", b"y")])
    peer = RawPeer(server.port)
    peer.send(encode_req(PT.SUBMIT_JOB_BG, b"good", b"key-8", b"z"))
    (created,) = peer.packets(1)
    peer.close()
    queued = gearman(server, "--result", created.args[0].decode())
    assert queued.returncode == 5 and b"queued" in queued.stderr
    complete_next(server.port, b"good", b"the result \x00\xff")
    handle = fail_next(server.port, b"bad", PT.WORK_EXCEPTION)
    by_unique = gearman(server, "-f", "good", "--result", "key-7")
    assert (by_unique.returncode, by_unique.stdout) == (0, b"the result \x00\xff")
    failed = gearman(server, "--result", handle.decode())
    assert failed.returncode == 1 and failed.stdout == b""
    assert b"it broke" in failed.stderr
    unknown = gearman(server, "--result", "H:nowhere:1")
    assert unknown.returncode == 4 and b"no result" in unknown.stderr
    usage = gearman(server, "--result", "H:x:1", "-f", "a", "-f", "b")
    assert usage.returncode == 2


# ---------------------------------------------------------------- shared result caches


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture
def memcached_url() -> Iterator[str]:
    binary = shutil.which("memcached")
    if binary is None:
        if IN_CI:
            pytest.fail("memcached is not installed on CI")
        pytest.skip("memcached not installed")
    port = free_port()
    proc = subprocess.Popen([binary, "-u", "root", "-l", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _reachable(port) or proc.poll() is not None, 10)
        assert proc.poll() is None, "memcached did not start"
        yield f"memcached://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.fixture
def redis_url() -> str:
    if not _reachable(6379):
        if IN_CI:
            pytest.fail("Redis is not reachable on CI")
        pytest.skip("Redis not reachable on 127.0.0.1:6379")
    return "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize("cache", ["memcached_url", "redis_url"])
def test_two_servers_share_a_result_cache(start_server: Callable[..., RunningServer],
                                          request: pytest.FixtureRequest, cache: str) -> None:
    url: str = request.getfixturevalue(cache)
    args = ["--result-ttl", "60", "--result-cache", url]
    a, b = start_server("ours", *args), start_server("ours", *args)
    key = "k-" + uuid.uuid4().hex
    submit_background(a.port, [(PT.SUBMIT_JOB_BG, b"shared", key.encode(), b"in")])
    complete_next(a.port, b"shared", b"made on a")
    # Written by a task from a worker thread: read it back from the other server.
    deadline = time.monotonic() + 10
    while (got := gearman(b, "-f", "shared", "--result", key)).returncode != 0:
        assert time.monotonic() < deadline, got.stderr
        time.sleep(0.1)
    assert got.stdout == b"made on a"


def test_an_unreachable_cache_loses_results_not_jobs(
        start_server: Callable[..., RunningServer]) -> None:
    server = start_server("ours", "--result-ttl", "60", "--result-cache",
                          f"memcached://127.0.0.1:{free_port()}")
    submit_background(server.port, [(PT.SUBMIT_JOB_BG, b"f", b"u", b"job")])
    assert complete_next(server.port, b"f", b"r") == b"job"
    got = gearman(server, "-f", "f", "--result", "u")
    assert got.returncode == 3 and b"RESULT_CACHE_UNAVAILABLE" in got.stderr
    wait_for(lambda: b"result cache" in server.log.read_bytes())
    log = server.log.read_text()
    assert log.count("unreachable") == 1, log


# ---------------------------------------------------------------- CAN_DO_TIMEOUT, Perl

PERL_WORKER = r"""
use strict; use warnings;
use Gearman::Worker;
my ($port, $seconds) = @ARGV;
my $worker = Gearman::Worker->new(job_servers => ["127.0.0.1:$port"]);
# register_function(NAME, TIMEOUT, SUB): CAN_DO_TIMEOUT
$worker->register_function(overrun => 1, sub { sleep $seconds; return "late" });
$worker->work while 1;
"""

PERL_CLIENT = r"""
use strict; use warnings;
use Gearman::Client;
my ($port) = @ARGV;
my $client = Gearman::Client->new(job_servers => ["127.0.0.1:$port"]);
my $result = $client->do_task("overrun", "x", {timeout => 30});
print defined $result ? "result:$$result\n" : "failed\n";
"""


def _perl() -> str:
    perl = shutil.which("perl")
    if perl is None or subprocess.run([perl, "-MGearman::Worker", "-MGearman::Client",
                                       "-e", "1"], capture_output=True).returncode:
        if IN_CI:
            pytest.fail("Perl Gearman::Worker is not installed on CI")
        pytest.skip("Perl Gearman::Worker not installed")
    return perl


def test_perl_worker_past_its_timeout_fails_the_job(
        start_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    # Each Perl worker sleeps far past its 1 s timeout: it takes one job and is still
    # busy when the test ends. (Its late WORK_COMPLETE would get JOB_NOT_FOUND, which
    # Gearman::Worker 2.004 dies of: "unexpected packet type: error".)
    perl = _perl()
    server = start_server("ours", "--retry-policy", "overrun=2,backoff=100ms")
    (tmp_path / "worker.pl").write_text(PERL_WORKER)
    (tmp_path / "client.pl").write_text(PERL_CLIENT)
    workers: list[subprocess.Popen[bytes]] = []

    def start_worker() -> None:
        workers.append(subprocess.Popen(
            [perl, str(tmp_path / "worker.pl"), str(server.port), "60"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    try:
        start_worker()
        # Foreground: the client hears the failure (it used to wait for ever).
        client = subprocess.run([perl, str(tmp_path / "client.pl"), str(server.port)],
                                capture_output=True, timeout=40, check=False)
        assert client.stdout == b"failed\n", client
        # Background, with a policy of two attempts on two fresh workers: both time
        # out, then it is a dead letter.
        start_worker()
        start_worker()
        wait_for(lambda: status(server).get(b"overrun", (0, 0, 0))[2] == 3)
        submit_background(server.port, [(PT.SUBMIT_JOB_BG, b"overrun", b"bg", b"y")])
        wait_for(lambda: len(dead_rows(server)) == 1, 30)
        (row,) = dead_rows(server)
        assert (row[0], row[2], row[3], row[6]) == (b"overrun", b"bg", b"2",
                                                    b"timed out after 1 s")
    finally:
        for worker in workers:
            worker.kill()
            worker.wait(5)

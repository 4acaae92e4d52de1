"""The blocking facade (Client, Worker, Admin) from plain, non-trio code, and the server
list: parsing, GEARMAN_SERVERS, consistent hashing, round-robin and back-off."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from gearman_cli import (
    Admin,
    Client,
    Job,
    JobExceptionError,
    NoServerError,
    ServerAddress,
    TaskState,
    Worker,
    default_servers,
    parse_servers,
)
from gearman_cli._servers import ServerPool
from tests.lib_support import addr


@pytest.fixture
def server(any_server: Any) -> Any:
    """The server these tests run against: ours and the reference (``reference_server``
    for the reference alone)."""
    return any_server


def _reverse(job: Job) -> bytes:
    job.send_status(1, 1)
    return job.data[::-1]


def _raise(job: Job) -> bytes:
    raise ValueError("nope")


@pytest.fixture
def blocking_worker(server: Any) -> Iterator[Worker]:
    """A blocking Worker running work_forever in a plain thread."""
    worker = Worker(addr(server), concurrency=2)
    worker.add_function("reverse", _reverse)
    worker.add_function("raise", _raise)
    thread = threading.Thread(target=worker.work_forever, daemon=True)
    thread.start()
    yield worker
    worker.stop()
    thread.join(10)
    assert not thread.is_alive(), "Worker.stop() did not end work_forever"


@pytest.mark.timeout(30)
def test_blocking_client_and_worker(server: Any, blocking_worker: Worker) -> None:
    client = Client(addr(server))
    assert client.do("reverse", b"Hello") == b"olleH"
    assert client.do_high("reverse", "ab") == b"ba"
    assert client.do_low("reverse", b"\0x") == b"x\0"
    with pytest.raises(JobExceptionError, match="ValueError: nope"):
        client.do("raise", b"")
    handle = client.do_background("reverse", b"bg")
    assert handle.startswith(b"H:")
    assert client.do_high_background("reverse", b"1") != client.do_low_background("reverse", b"2")
    assert client.echo(b"e\0cho") == b"e\0cho"
    assert 0 < client.ping() < 5
    statuses: list[tuple[int, int]] = []
    tasks = [client.add_task("reverse", b"%d" % i, app_data=i) for i in range(50)]
    done = client.run_tasks(on_status=lambda t: statuses.append((t.numerator, t.denominator)))
    assert done == tasks
    assert all(t.state is TaskState.COMPLETE for t in tasks)
    assert [t.result for t in tasks] == [(b"%d" % i)[::-1] for i in range(50)]
    assert statuses == [(1, 1)] * 50
    unknown = client.job_status(b"H:none:1")
    assert not unknown.known


@pytest.mark.timeout(30)
def test_blocking_admin(server: Any, blocking_worker: Worker) -> None:
    Client(addr(server)).do("reverse", b"x")  # the worker is registered by now
    admin = Admin(addr(server))
    assert admin.getpid() == server.proc.pid
    rows = {r.function: r for r in admin.status()}
    assert rows[b"reverse"].workers == 1
    assert admin.version()


@pytest.mark.timeout(30)
def test_blocking_worker_work_count(server: Any) -> None:
    client = Client(addr(server))
    for i in range(3):
        client.do_background("once", b"%d" % i)
    seen: list[bytes] = []
    worker = Worker(addr(server))
    worker.add_function("once", lambda job: seen.append(job.data))
    assert worker.work(3) == 3
    assert sorted(seen) == [b"0", b"1", b"2"]


@pytest.mark.timeout(30)
def test_gearman_servers_environment_default(
    server: Any, blocking_worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEARMAN_SERVERS", addr(server))
    assert Client().do("reverse", b"env") == b"vne"
    monkeypatch.setenv("GEARMAN_SERVERS", "127.0.0.1:1")
    with pytest.raises(NoServerError):
        Client(connect_timeout=2).do("reverse", b"x")


# -- the server list, no server needed --


def test_parse_servers() -> None:
    assert parse_servers("10.0.0.1,10.0.0.2:7003") == [
        ServerAddress("10.0.0.1", 4730),
        ServerAddress("10.0.0.2", 7003),
    ]
    assert parse_servers(" a , [::1]:99,[fe80::1]") == [
        ServerAddress("a"),
        ServerAddress("::1", 99),
        ServerAddress("fe80::1", 4730),
    ]
    assert str(ServerAddress("::1", 99)) == "[::1]:99"
    for bad in ("h:notaport", "h:0", "h:70000", "[::1"):
        with pytest.raises(ValueError):
            parse_servers(bad)


def test_default_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEARMAN_SERVERS", raising=False)
    assert default_servers() == [ServerAddress("localhost", 4730)]
    monkeypatch.setenv("GEARMAN_SERVERS", "x:1,y")
    assert default_servers() == [ServerAddress("x", 1), ServerAddress("y", 4730)]
    client = Client()
    assert client.servers == [ServerAddress("x", 1), ServerAddress("y", 4730)]
    client.add_server("z", 5)
    assert client.servers == [ServerAddress("z", 5)]  # explicit servers replace the default
    client.add_servers("z:5,w,[::1]:7003")
    assert client.servers == [ServerAddress("z", 5), ServerAddress("w"), ServerAddress("::1", 7003)]


def test_consistent_hash_and_round_robin() -> None:
    servers = [ServerAddress(f"10.0.0.{i}") for i in range(4)]
    one, two = ServerPool(list(servers)), ServerPool(list(reversed(servers)))
    keys = [b"key-%d" % i for i in range(400)]
    # Every client puts a key on the same server, whatever its list order.
    assert [one.order(k)[0] for k in keys] == [two.order(k)[0] for k in keys]
    spread = Counter(one.order(k)[0] for k in keys)
    assert len(spread) == 4 and min(spread.values()) > 50
    # Removing a server moves only the keys that were on it.
    three = ServerPool(servers[:3])
    moved = [k for k in keys if one.order(k)[0] != three.order(k)[0]]
    assert all(one.order(k)[0] == servers[3] for k in moved)
    # No key: round-robin.
    assert [one.order()[0] for _ in range(8)] == servers * 2


def test_failed_server_goes_last_until_its_backoff_ends() -> None:
    now = [1000.0]
    a, b = ServerAddress("a"), ServerAddress("b")
    pool = ServerPool([a, b], clock=lambda: now[0])
    key = next(k for k in (b"k%d" % i for i in range(100)) if pool.order(k)[0] == a)
    pool.mark_down(a)
    assert pool.order(key) == [b, a]
    now[0] += 0.6  # first back-off is 0.5 s
    assert pool.order(key) == [a, b]
    pool.mark_down(a)  # second failure: 1 s
    now[0] += 0.6
    assert pool.order(key) == [b, a]
    pool.mark_up(a)
    assert pool.order(key) == [a, b]

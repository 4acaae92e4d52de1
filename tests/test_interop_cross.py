"""Cross-library pairs: each library's client against every other library's worker (Perl,
PHP/libgearman, pygearman, ours), third-party clients against our ``gearman -w`` worker, and
pygearman's admin client — all against our gearmand and the reference (``any_server``).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

from tests.conftest import RunningServer
from tests.interop.harness import (
    LIBRARIES,
    command_worker,
    need,
    outcomes,
    payload,
    run_client,
    status,
    task,
    wait_until,
    worker_process,
)

pytestmark = pytest.mark.timeout(60)

GEARMAN = str(Path(sys.executable).parent / "gearman")
PAIRS = [(c, w) for c, w in itertools.product(LIBRARIES, LIBRARIES) if c != w]


@pytest.mark.parametrize(("client_name", "worker_name"), PAIRS,
                         ids=[f"{c}-client-{w}-worker" for c, w in PAIRS])
def test_client_worker_pair(client_name: str, worker_name: str, any_server: RunningServer,
                            tmp_path: Path) -> None:
    """reverse, a 1 MiB binary echo, data/warning/status updates, a failure and (where the
    client asks for them) an exception, in one task set from one library to another's
    worker."""
    client, worker_lib = need(client_name), need(worker_name)
    data = payload()
    tasks = [task("reverse", "Hello World!"), task("echo", data), task("progress"),
             task("fail")]
    if client.exceptions:
        tasks.append(task("exception"))
    with worker_process(worker_lib, any_server, tmp_path) as worker:
        events = run_client(client, any_server, "tasks", tasks, exceptions=client.exceptions,
                            timeout=30)
    got = outcomes(events, len(tasks))
    assert got[0].result == b"!dlroW olleH"
    assert got[1].result == data
    assert (got[2].result, got[2].data, got[2].warnings) == (b"done", [b"d1", b"d2"], [b"w1"])
    assert got[2].status[-1] == (2, 3)
    assert got[3].failed and got[3].result is None
    if client.exceptions:
        assert got[4].exception == b"boom" and got[4].result is None
    assert sorted(j["fn"] for j in worker.jobs()) == sorted(t["fn"] for t in tasks)


@pytest.mark.parametrize("client_name", ["perl", "php", "pygearman"])
def test_client_with_gearman_command_worker(client_name: str, any_server: RunningServer) -> None:
    """Our ``gearman -w`` running ``cat`` and ``rev`` serves third-party clients: 1 MiB of
    binary through a pipe and back, and the tutorial's ``rev`` worker."""
    client = need(client_name)
    data = payload()
    base = [GEARMAN, "-h", "127.0.0.1", "-p", str(any_server.port), "-w"]
    with command_worker(any_server, [*base, "-f", "echo", "--", "cat"], ("echo",)), \
            command_worker(any_server, [*base, "-f", "reverse", "--", "rev"], ("reverse",)):
        events = run_client(client, any_server, "tasks",
                            [task("echo", data), task("reverse", "Hello World!\n")],
                            timeout=30)
        blocking = run_client(client, any_server, "do", [task("reverse", "abc\n")])
    echo, reverse = outcomes(events, 2)
    assert echo.result == data
    assert reverse.result == b"!dlroW olleH\n"
    assert outcomes(blocking, 1)[0].result == b"cba\n"


def test_pygearman_admin_client(any_server: RunningServer, tmp_path: Path) -> None:
    """pygearman's GearmanAdminClient parses our admin replies as it does the reference's:
    status, workers, version, ping (ECHO), show jobs."""
    need("pygearman")
    import gearman  # type: ignore[import-untyped]  # only once need() found it

    handles = run_client(LIBRARIES["ours"], any_server, "do",
                         [task("queued", "a", background=True),
                          task("queued", "b", background=True)])
    with worker_process(LIBRARIES["ours"], any_server, tmp_path):
        admin = gearman.GearmanAdminClient([f"127.0.0.1:{any_server.port}"], poll_timeout=5)
        rows = {row["task"]: row for row in admin.get_status()}
        assert rows["queued"] == {"task": "queued", "queued": 2, "running": 0, "workers": 0}
        assert rows["reverse"] == {"task": "reverse", "queued": 0, "running": 0, "workers": 1}
        workers = admin.get_workers()
        ours = [w for w in workers if "reverse" in w["tasks"]]
        assert len(ours) == 1
        assert sorted(ours[0]["tasks"]) == sorted(
            ["echo", "exception", "fail", "gate", "progress", "reverse"])
        assert ours[0]["ip"] == "127.0.0.1"
        assert admin.get_version().strip()
        assert 0 <= admin.ping_server() < 5
        jobs = {j["handle"]: j for j in admin.get_jobs()}
        for ev in handles:
            assert ev["handle"] in jobs
        admin.shutdown()
    wait_until(lambda: status(any_server).get("reverse", (0, 0, 0))[2] == 0,
               "the worker to leave")

"""Third-party Gearman libraries (Perl Gearman::Client/Worker, PHP's libgearman extension,
pygearman) as both client and worker, against our gearmand and the reference.

Each scenario runs once per library and once per server (``any_server``), so a behaviour
that differs between the servers shows up as one failing half. The helper scripts and the
JSON they speak are described in tests/interop/harness.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import RunningServer
from tests.interop.harness import (
    client_process,
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

THIRD_PARTY = ["perl", "php", "pygearman"]


@pytest.fixture(params=THIRD_PARTY)
def lib_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_tutorial_reverse(lib_name: str, any_server: RunningServer, tmp_path: Path) -> None:
    """The tutorial's first example: a worker for ``reverse`` and a blocking client call."""
    lib = need(lib_name)
    with worker_process(lib, any_server, tmp_path) as worker:
        events = run_client(lib, any_server, "do", [task("reverse", "Hello World!")])
        assert outcomes(events, 1)[0].result == b"!dlroW olleH"
    assert [(j["fn"], j["arg"]) for j in worker.jobs()] == [("reverse", b"Hello World!")]


def test_updates_fail_and_exception(lib_name: str, any_server: RunningServer,
                                    tmp_path: Path) -> None:
    """WORK_DATA, WORK_WARNING and WORK_STATUS reach the client in order; WORK_FAIL fails
    the task; WORK_EXCEPTION reaches a client that asked for exceptions (Perl, PHP;
    pygearman cannot ask, see the next test)."""
    lib = need(lib_name)
    tasks = [task("progress"), task("fail"), task("exception" if lib.exceptions else "fail"),
             task("reverse", "abc")]
    with worker_process(lib, any_server, tmp_path):
        events = run_client(lib, any_server, "tasks", tasks, exceptions=lib.exceptions)
    progress, fail, exception, reverse = outcomes(events, len(tasks))

    assert progress.result == b"done"
    assert progress.data == [b"d1", b"d2"]
    assert progress.warnings == [b"w1"]
    # pygearman keeps only the latest WORK_STATUS of a request
    assert progress.status == ([(2, 3)] if lib_name == "pygearman" else [(1, 3), (2, 3)])
    assert fail.failed and fail.result is None
    if lib.exceptions:
        assert exception.exception == b"boom"
        assert exception.result is None
    assert reverse.result == b"cba"
    # every task was acknowledged with a handle, and no two share one
    handles = [o.handle for o in (progress, fail, exception, reverse)]
    assert all(handles) and len(set(handles)) == 4


@pytest.mark.parametrize("lib_name", ["perl", "pygearman"])
def test_exception_without_the_option(lib_name: str, any_server: RunningServer,
                                      tmp_path: Path) -> None:
    """A worker's WORK_EXCEPTION for a client that did not ask for exceptions: our server
    sends that client WORK_FAIL with the bare handle, so the library sees a plain failure
    and goes on with its next task. The reference appends a NUL to the handle
    (decisions.md), which neither library can match to its task: Perl croaks ("Got
    work_fail for unknown handle"), pygearman raises KeyError. (PHP is not here: libgearman
    always sends OPTION_REQ exceptions.)"""
    lib = need(lib_name)
    tasks = [task("exception"), task("reverse", "abc")]
    with worker_process(lib, any_server, tmp_path):
        if any_server.kind == "ours":
            events = run_client(lib, any_server, "tasks", tasks, exceptions=False)
            exception, reverse = outcomes(events, 2)
            assert exception.failed and exception.exception is None
            assert exception.result is None
            assert reverse.result == b"cba"
        else:
            with pytest.raises((AssertionError, subprocess.TimeoutExpired)) as broken:
                run_client(lib, any_server, "tasks", tasks, exceptions=False, timeout=3)
            print(f"{lib_name} on the reference: {broken.value}")


def test_background_and_status(lib_name: str, any_server: RunningServer,
                               tmp_path: Path) -> None:
    """A background job: queued (known, not running), running with the worker's 1/2, then
    gone (unknown) once done — as seen by the library's own GET_STATUS call."""
    lib = need(lib_name)
    gate = tmp_path / "gate-open"
    (created,) = run_client(lib, any_server, "do", [task("gate", str(gate), background=True)])
    assert created["ev"] == "created"
    handle = created["handle"]
    assert handle

    def job_status() -> tuple[bool, bool, int, int]:
        (ev,) = run_client(lib, any_server, "status", handles=[handle])
        return (ev["known"], ev["running"], ev["n"], ev["d"])

    assert job_status() == (True, False, 0, 0)
    assert status(any_server)["gate"][:2] == (1, 0)
    with worker_process(lib, any_server, tmp_path) as worker:
        wait_until(lambda: job_status() == (True, True, 1, 2), "the job to run at 1/2")
        gate.touch()
        wait_until(lambda: status(any_server)["gate"][0] == 0, "the job to finish")
        assert job_status() == (False, False, 0, 0)
    assert [j["fn"] for j in worker.jobs()] == ["gate"]


def test_priorities(lib_name: str, any_server: RunningServer, tmp_path: Path) -> None:
    """Foreground and background jobs at three priorities, queued before any worker: the
    worker gets every HIGH job, then every NORMAL, then every LOW."""
    lib = need(lib_name)
    plan = [("L-fg", "low", False), ("N-bg", "normal", True), ("H-fg", "high", False),
            ("L-bg", "low", True), ("H-bg", "high", True), ("N-fg", "normal", False)]
    tasks = [task("echo", arg, priority=prio, background=bg) for arg, prio, bg in plan]
    with client_process(lib, any_server, "tasks", tasks) as client:
        for i in range(len(tasks)):
            client.wait_for(lambda e, i=i: e["ev"] == "created" and e["i"] == i)
        wait_until(lambda: status(any_server).get("echo", (0,))[0] == 6, "6 queued jobs")
        with worker_process(lib, any_server, tmp_path) as worker:
            events = client.finish()
            wait_until(lambda: status(any_server)["echo"][0] == 0, "an empty queue")
    order = [j["arg"].decode() for j in worker.jobs()]
    assert sorted(order) == sorted(arg for arg, _, _ in plan)
    assert "".join(arg[0] for arg in order) == "HHNNLL", order
    results = outcomes(events, len(tasks))
    for (arg, _, bg), got in zip(plan, results, strict=True):
        assert got.result == (None if bg else arg.encode())


def test_unique_coalescing(lib_name: str, any_server: RunningServer, tmp_path: Path) -> None:
    """Two clients submitting the same unique key while the first job runs share one job
    (same handle, one run, both get the result); two background submissions with one
    unique key queue one job."""
    lib = need(lib_name)
    gate = tmp_path / "gate-open"
    bg = run_client(lib, any_server, "do", [task("echo", "bg1", unique="bg-key", background=True),
                                            task("echo", "bg2", unique="bg-key", background=True)])
    assert bg[0]["handle"] and bg[0]["handle"] == bg[1]["handle"]
    assert status(any_server)["echo"][0] == 1

    fg = [task("gate", str(gate), unique="fg-key")]
    with worker_process(lib, any_server, tmp_path) as worker, \
            client_process(lib, any_server, "tasks", fg) as first:
        first_handle = first.wait_for(lambda e: e["ev"] == "created")["handle"]
        wait_until(lambda: [j["fn"] for j in worker.jobs()] == ["echo", "gate"],
                   "the gate job to start")
        with client_process(lib, any_server, "tasks", fg) as second:
            second_handle = second.wait_for(lambda e: e["ev"] == "created")["handle"]
            assert second_handle == first_handle
            gate.touch()
            assert outcomes(first.finish(), 1)[0].result == b"opened"
            assert outcomes(second.finish(), 1)[0].result == b"opened"
    assert [(j["fn"], j["arg"]) for j in worker.jobs()] == [
        ("echo", b"bg1"), ("gate", str(gate).encode()[:64])]


def test_binary_megabyte(lib_name: str, any_server: RunningServer, tmp_path: Path) -> None:
    """A 1 MiB payload with every byte value (NULs included) goes through unchanged, both
    ways, with the blocking call and with a task set."""
    lib = need(lib_name)
    data = payload()
    with worker_process(lib, any_server, tmp_path) as worker:
        blocking = run_client(lib, any_server, "do", [task("reverse", data)], timeout=30)
        pipelined = run_client(lib, any_server, "tasks", [task("echo", data)], timeout=30)
    assert outcomes(blocking, 1)[0].result == data[::-1]
    assert outcomes(pipelined, 1)[0].result == data
    assert [(j["fn"], j["len"]) for j in worker.jobs()] == [("reverse", len(data)),
                                                            ("echo", len(data))]

"""shell_examples/: every example runs end to end against our gearmand and prints what it should.

Each example runs as a real process in its own session, with ``GEARMAN_SERVER`` pointing at a
server started for the test and the venv's ``bin`` first on ``PATH`` (so ``gearman``,
``gearadmin`` and ``python3`` are ours), under a timeout; whatever is left of its session
afterwards is killed, so no worker outlives its test.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RunningServer, ServerFactory

EXAMPLES = Path(__file__).resolve().parent.parent / "shell_examples"
VENV_BIN = Path(sys.executable).parent


def run_example(
    server: RunningServer | None,
    script: str,
    *args: str,
    timeout: float = 30.0,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``shell_examples/<script>`` against ``server`` (None: the script starts its own);
    fail on timeout (or error)."""
    full_env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **(env or {}),
    }
    full_env.pop("GEARMAN_SERVERS", None)
    if server is not None:
        full_env["GEARMAN_SERVER"] = f"127.0.0.1:{server.port}"
    else:
        full_env.pop("GEARMAN_SERVER", None)
    proc = subprocess.Popen(
        [str(EXAMPLES / script), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{script} did not finish in {timeout}s\n--- stdout\n{out}\n--- stderr\n{err}")
    finally:
        # The scripts stop their own workers; anything still in the session is a leak.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check:
        assert proc.returncode == 0, f"{script} exited {proc.returncode}\n{out}\n--- stderr\n{err}"
    return result


def sections(output: str) -> dict[str, list[str]]:
    """The lines after each ``== title`` line, by title."""
    found: dict[str, list[str]] = {}
    current: list[str] = found.setdefault("", [])
    for line in output.splitlines():
        if line.startswith("== "):
            current = found.setdefault(line[3:], [])
        else:
            current.append(line)
    return found


@pytest.fixture
def server(start_server: ServerFactory) -> RunningServer:
    return start_server("ours")


def test_every_example_has_a_readme_and_executable_scripts() -> None:
    dirs = sorted(p for p in EXAMPLES.iterdir() if p.is_dir())
    assert {d.name for d in dirs} >= {
        "hello_world", "tutorial_python", "image_resize", "log_collection",
        "distributed_grep", "map_reduce", "async_queue", "search_engine", "retries",
    }
    for d in dirs:
        assert (d / "README.md").is_file(), d
        assert os.access(d / "run.sh", os.X_OK), d
        for script in d.glob("*.sh"):
            text = script.read_text()
            assert text.startswith("#!/usr/bin/env bash\n"), script
            assert "set -euo pipefail" in text, script
            assert os.access(script, os.X_OK), script


# -- hello world and the tutorial's PHP examples in Python --


def test_hello_world_shell_and_python_workers_and_clients(server: RunningServer) -> None:
    out = run_example(server, "hello_world/run.sh").stdout
    assert out.splitlines() == [
        "shell worker, shell client:  !dlroW olleH",
        "shell worker, python client: !dlroW olleH",
        "python worker, shell client:  !dlroW olleH",
        "python worker, python client: !dlroW olleH",
    ]


def test_tutorial_python_twins_print_what_the_tutorial_shows(server: RunningServer) -> None:
    out = run_example(server, "tutorial_python/run.sh", env={"REVERSE_DELAY": "0.02"}).stdout
    part = sections(out)

    # The plain client: a status and a data packet per character, then the result.
    expected = ["Sending job"]
    for i, char in enumerate("Hello!", 1):
        expected += [f"Status: {i}/6 complete", f"Data: {char}"]
    assert part["reverse_client.py"] == [*expected, "Success: !olleH"]

    # Concurrent tasks with callbacks: both created, both complete, DONE last.
    tasks = part["reverse_client_tasks.py"]
    handles = [line.removeprefix("CREATED: ") for line in tasks if line.startswith("CREATED: ")]
    assert len(set(handles)) == 2
    assert sorted(line for line in tasks if line.startswith("COMPLETE: ")) == sorted(
        [f"COMPLETE: {handles[0]}, oof", f"COMPLETE: {handles[1]}, rab"]
    )
    assert sorted(line for line in tasks if line.startswith("DATA: ")) == sorted(
        f"DATA: {c}" for c in "foobar"
    )
    assert f"STATUS: {handles[0]} - 3/3" in tasks
    assert tasks[-1] == "DONE"

    # Application data comes back with each task.
    assert sorted(part["reverse_client_app_data.py"][:-1]) == [
        "COMPLETE: 1, !dlroW olleH, app data: x",
        "COMPLETE: 2, Hello World!, app data: y",
    ]
    assert part["reverse_client_app_data.py"][-1] == "DONE"

    # Background job polled by handle until the server no longer knows it.
    polls = part["reverse_client_bg.py"]
    assert polls[-2:] == ["Running: false, numerator: 0, denominator: 0", "done!"]
    running = [
        re.fullmatch(r"Running: true, numerator: (\d+), denominator: 14", line)
        for line in polls[:-2]
    ]
    numerators = [int(m.group(1)) for m in running if m]
    assert numerators, polls
    assert numerators == sorted(numerators)
    assert all(
        m or line == "Running: false, numerator: 0, denominator: 0"  # still queued
        for m, line in zip(running, polls[:-2], strict=True)
    ), polls

    # The failing worker: WORK_FAIL after a status, and an exception with its text.
    assert part["reverse_client.py --function reverse_fail"] == [
        "Sending job", "Status: 1/2 complete", "Failed", "(exit status 1)",
    ]
    assert part["reverse_client.py --function reverse_exception"] == [
        "Sending job", "Exception: ValueError: cannot reverse 'Hello!'", "(exit status 1)",
    ]

    # What the worker printed, as the PHP worker does.
    worker = part["what reverse_worker.py printed"]
    assert worker[:2] == ["Starting", "Waiting for job..."]
    assert re.fullmatch(r"Received job: H:\S+", worker[2])
    assert worker[3:5] == ["Workload: Hello! (6)", "Sending status: 1/6 complete"]
    assert "Result: !olleH" in worker
    assert "Result: tset a si siht" in worker


# -- image resize --


@pytest.fixture
def imagemagick() -> None:
    if not (shutil.which("convert") and shutil.which("identify")):
        pytest.skip("ImageMagick (convert, identify) is not installed")


def identify(path: Path) -> str:
    return subprocess.run(
        ["identify", "-format", "%m %wx%h", str(path)],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout


@pytest.mark.usefixtures("imagemagick")
@pytest.mark.parametrize(("size", "thumb_size"), [("1600x1200", "200x150"), ("900x900", "150x150")])
def test_image_resize_makes_a_thumbnail(
    server: RunningServer, tmp_path: Path, size: str, thumb_size: str
) -> None:
    large, thumb = tmp_path / "large.jpg", tmp_path / "thumb.jpg"
    subprocess.run(["convert", "-size", size, "gradient:red-blue", str(large)],
                   check=True, timeout=30)
    out = run_example(server, "image_resize/run.sh", str(large), str(thumb)).stdout
    assert identify(thumb) == f"JPEG {thumb_size}"
    assert out == f"{size} {large} -> {thumb_size} {thumb}\n"


# -- log collection and distributed grep --


def test_log_collection_stores_every_line_once(server: RunningServer, tmp_path: Path) -> None:
    work = tmp_path / "logs"
    out = run_example(server, "log_collection/run.sh", str(work)).stdout
    access = (work / "access_log").read_text().splitlines()
    assert len(access) == 30
    stored = [line for n in (1, 2, 3) for line in (work / f"host{n}/log_file").read_text()
              .splitlines()]
    assert sorted(stored) == sorted(access)  # every line on exactly one log host
    counts = [int(m) for m in re.findall(r"^host\d: (\d+) lines$", out, re.M)]
    assert len(counts) == 3 and sum(counts) == 30
    assert out.splitlines()[-1] == "total: 30 of 30 lines stored"


def test_distributed_grep_gathers_matches_from_every_host(
    server: RunningServer, tmp_path: Path
) -> None:
    work = tmp_path / "logs"
    out = run_example(server, "distributed_grep/run.sh", "POST /login", str(work)).stdout
    expected = [line for line in (work / "access_log").read_text().splitlines()
                if "POST /login" in line]
    assert len(expected) == 5
    assert sorted(out.splitlines()) == sorted(expected)
    hosts_with_matches = [n for n in (1, 2, 3)
                          if "POST /login" in (work / f"host{n}/log_file").read_text()]
    assert hosts_with_matches  # the matches came from the hosts' own files


# -- map/reduce --


def test_map_reduce_word_count(server: RunningServer) -> None:
    out = run_example(server, "map_reduce/run.sh", "6").stdout
    counts: collections.Counter[str] = collections.Counter()
    for text in sorted((EXAMPLES / "map_reduce/texts").glob("*.txt")):
        counts.update(re.findall(r"[a-z]+", text.read_text().lower()))
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:6]
    assert out.splitlines() == [
        f"words: {sum(counts.values())} (distinct: {len(counts)}, files: 3)",
        *(f"{n} {word}" for word, n in top),
    ]


# -- asynchronous queue --


def test_async_queue_background_jobs_followed_by_handle(server: RunningServer) -> None:
    out = run_example(server, "async_queue/run.sh", env={"NOTIFY_DELAY": "0.2"}).stdout
    part = sections(out)
    created = [line for line in part[""] if line.startswith("Task created: ")]
    handles = [line.removeprefix("Task created: ") for line in created]
    assert len(set(handles)) == 3 and all(re.fullmatch(r"H:\S+:\d+", h) for h in handles)

    shown = part["gearadmin --show-jobs (handle, retries, ignore, background)"]
    assert sorted(shown[:-1]) == sorted(f"{h}\t0\t0\t1" for h in handles)
    assert shown[-1] == "."

    assert part["job_status.py"] == [f"{h}: queued" for h in handles]

    follow = part["starting the worker; following the jobs"]
    for h in handles:
        states = [line.removeprefix(f"{h}: ") for line in follow if line.startswith(f"{h}: ")]
        # The worker may grab the first job before the first poll: queued is optional.
        order = ["queued", "running", "done"]
        assert states[-1] == "done", (h, follow)
        assert [order.index(s) for s in states] == sorted(order.index(s) for s in states)
    # One worker takes the jobs in the order they were queued.
    done_order = [line.split(": ")[0] for line in follow if line.endswith(": done")]
    assert done_order == handles

    assert part["outbox"] == [
        "to alice@example.com: your report is ready",
        "to bob@example.com: build 42 passed",
        "to carol@example.com: disk 90% full",
    ]


# -- retries, dead letters and results --


def test_retries_dead_letters_and_results(start_server: ServerFactory) -> None:
    server = start_server("ours", "--retry-policy", "flaky=3,backoff=200ms..1s",
                          "--retry-policy", "convert=2,backoff=200ms", "--result-ttl", "600")
    part = sections(run_example(server, "retries/run.sh", timeout=60).stdout)
    assert part["flaky: retried after a back-off until it worked"] == [
        "done: report for march (took 3 tries)"]
    assert part["convert: the good order"] == ["done: converted order 18"]
    assert part["convert: the bad order, after its two attempts"] == [
        "failed: failed after 2 attempt(s): WORK_FAIL"]
    assert part["gearadmin --dead (function, unique key, attempts, error)"] == [
        "convert order-17 2 WORK_FAIL"]
    assert part["the bug is fixed: retry the dead letters"] == [
        "retried: 1", "done: converted bad order 17", "dead letters left: 0"]


# -- search engine: tests/test_examples_narada.py --

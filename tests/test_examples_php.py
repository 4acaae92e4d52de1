"""shell_examples/tutorial_php: the tutorial's PHP examples on Debian's php-gearman, run
against our gearmand, print what the tutorial shows (the same lines as the Python twins)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from conftest import IN_CI, RunningServer, ServerFactory
from test_examples_tutorial import run_example, sections

pytestmark = pytest.mark.slow


def php_has_gearman() -> bool:
    php = shutil.which("php")
    if php is None:
        return False
    probe = subprocess.run([php, "-r", "exit(extension_loaded('gearman') ? 0 : 1);"],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=20,
                           check=False)
    return probe.returncode == 0


@pytest.fixture
def server(start_server: ServerFactory) -> RunningServer:
    if not php_has_gearman():
        msg = "php with the gearman extension (Debian php-cli, php-gearman) is not installed"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return start_server("ours")


def test_php_examples_print_what_the_tutorial_shows(server: RunningServer) -> None:
    out = run_example(server, "tutorial_php/run.sh", env={"REVERSE_DELAY": "0.02"},
                      timeout=60).stdout
    part = sections(out)

    assert part["hello world"] == ["!dlroW olleH"]

    # Concurrent tasks with callbacks: both created, a status and data packet per character
    # of each, both complete, DONE last.
    tasks = part["reverse_client_tasks.php"]
    handles = [line.removeprefix("CREATED: ") for line in tasks if line.startswith("CREATED: ")]
    assert len(set(handles)) == 2 and all(re.fullmatch(r"H:\S+", h) for h in handles)
    # (libgearman submits the tasks newest first, so the handles' order is not the tasks')
    completes = dict(line.removeprefix("COMPLETE: ").split(", ")
                     for line in tasks if line.startswith("COMPLETE: "))
    assert set(completes) == set(handles) and sorted(completes.values()) == ["oof", "rab"]
    assert sorted(line for line in tasks if line.startswith("DATA: ")) == sorted(
        f"DATA: {c}" for c in "foobar"
    )
    for handle in handles:
        assert [line for line in tasks if line.startswith(f"STATUS: {handle} ")] == [
            f"STATUS: {handle} - {n}/3" for n in (1, 2, 3)
        ]
    assert not [line for line in tasks if line.startswith("FAILED")]
    assert tasks[-1] == "DONE"

    # Application data comes back with each task.
    app = part["reverse_client_app_data.php"]
    assert sorted(app[:-1]) == [
        "COMPLETE: 1, !dlroW olleH, app data: x",
        "COMPLETE: 2, Hello World!, app data: y",
    ]
    assert app[-1] == "DONE"

    # The background job, polled by handle until the server no longer knows it.
    polls = part["reverse_client_bg.php"]
    assert polls[-2:] == ["Running: false, numerator: 0, denominator: 0", "done!"]
    numerators = [int(m.group(1)) for line in polls[:-2]
                  if (m := re.fullmatch(r"Running: true, numerator: (\d+), denominator: 14",
                                        line))]
    assert numerators and numerators == sorted(numerators), polls
    assert all(line.startswith("Running: ") for line in polls[:-2]), polls

    # A job the worker fails.
    assert part["hello_client.php Hello! reverse_fail"] == ["Failed", "(exit status 1)"]

    # What the worker printed.
    worker = part["what reverse_worker.php printed"]
    assert worker[:2] == ["Starting", "Waiting for job..."]
    assert re.fullmatch(r"Received job: H:\S+", worker[2])
    for result in ("oof", "rab", "!dlroW olleH", "Hello World!", "tset a si siht"):
        assert f"Result: {result}" in worker
    assert "Sending status: 14/14 complete" in worker

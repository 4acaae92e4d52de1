"""shell_examples/log_collection/apache_run.sh: Debian's apache2 with a minimal config of our
own pipes its access log to ``gearman -n -f logger``; every request is stored on exactly one
log host, across ``apache2 -k graceful`` and ``apache2 -k stop``."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import IN_CI, RunningServer, ServerFactory, free_port
from test_examples_tutorial import run_example

pytestmark = pytest.mark.slow

APACHE = "/usr/sbin/apache2"
CLF = re.compile(r'127\.0\.0\.1 - - \[[^]]+\] "GET (\S+) HTTP/1\.1" (\d{3}) (\d+|-)')


@pytest.fixture
def server(start_server: ServerFactory) -> RunningServer:
    missing = [what for what, ok in [
        ("Debian apache2", os.path.exists(APACHE)),
        ("curl", shutil.which("curl") is not None),
        ("root (apache2 switches to www-data)", os.geteuid() == 0),
    ] if not ok]
    if missing:
        msg = f"needs {', '.join(missing)}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return start_server("ours")


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """The example's directory; an Apache left running by a failed run is stopped."""
    work = tmp_path / "apache"
    yield work
    pid_file = work / "apache2.pid"
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        os.kill(int(pid_file.read_text()), signal.SIGKILL)


@pytest.mark.parametrize(("pipe", "settle"), [("wrapper", ""), ("path", "1")])
def test_apache_custom_log_pipe_stores_every_request_once(
    server: RunningServer, work: Path, pipe: str, settle: str
) -> None:
    out = run_example(
        server, "log_collection/apache_run.sh", str(work), timeout=90,
        env={"APACHE_PORT": str(free_port()), "LOGGER_PIPE": pipe, "SETTLE": settle,
             "REQUESTS": "15"},
    ).stdout
    lines = out.splitlines()
    assert lines[0].startswith('== apache2 -k start (CustomLog "| /')
    assert lines[1:3] == ["== apache2 -k graceful", "== apache2 -k stop"]

    sent = collections.Counter(
        tuple(line.split(" ")[::-1]) for line in (work / "requests").read_text().splitlines()
    )  # (path, status)
    assert sum(sent.values()) == 30
    assert {status for _, status in sent} == {"200", "404"}
    assert any("graceful" in path for path, _ in sent)

    stored: collections.Counter[tuple[str, str]] = collections.Counter()
    per_host = []
    for n in (1, 2, 3):
        host_lines = (work / f"host{n}/log_file").read_text().splitlines()
        per_host.append(len([line for line in host_lines if "?probe " not in line]))
        for line in host_lines:
            match = CLF.fullmatch(line)
            assert match, line  # Common Log Format, one request a line
            if match.group(1) != "/?probe":
                stored[(match.group(1), match.group(2))] += 1
    assert stored == sent  # every request once, on one log host, none lost at restart/stop
    assert lines[3:] == [*(f"host{n}: {c} lines" for n, c in zip((1, 2, 3), per_host,
                                                                  strict=True)),
                         "total: 30 of 30 requests logged"]
    assert "AH00104" not in (work / "error.log").read_text()  # every logger started

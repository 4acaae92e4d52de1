"""shell_examples/distributed_grep/log_hosts.sh: the tutorial's slides, three log hosts on
127.0.0.2-4, each with a job server, a storage worker and a dgrep worker; the slides' query
``gearman -h HOST -f logger1 -f logger2 -f logger3 news_archive | cut -f 4,5,7 -d' '``
gives every matching line once, whichever log host's job server it asks."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import pytest
from conftest import free_port
from test_examples_tutorial import run_example, sections

pytestmark = pytest.mark.slow

ADDRESSES = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


def port_free_on_every_log_host() -> int:
    for _ in range(20):
        port = free_port()
        with contextlib.ExitStack() as stack:
            try:
                for address in ADDRESSES:
                    s = stack.enter_context(socket.socket())
                    s.bind((address, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free on 127.0.0.2-4")


def test_log_hosts_and_the_slides_distributed_grep(tmp_path: Path) -> None:
    port = port_free_on_every_log_host()
    work = tmp_path / "hosts"
    out = run_example(None, "distributed_grep/log_hosts.sh", str(work), timeout=90,
                      env={"LOG_HOST_PORT": str(port)}).stdout
    access = (work / "access_log").read_text().splitlines()
    assert len(access) == 60

    # Every line stored on exactly one log host.
    stored = [(work / f"host{n}/log_file").read_text().splitlines() for n in (1, 2, 3)]
    assert sorted(line for host in stored for line in host) == sorted(access)
    part = sections(out)
    assert part[""] == [f"host{n} ({a}): {len(stored[n - 1])} lines"
                        for n, a in enumerate(ADDRESSES, 1)]

    # The query, asked of each log host's job server, finds every match on every host.
    expected = sorted(" ".join(line.split(" ")[i] for i in (3, 4, 6))
                      for line in access if "news_archive" in line)
    assert len(expected) == 15
    for address in ADDRESSES:
        query = (f"gearman -h {address} -p {port} -f logger1 -f logger2 -f logger3 "
                 "news_archive | cut -f 4,5,7 -d' '")
        assert sorted(part[query]) == expected, query
    assert expected[0].startswith("[10/Oct/2025:13:00:04 +0000] /news_archive/")

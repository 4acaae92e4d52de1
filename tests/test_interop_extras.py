"""Library features beyond submit-and-wait, on both servers: PHP's ping (ECHO) and status by
unique key (GET_STATUS_UNIQUE); Perl's function prefix (``prefix\\tfunction``), worker
client id (SET_CLIENT_ID) and admin ``status`` parsing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import RunningServer
from tests.interop.harness import (
    admin,
    need,
    outcomes,
    run_client,
    task,
    wait_until,
    worker_process,
)

pytestmark = pytest.mark.timeout(60)


def test_php_ping_and_status_by_unique(any_server: RunningServer, tmp_path: Path) -> None:
    """GearmanClient::ping and jobStatusByUniqueKey: queued, running at 1/2, then unknown."""
    php = need("php")
    assert run_client(php, any_server, "ping") == [{"ev": "ping", "ok": True}]
    gate = tmp_path / "gate-open"
    (created,) = run_client(php, any_server, "do",
                            [task("gate", str(gate), unique="by-unique", background=True)])
    assert created["ev"] == "created"

    def by_unique() -> tuple[bool, bool, int, int]:
        (ev,) = run_client(php, any_server, "unique_status", uniques=["by-unique"])
        return (ev["known"], ev["running"], ev["n"], ev["d"])

    (unknown,) = run_client(php, any_server, "unique_status", uniques=["no-such-unique"])
    assert (unknown["known"], unknown["running"]) == (False, False)
    assert by_unique() == (True, False, 0, 0)
    with worker_process(php, any_server, tmp_path):
        wait_until(lambda: by_unique() == (True, True, 1, 2), "the job to run at 1/2")
        gate.touch()
        wait_until(lambda: by_unique()[0] is False, "the job to finish")


def test_perl_prefix_client_id_and_status(any_server: RunningServer, tmp_path: Path) -> None:
    """A Perl worker with ``prefix`` registers ``ns\\treverse`` under its client id; a Perl
    client with the same prefix reaches it, and Gearman::Client parses ``status`` (it
    skips the prefixed names, whose tab its pattern does not allow, on both servers)."""
    perl = need("perl")
    with worker_process(perl, any_server, tmp_path, functions=("ns\treverse",),
                        env={"GEARMAN_INTEROP_PREFIX": "ns"}) as worker, \
            worker_process(perl, any_server, tmp_path):
        events = run_client(perl, any_server, "do", [task("reverse", "prefixed")], prefix="ns")
        assert outcomes(events, 1)[0].result == b"dexiferp"
        assert [(j["fn"], j["arg"]) for j in worker.jobs()] == [("reverse", b"prefixed")]
        workers = [line for line in admin(any_server, "workers").splitlines()
                   if " : " in line and line.split(" : ")[1]]
        assert len(workers) == 2
        for line in workers:
            assert line.split()[1:3] == ["127.0.0.1", "perl-interop-worker"]
        assert sum("ns\treverse" in line.split(" : ")[1].split(" ") for line in workers) == 1
        (parsed,) = run_client(perl, any_server, "server_status")
    functions = parsed["functions"]
    assert sorted(functions) == ["echo", "exception", "fail", "gate", "progress", "reverse"]
    assert functions["reverse"] == {"queued": "0", "running": "0", "capable": "1"}

"""``gearadmin --top``: one TAB-separated snapshot when stdout is not a terminal, the live
rich view under a pty (refreshes, ``s`` sorts, ``q`` quits, Ctrl-C dies by SIGINT), usage
errors; and the arithmetic (percentiles from histogram buckets, rates from two readings)."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
from collections.abc import Callable

import pexpect
import pytest

from gearman_cli._top import SORT_KEYS, Reading, quantile, rows, sort_key
from tests.cli_helpers import GEARADMIN, TIMEOUT, gearman, run, server_args, worker
from tests.conftest import RunningServer, free_port

INF = float("inf")


# -- the arithmetic (fast) ------------------------------------------------------------------

def test_quantile_interpolates_inside_the_bucket() -> None:
    bounds = [0.1, 1.0, 10.0, INF]
    assert quantile(0.5, [0, 0, 0, 0], bounds) is None
    assert quantile(0.5, [10, 0, 0, 0], bounds) == pytest.approx(0.05)
    assert quantile(0.5, [0, 4, 0, 0], bounds) == pytest.approx(0.55)
    assert quantile(0.99, [99, 0, 1, 0], bounds) == pytest.approx(0.1)
    assert quantile(0.99, [0, 0, 0, 5], bounds) == 10.0  # +Inf: the last finite bound


def test_rates_come_from_two_readings() -> None:
    def fn(completed: int, submitted: int) -> dict[str, object]:
        return {"completed": completed, "failed": 1, "exceptions": 2, "timed_out": 0,
                "submitted": {"high": {"foreground": 0, "background": 0},
                              "normal": {"foreground": submitted, "background": 0},
                              "low": {"foreground": 0, "background": 0}},
                "queued": 0, "running": 0, "workers": 1}

    first = Reading(10.0, {"f": fn(4, 5)}, [])
    second = Reading(12.0, {"f": fn(10, 15), "g": fn(2, 2)}, [])
    assert rows(first, None, "s")[0]["completed_rate"] is None
    by_name = {r["function"]: r for r in rows(second, first, "s")}
    assert by_name["f"]["completed_rate"] == 3.0 and by_name["f"]["submitted_rate"] == 5.0
    assert by_name["g"]["completed_rate"] == 1.0  # new: all of it since the last reading
    assert by_name["f"]["failed"] == 3


def test_a_cluster_s_shared_queue_is_shown_once() -> None:
    """Cluster members each report the jobs waiting in the shared table: one row each."""
    from gearman_cli._top import SHARED, merge_shared

    a = Reading(1.0, {"f": {"queued": 1, "running": 0, "workers": 1}}, [], (("f", 5),))
    b = Reading(1.0, {}, [], (("f", 6), ("g", 2)))
    merged = merge_shared(rows(a, None, "a") + rows(b, None, "b"))
    shared = {r["function"]: r["queued"] for r in merged if r["server"] == SHARED}
    assert shared == {"f": 6, "g": 2}
    assert [(r["server"], r["queued"]) for r in merged if r["server"] != SHARED] == [("a", 1)]


def test_sort_keys() -> None:
    assert sort_key("Queued") == "queued" and sort_key("done/s") == "completed_rate"
    assert set(SORT_KEYS) >= {"function", "queued", "running", "workers", "failed"}
    with pytest.raises(ValueError, match="unknown column"):
        sort_key("bogus")


# -- against our gearmand (slow) ------------------------------------------------------------

HEADER = "\t".join(SORT_KEYS)


@pytest.fixture
def busy(start_server: Callable[..., RunningServer]) -> RunningServer:
    """Our gearmand with three jobs done on ``toprev`` (a worker stays) and one waiting on
    ``toppending`` (no worker)."""
    server = start_server("ours")
    assert gearman(server, "-b", "-f", "toppending", "x").returncode == 0
    return server


def _jobs(server: RunningServer, n: int) -> None:
    for _ in range(n):
        done = gearman(server, "-f", "toprev", input=b"hi")
        assert done.returncode == 0 and done.stdout == b"hi"


def _table(stdout: bytes) -> dict[tuple[str, str], dict[str, str]]:
    lines = stdout.decode().splitlines()
    assert lines[0] == HEADER
    out = {}
    for line in lines[1:]:
        cells = dict(zip(SORT_KEYS, line.split("\t"), strict=True))
        out[(cells["server"], cells["function"])] = cells
    return out


@pytest.mark.slow
def test_snapshot_when_not_a_terminal(busy: RunningServer) -> None:
    with worker(busy, "toprev", "cat"):
        _jobs(busy, 3)
        done = run(GEARADMIN, *server_args(busy), "--top", input=None)
    assert (done.returncode, done.stderr) == (0, b"")
    table = _table(done.stdout)
    name = f"127.0.0.1:{busy.port}"
    rev, pending = table[(name, "toprev")], table[(name, "toppending")]
    assert (rev["completed"], rev["queued"], rev["failed"]) == ("3", "0", "0")
    assert float(rev["run_p50"]) > 0 and float(rev["wait_p99"]) > 0
    assert rev["completed_rate"] == "-"  # one reading: no rate
    assert (pending["queued"], pending["workers"], pending["completed"]) == ("1", "0", "0")
    assert float(pending["oldest"]) > 0 and pending["run_p50"] == "-"
    # --sort: the largest queue first.
    done = run(GEARADMIN, *server_args(busy), "--top", "--sort", "queued", input=None)
    assert done.stdout.decode().splitlines()[1].split("\t")[1] == "toppending"


@pytest.mark.slow
def test_snapshot_of_several_servers(busy: RunningServer,
                                     start_server: Callable[..., RunningServer]) -> None:
    other = start_server("ours")
    assert gearman(other, "-b", "-f", "elsewhere", "x").returncode == 0
    done = run(GEARADMIN, "-h", f"127.0.0.1:{busy.port}", "-h", f"127.0.0.1:{other.port}",
               "--top", input=None)
    assert done.returncode == 0, done.stderr
    table = _table(done.stdout)
    assert (f"127.0.0.1:{busy.port}", "toppending") in table
    assert table[(f"127.0.0.1:{other.port}", "elsewhere")]["queued"] == "1"
    # One server down: the others still print, the error goes to stderr, exit 3.
    dead = free_port()
    done = run(GEARADMIN, "-h", "127.0.0.1", "-p", str(dead), "-h", f"127.0.0.1:{other.port}",
               "--top", input=None)
    assert done.returncode == 3
    assert done.stderr.decode() == f"gearadmin: cannot connect to 127.0.0.1:{dead}: " \
                                   "connection refused\n"
    assert (f"127.0.0.1:{other.port}", "elsewhere") in _table(done.stdout)


def _spawn(server: RunningServer, *args: str) -> pexpect.spawn:
    return pexpect.spawn(sys.executable, [*GEARADMIN[1:], *server_args(server), "--top",
                                          "--interval", "0.2", *args],
                         timeout=TIMEOUT, dimensions=(40, 200), env={**os.environ})


#: A row of the live table: the function's name, then its cells.
ROW = re.compile(rb"\ntoprev +([^\r\n]*)\r\n")


def _cells(child: pexpect.spawn) -> list[str]:
    child.expect(ROW)
    return child.match.group(1).decode().split()


@pytest.mark.slow
def test_live_view_refreshes_sorts_and_quits(busy: RunningServer) -> None:
    with worker(busy, "toprev", "cat"):
        _jobs(busy, 3)
        child = _spawn(busy)
        try:
            child.expect("Queued")
            cells = _cells(child)
            # Queued Running Workers Done/s Subm/s Wait-p50 Wait-p99 Run-p50 Run-p99 Oldest
            # Completed Failed
            assert (cells[0], cells[2], cells[10], cells[11]) == ("0", "1", "3", "0")
            child.expect("toppending")
            more = threading.Thread(target=_jobs, args=(busy, 2))
            more.start()
            try:
                last = "3"
                while (cells := _cells(child))[10] != "5":
                    assert cells[10] in ("3", "4")
                    if cells[10] != last:  # the refresh that saw a job end shows its rate
                        assert float(cells[3]) > 0
                    last = cells[10]
                assert float(cells[3]) > 0
            finally:
                more.join(TIMEOUT)
            child.send("s")
            child.expect("sort: queued")
            child.expect("toprev")
            child.send("q")
            child.expect(pexpect.EOF)
        finally:
            child.close(force=True)
    assert (child.exitstatus, child.signalstatus) == (0, None)


@pytest.mark.slow
def test_live_view_dies_by_sigint(busy: RunningServer) -> None:
    child = _spawn(busy)
    try:
        child.expect("toppending")
        child.sendintr()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.signalstatus == signal.SIGINT


@pytest.mark.parametrize(("args", "message"), [
    (("--top", "--sort", "bogus"), "Invalid value for '--sort': unknown column 'bogus'"),
    (("--top", "--interval", "0"), "Invalid value for '--interval': 0.0 is not in the range"),
    (("--top", "--interval", "soon"), "Invalid value for '--interval': 'soon' is not"),
    (("--top", "--status"), "--top cannot be combined with --status"),
    (("--top", "--json"), "--top cannot be combined with --json"),
    (("--status", "--interval", "2"), "--interval and --sort go with --top"),
    (("--top", "-h", "127.0.0.1:notaport"), "bad port in server address"),
])
@pytest.mark.slow
def test_bad_flags_exit_2(args: tuple[str, ...], message: str) -> None:
    done = run(GEARADMIN, *args, input=None)
    assert (done.returncode, done.stdout) == (2, b"")
    errors = [line for line in done.stderr.decode().splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert b"Traceback" not in done.stderr


@pytest.mark.slow
def test_live_view_of_several_servers_shows_the_one_down(busy: RunningServer) -> None:
    dead = free_port()
    child = pexpect.spawn(sys.executable, [*GEARADMIN[1:], "-h", f"127.0.0.1:{busy.port}",
                                           "-h", f"127.0.0.1:{dead}", "--top"],
                          timeout=TIMEOUT, dimensions=(40, 200), env={**os.environ})
    try:
        child.expect(f"cannot connect to 127.0.0.1:{dead}: connection refused")
        assert b"Server" in child.before
        assert f"127.0.0.1:{busy.port}  toppending".encode() in child.before
        child.send("q")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_narrow_terminal_drops_columns_not_the_sort_column() -> None:
    from gearman_cli._cli_options import TopOptions
    from gearman_cli._servers import ServerAddress
    from gearman_cli._top import Live

    view = Live(TopOptions(servers=(ServerAddress("127.0.0.1", 1),), sort="run_p50"))
    cells = [dict.fromkeys(SORT_KEYS, "12.5ms") | {"function": "f"}]
    assert len(view.columns(cells, 300)) == len(SORT_KEYS) - 1  # one server: no Server
    narrow = view.columns(cells, 60)
    assert "function" in narrow and "queued" in narrow and "run_p50" in narrow
    assert "completed" not in narrow and sum(w + 2 for w in narrow.values()) <= 60


@pytest.mark.slow
@pytest.mark.reference
def test_snapshot_of_the_reference_server_from_status(
        start_server: Callable[..., RunningServer]) -> None:
    server = start_server("reference")
    assert gearman(server, "-b", "-f", "refq", "x").returncode == 0
    done = run(GEARADMIN, *server_args(server), "--top", input=None)
    assert (done.returncode, done.stderr) == (0, b"")
    row = _table(done.stdout)[(f"127.0.0.1:{server.port}", "refq")]
    assert (row["queued"], row["running"], row["workers"]) == ("1", "0", "0")
    assert row["completed"] == row["wait_p99"] == row["failed"] == "-"

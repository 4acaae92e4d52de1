"""The rows of ``bench_server.py`` for the features of performance round 3: TLS, the HTTP
front-end and the cluster mode.

Each row starts its servers through a ``launch(kind, logdir)`` that says which program
runs in that column and with which arguments, and cleans up after the run (the cluster's
tables). A setup that cannot be made here (no OpenSSL headers for the load generator, no
trustme, no psycopg, PostgreSQL down) raises ``Skip``: the row's cell reads
"skipped: reason" and the rest of the run goes on.

* TLS: ours with ``--ssl`` beside ours plaintext (the reference's ``--ssl`` serves
  plaintext, so it is no anchor): the second column is ours plaintext, the ratio TLS /
  plaintext. The C load generator speaks TLS to the server (clients and workers) and
  verifies its certificate against the run's CA (made with trustme).
* HTTP: ``-r http --http-port P`` on both servers; K connections POST a 100-byte body to
  ``/echo`` one request at a time, 32 echo workers on the Gearman port. The reference
  answers HTTP/1.0 and closes the connection after each answer (also with
  ``Connection: Keep-Alive``), so the keep-alive row can only measure ours; its reference
  cell says so when that is what it saw. The connection-per-request row sends
  ``Connection: close`` and waits for the server to close, on both servers.
* Cluster: background submits (unique key per job: the reference's ``-q Postgres``
  stores an empty unique as "" and refuses the second such job) through one member of
  ``--cluster`` on PostgreSQL beside the reference's ``-q Postgres``; a fresh table (and
  cluster name) per start, dropped afterwards.
"""

from __future__ import annotations

import math
import re
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import bench_server as bs

CONNINFO = "host=127.0.0.1 port=5432 dbname=test user=postgres"


class Skip(Exception):
    """This row cannot run here; the message is the reason printed in its cell."""


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class Launch:
    """How one column of a row runs: which program, with which arguments."""

    server: str  # "ours" or "reference"
    args: tuple[str, ...] = ()
    cleanup: Callable[[], None] = field(default=_nothing)


#: What the current start chose, for the scenario function that runs against it.
STATE: dict[str, object] = {"kind": "", "tls": False, "http_port": 0, "certs": None}


def need_c(what: str) -> None:
    if bs.SETTINGS.exe is None:
        raise Skip(f"{what} needs the C load generator (not the Python fallback)")


def _certs(logdir: str) -> dict[str, str]:
    certs = STATE["certs"]
    if not isinstance(certs, dict):
        try:
            from bench_tls import make_certs
            certs = make_certs(logdir)
        except ImportError as e:
            raise Skip(f"no trustme to make certificates ({e})") from None
        STATE["certs"] = certs
    return certs


def tls_launch(kind: str, logdir: str) -> Launch:
    """Ours with --ssl; in the reference's column, ours plaintext (the anchor)."""
    need_c("TLS")
    if not bs.SETTINGS.tls:
        raise Skip("no OpenSSL headers (loadgen.c built without TLS)")
    STATE["kind"], STATE["tls"] = kind, kind == "ours"
    if kind != "ours":
        return Launch("ours")
    certs = _certs(logdir)
    return Launch("ours", ("--ssl", "--ssl-certificate", certs["cert"], "--ssl-key",
                           certs["key"]))


def scenario_tls(clients: int, inflight: int, workers: int
                 ) -> Callable[[int, int], bs.Outcome]:
    def run(port: int, jobs: int) -> bs.Outcome:
        certs = STATE["certs"]
        tls = ["--tls", "--tls-ca", certs["ca"]] if STATE["tls"] and isinstance(
            certs, dict) else []
        r = bs.run_c("roundtrip", port, jobs, "--clients", str(clients), "--inflight",
                     str(inflight), "--workers", str(workers), "--procs", bs.c_procs(), *tls)
        return bs.c_outcome(r, float(str(r["rate"])))
    return run


def http_launch(kind: str, logdir: str) -> Launch:
    need_c("HTTP")
    port = bs.free_port()
    STATE["kind"], STATE["http_port"] = kind, port
    return Launch(kind, ("-r", "http", "--http-port", str(port)))


_CLOSED_AFTER = re.compile(r"closed (?:keep-alive )?HTTP connection \d+ after (\d+) answers")


def scenario_http(connections: int, close: bool) -> Callable[[int, int], bs.Outcome]:
    """K HTTP connections, one request in flight each; keep-alive or one per request."""
    def run(port: int, jobs: int) -> bs.Outcome:
        http_port = int(str(STATE["http_port"]))
        bs.wait_port(http_port)
        r = bs.run_c("http", port, jobs, "--http-port", str(http_port), "--clients",
                     str(connections), "--workers", "32", "--procs", bs.c_procs(),
                     *(["--http-close"] if close else []))
        out = bs.c_outcome(r, float(str(r["rate"])))
        kinds = r.get("error_kinds")
        seen = _CLOSED_AFTER.search(out.detail)
        if (not close and STATE["kind"] == "reference" and seen and seen.group(1) == "1"
                and isinstance(kinds, dict) and set(kinds) == {"connection_closed"}):
            # Seen live, each run: no keep-alive there, so no figure for this row.
            return bs.Outcome(math.nan, "no keep-alive: closed the connection after its "
                              "first answer (HTTP/1.0)")
        return out
    return run


def cluster_launch(kind: str, logdir: str) -> Launch:
    """Ours: one member of a fresh cluster; the reference: -q Postgres, a fresh table."""
    need_c("the cluster row")
    try:
        import psycopg
    except ImportError:
        raise Skip("no psycopg (pip install psycopg)") from None
    try:
        psycopg.connect(CONNINFO, connect_timeout=3).close()
    except psycopg.Error as e:
        why = str(e).strip().splitlines()[0].rsplit("failed: ", 1)[-1][:80]
        raise Skip(f"PostgreSQL at 127.0.0.1:5432 unreachable ({why})") from None
    table = f"bench_{secrets.token_hex(4)}"
    STATE["rows_table"] = f"{table}_cluster" if kind == "ours" else table
    args: tuple[str, ...] = ("--libpq-conninfo", CONNINFO, "--libpq-table", table)
    if kind == "ours":
        args = ("-q", "postgres", *args, "--cluster", table)
    else:
        args = ("-q", "Postgres", *args)

    def drop() -> None:
        try:
            with psycopg.connect(CONNINFO, autocommit=True, connect_timeout=5) as conn:
                for suffix in ("", "_cluster", "_cluster_members", "_cluster_relay"):
                    conn.execute(f"DROP TABLE IF EXISTS {table}{suffix}")
        except psycopg.Error as e:
            print(f"bench_server: could not drop {table}*: {e}", file=sys.stderr)

    return Launch(kind, args, drop)


def scenario_cluster(port: int, jobs: int) -> bs.Outcome:
    """Background submits; then every job must be a row in PostgreSQL (no worker ran)."""
    import psycopg
    r = bs.run_c("bg", port, jobs, "--function", "bgpg", "--window", "1000", "--payload",
                 "100", "--unique")
    out = bs.c_outcome(r, float(str(r["rate"])))
    try:
        with psycopg.connect(CONNINFO, connect_timeout=5) as conn:
            row = conn.execute(f"SELECT count(*) FROM {STATE['rows_table']} WHERE "
                               "function_name = 'bgpg'").fetchone()
    except psycopg.Error as e:
        return replace(out, note=f"FAILED (rows not counted: {type(e).__name__})",
                       detail=str(e).strip()[:200])
    stored = int(row[0]) if row else 0
    if stored != jobs and not out.note:
        return replace(out, note=f"FAILED ({stored} of {jobs} jobs in PostgreSQL)",
                       detail=f"{stored} rows in {STATE['rows_table']}, {jobs} submitted")
    return out


def rows(scenario: type[bs.Scenario]) -> list[bs.Scenario]:
    """The new rows, in the order they print."""
    http_jobs = 5000
    return [
        scenario("round trips over TLS, 4x32 in flight, 32 workers", "jobs/s",
                 scenario_tls(4, 32, 32), True, launch=tls_launch, anchor="ours plaintext"),
        scenario("HTTP front-end, keep-alive, 8 connections", "requests/s",
                 scenario_http(8, False), True, jobs=http_jobs, launch=http_launch),
        scenario("HTTP front-end, a connection per request, 8 at a time", "requests/s",
                 scenario_http(8, True), True, jobs=http_jobs // 2, launch=http_launch),
        scenario("background submits via a cluster member (reference: -q Postgres), "
                 "unique per job, 2,000 jobs", "jobs/s", scenario_cluster, True,
                 jobs=2000, launch=cluster_launch),
    ]


def notes(names: list[str], kinds: list[str]) -> None:
    """What the new rows measured against what, printed under the table."""
    said = {
        "TLS": "TLS row: ours --ssl (TLS 1.3; clients and workers over TLS, the certificate "
               "verified against the run's CA) beside ours plaintext, NOT the reference (its "
               "--ssl serves plaintext); the second column is ours plaintext and the ratio "
               "TLS / plaintext.",
        "HTTP": "HTTP rows: -r http on both servers; N connections, one request in flight "
                "each (not pipelined), POST /echo with a 100-byte body answered by 32 echo "
                "workers on the Gearman port; each answer must be 200 with the body. The "
                "reference answers HTTP/1.0 and closes the connection after each answer, "
                "so it has no keep-alive figure; the connection-per-request row sends "
                "Connection: close to both and waits for the server to close.",
        "cluster": "Cluster row: ours is one member of a fresh --cluster (-q postgres, "
                   "PostgreSQL at 127.0.0.1:5432); the reference runs -q Postgres (its "
                   "libpq queue); a unique key per job (the reference refuses a second job "
                   "with an empty unique), a fresh table per start, dropped after.",
    }
    if "reference" not in kinds:
        said["TLS"] += " (With --only ours, the anchor column is left out.)"
    for key, text in said.items():
        if any(key in name for name in names):
            print(f"\n{text}")

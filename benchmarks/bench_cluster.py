#!/usr/bin/env python3
"""Background submits and drain through a gearmand cluster on one PostgreSQL, beside the
single-server PostgreSQL queue, with the CPU each process spent (docs/cluster.md).

For each setup (the single-server ``-q postgres`` queue; clusters of 1, 2 and 3 members):

* **submits**: N background jobs (100-byte payloads) pipelined, window 1000, on one
  connection per server (the jobs split evenly), no worker connected; the clock stops at
  the last JOB_CREATED.
* **drain**: then W worker connections per server (in one load process per server)
  take the jobs (GRAB_JOB, WORK_COMPLETE; PRE_SLEEP when there is none); the clock stops
  when all N completions are sent and the table is empty. Each payload must arrive
  exactly once.

CPU seconds of every gearmand and of PostgreSQL (all its processes, from /proc) over
each phase, as total and per job. PostgreSQL is shared with anything else on the
machine: run on a quiet machine. Nothing here is asserted; speed is not a test.

    .venv/bin/python benchmarks/bench_cluster.py [-n 5000] [-w 4]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocol import NEED_DATA, Packet, PacketType, Parser, encode_req

PT = PacketType
CONNINFO = "host=127.0.0.1 port=5432 dbname=test user=postgres"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Conn:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.parser = Parser()

    def packets(self, count: int) -> list[Packet]:
        out: list[Packet] = []
        while len(out) < count:
            ev = self.parser.next_event()
            if ev is NEED_DATA:
                data = self.sock.recv(262144)
                if not data:
                    raise EOFError("server closed")
                self.parser.receive_data(data)
                continue
            assert isinstance(ev, Packet)
            out.append(ev)
        return out


def submitter(port: int, payloads: list[bytes], window: int = 1000) -> None:
    conn = Conn(port)
    sent = done = 0
    while done < len(payloads):
        if sent < len(payloads) and sent - done < window:
            batch = payloads[sent:sent + window - (sent - done)]
            conn.sock.sendall(b"".join(encode_req(PT.SUBMIT_JOB_BG, b"bench", b"", p)
                                       for p in batch))
            sent += len(batch)
        reply = conn.packets(1)[0]
        if reply.type is not PT.JOB_CREATED:
            raise RuntimeError(f"submit answered {reply.type.name} {reply.args}")
        done += 1
    conn.sock.close()


def drainer(port: int, workers: int, stop: multiprocessing.synchronize.Event,
            out: multiprocessing.Queue[list[bytes]]) -> None:
    import selectors
    sel = selectors.DefaultSelector()
    got: list[bytes] = []
    conns = []
    for _ in range(workers):
        c = Conn(port)
        c.sock.sendall(encode_req(PT.CAN_DO, b"bench") + encode_req(PT.GRAB_JOB))
        c.sock.setblocking(False)
        sel.register(c.sock, selectors.EVENT_READ, c)
        conns.append(c)
    while not stop.is_set():
        for key, _ in sel.select(0.1):
            c = key.data
            try:
                data = c.sock.recv(262144)
            except BlockingIOError:
                continue
            if not data:
                raise EOFError("server closed a worker")
            c.parser.receive_data(data)
            out_bytes = []
            while (ev := c.parser.next_event()) is not NEED_DATA:
                assert isinstance(ev, Packet)
                if ev.type is PT.JOB_ASSIGN:
                    got.append(ev.args[2])
                    out_bytes.append(encode_req(PT.WORK_COMPLETE, ev.args[0], b"")
                                     + encode_req(PT.GRAB_JOB))
                elif ev.type is PT.NO_JOB:
                    out_bytes.append(encode_req(PT.PRE_SLEEP))
                elif ev.type is PT.NOOP:
                    out_bytes.append(encode_req(PT.GRAB_JOB))
            if out_bytes:
                c.sock.setblocking(True)
                c.sock.sendall(b"".join(out_bytes))
                c.sock.setblocking(False)
    out.put(got)


def rows(table: str) -> int:
    import psycopg
    with psycopg.connect(CONNINFO, autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(row[0]) if row else -1


def run_setup(label: str, members: int, cluster: bool, n: int, workers: int,
              tmp: Path) -> dict[str, object]:
    base = f"bench_{secrets.token_hex(3)}"
    table = f"{base}_cluster" if cluster else base
    args = ["-q", "postgres", "--libpq-conninfo", CONNINFO, "--libpq-table", base]
    if cluster:
        args += ["--cluster", "bench", "--cluster-lease", "30"]
    procs, ports = [], []
    for _ in range(members):
        port = free_port()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "server", "-p", str(port), "-L", "127.0.0.1",
             f"--log-file={tmp / f'{label}-{port}.log'}", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        ports.append(port)
    try:
        for port in ports:
            wait_port(port)
        time.sleep(0.3)
        pg = postgres_pids()
        pids = [p.pid for p in procs]
        payloads = [b"%08d" % i + b"x" * 92 for i in range(n)]
        parts = [payloads[i::members] for i in range(members)]
        cpu0, pg0, t0 = cpu_of(pids), cpu_of(pg), time.monotonic()
        threads = [multiprocessing.Process(target=submitter, args=(port, part))
                   for port, part in zip(ports, parts, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
            if t.exitcode:
                raise RuntimeError("a submitter failed")
        submit_s = time.monotonic() - t0
        submit_cpu, submit_pg = cpu_of(pids) - cpu0, cpu_of(pg) - pg0
        stop = multiprocessing.Event()
        queue: multiprocessing.Queue[list[bytes]] = multiprocessing.Queue()
        cpu0, pg0, t0 = cpu_of(pids), cpu_of(pg), time.monotonic()
        drainers = [multiprocessing.Process(target=drainer,
                                            args=(port, workers, stop, queue))
                    for port in ports]
        for d in drainers:
            d.start()
        deadline = time.monotonic() + 300
        while rows(table) and time.monotonic() < deadline:
            time.sleep(0.02)
        drain_s = time.monotonic() - t0
        drain_cpu, drain_pg = cpu_of(pids) - cpu0, cpu_of(pg) - pg0
        stop.set()
        got = [x for _ in drainers for x in queue.get(timeout=30)]
        for d in drainers:
            d.join()
        ok = sorted(got) == payloads
        return {"setup": label, "submits_s": n / submit_s,
                "submit_cpu_us_per_job": 1e6 * submit_cpu / n,
                "submit_pg_us_per_job": 1e6 * submit_pg / n,
                "drain_s": n / drain_s, "drain_cpu_us_per_job": 1e6 * drain_cpu / n,
                "drain_pg_us_per_job": 1e6 * drain_pg / n,
                "check": "ok" if ok else f"FAILED ({len(got)} of {n}, "
                                         f"{len(got) - len(set(got))} twice)"}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)
        import psycopg
        with psycopg.connect(CONNINFO, autocommit=True) as conn:
            for suffix in ("", "_members", "_relay"):
                conn.execute(f"DROP TABLE IF EXISTS {table}{suffix if cluster else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=5000, help="jobs per setup")
    parser.add_argument("-w", type=int, default=4, help="worker connections per server")
    opts = parser.parse_args()
    setups = [("single -q postgres", 1, False), ("cluster, 1 member", 1, True),
              ("cluster, 2 members", 2, True), ("cluster, 3 members", 3, True)]
    print("| setup | submits/s | gearmand CPU µs/job | PostgreSQL CPU µs/job "
          "| drain jobs/s | gearmand CPU µs/job | PostgreSQL CPU µs/job | check |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, members, cluster in setups:
            r = run_setup(label, members, cluster, opts.n, opts.w, Path(tmp))
            print(f"| {r['setup']} | {r['submits_s']:,.0f} | "
                  f"{r['submit_cpu_us_per_job']:,.0f} | {r['submit_pg_us_per_job']:,.0f} | "
                  f"{r['drain_s']:,.0f} | {r['drain_cpu_us_per_job']:,.0f} | "
                  f"{r['drain_pg_us_per_job']:,.0f} | {r['check']} |", flush=True)


if __name__ == "__main__":
    main()

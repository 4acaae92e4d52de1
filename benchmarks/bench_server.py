"""Side-by-side server benchmark: our gearmand and the reference C gearmand (when installed).

    .venv/bin/python benchmarks/bench_server.py [--runs 3] [--jobs 20000] [--only ours]

Each server is pinned to CPU 0 (taskset, when there are two CPUs), the load generator to
the others. Scenarios run interleaved (ours, reference, ours, ...) and the table shows
medians of the runs with the ratio ours/reference. Every scenario checks that each job
completed exactly once with its payload intact; a run with errors is reported as FAILED.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen

REFERENCE = "/usr/sbin/gearmand"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(port)


def pin(cpus: str) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", cpus]
    return []


def start(kind: str, logdir: str, extra: list[str] | None = None
          ) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = os.path.join(logdir, f"{kind}-{port}.log")
    if kind == "reference":
        cmd = [REFERENCE, "-p", str(port), "-L", "127.0.0.1", "-t", "0",
               f"--log-file={log}", "--pid-file", os.path.join(logdir, f"{port}.pid")]
    else:
        cmd = [sys.executable, "-m", "server", "-p", str(port), "-L", "127.0.0.1",
               f"--log-file={log}", "--pid-file", os.path.join(logdir, f"{port}.pid"),
               *(extra or [])]
    proc = subprocess.Popen(pin("0") + cmd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pin_self() -> None:
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))


def _workers_proc(port: int, count: int, fn: bytes, done_file: str, q: mp.Queue) -> None:
    _pin_self()
    q.put(loadgen.run_workers(port, count, fn, 120, done_file))


def _with_workers(port: int, workers: int, fn: bytes,
                  body: Callable[[], loadgen.Result]) -> tuple[loadgen.Result, int]:
    done_file = tempfile.mktemp()
    q: mp.Queue = mp.Queue()
    procs = []
    per = max(1, workers // 2) if workers >= 2 else workers
    left = workers
    while left > 0:
        n = min(per, left)
        p = mp.Process(target=_workers_proc, args=(port, n, fn, done_file, q))
        p.start()
        procs.append(p)
        left -= n
    time.sleep(0.3)
    try:
        result = body()
    finally:
        Path(done_file).touch()
        done = sum(q.get(timeout=30) for _ in procs)
        for p in procs:
            p.join(10)
        os.unlink(done_file)
    return result, done


def scenario_roundtrip(port: int, jobs: int) -> tuple[float, str]:
    result, done = _with_workers(
        port, 32, b"echo",
        lambda: loadgen.run_clients(port, 4, 100, jobs, b"echo"))
    ok = result.errors == 0 and done == result.jobs == jobs
    return result.jobs / result.seconds, "" if ok else f"FAILED ({result.errors} errors)"


def scenario_latency(port: int, jobs: int) -> tuple[float, str]:
    result, _ = _with_workers(port, 1, b"lat",
                              lambda: loadgen.run_latency(port, min(jobs, 2000), b"lat"))
    assert result.latencies
    return loadgen.median_us(result.latencies), "" if not result.errors else "FAILED"


def scenario_background(unique: bool) -> Callable[[int, int], tuple[float, str]]:
    def run(port: int, jobs: int) -> tuple[float, str]:
        fn = b"bgu" if unique else b"bgn"
        result = loadgen.run_background(port, jobs, fn, unique)
        return result.jobs / result.seconds, "" if not result.errors else "FAILED"
    return run


def scenario_drain(port: int, jobs: int) -> tuple[float, str]:
    loadgen.run_background(port, jobs, b"drain", False)
    t0 = time.perf_counter()

    def wait_empty() -> loadgen.Result:
        # Poll the admin status until the function has no jobs left.
        sock = socket.create_connection(("127.0.0.1", port))
        while True:
            sock.sendall(b"status\n")
            buf = b""
            while not buf.endswith(b".\n"):
                buf += sock.recv(65536)
            for line in buf.split(b"\n"):
                parts = line.split(b"\t")
                if parts[0] == b"drain" and parts[1] == b"0":
                    sock.close()
                    return loadgen.Result(jobs, time.perf_counter() - t0, 0)
            time.sleep(0.01)

    result, done = _with_workers(port, 100, b"drain", wait_empty)
    ok = done == jobs
    return jobs / result.seconds, "" if ok else f"FAILED ({done} of {jobs})"


def scenario_memory(kind_pid: dict[str, int]) -> Callable[[int, int], tuple[float, str]]:
    def run(port: int, jobs: int) -> tuple[float, str]:
        pid = kind_pid["pid"]
        before = rss_kib(pid)
        loadgen.run_background(port, jobs, b"mem", False, payload_size=100)
        time.sleep(0.2)
        after = rss_kib(pid)
        return (after - before) * 1024 / jobs, ""
    return run


def store_table(runs: int, jobs: int) -> None:
    """Background submits/s of our server with each embedded store beside memory."""
    with tempfile.TemporaryDirectory() as logdir:
        stores: dict[str, Callable[[str], list[str]]] = {
            "builtin (memory)": lambda d: [],
            "libsqlite3": lambda d: ["-q", "libsqlite3", "--libsqlite3-db",
                                     os.path.join(d, "q.sqlite")],
            "flatfile (fsync per batch)": lambda d: ["-q", "flatfile", "--flatfile-file",
                                                     os.path.join(d, "q.journal")],
        }
        results: dict[str, list[float]] = {}
        for run in range(runs):
            for name, args in stores.items():
                d = tempfile.mkdtemp(dir=logdir)
                proc, port = start("ours", logdir, args(d))
                try:
                    result = loadgen.run_background(port, jobs, b"st", False)
                finally:
                    proc.terminate()
                    proc.wait(10)
                ok = "" if not result.errors else " FAILED"
                print(f"run {run + 1} {name}: {result.jobs / result.seconds:,.0f}/s{ok}",
                      file=sys.stderr, flush=True)
                results.setdefault(name, []).append(result.jobs / result.seconds)
    base = statistics.median(results["builtin (memory)"])
    print("\n| store | background submits/s | ratio to memory |\n|---|---|---|")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"| {name} | {med:,.0f} | {med / base:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--only", choices=["ours", "reference"])
    ap.add_argument("--stores", action="store_true",
                    help="instead: background submits/s with each embedded store")
    ap.add_argument("--scenario", action="append", default=[],
                    help="run only scenarios whose name contains this (repeatable)")
    args = ap.parse_args()
    if args.stores:
        store_table(args.runs, args.jobs)
        return
    kinds = ["ours", "reference"]
    if args.only:
        kinds = [args.only]
    elif not os.path.exists(REFERENCE):
        kinds = ["ours"]
    _pin_self()
    current = {"pid": 0}
    scenarios: list[tuple[str, str, Callable[[int, int], tuple[float, str]], bool]] = [
        ("round trips, 4x100 in flight, 32 workers", "jobs/s", scenario_roundtrip, True),
        ("single-job latency, median", "us", scenario_latency, False),
        ("background submits, unique per job", "jobs/s", scenario_background(True), True),
        ("background submits, no unique", "jobs/s", scenario_background(False), True),
        ("drain to 100 workers", "jobs/s", scenario_drain, True),
        ("memory per queued 100-byte bg job", "bytes", scenario_memory(current), False),
    ]
    if args.scenario:
        scenarios = [s for s in scenarios if any(w in s[0] for w in args.scenario)]
    results: dict[tuple[str, str], list[float]] = {}
    notes: dict[tuple[str, str], str] = {}
    with tempfile.TemporaryDirectory() as logdir:
        for run in range(args.runs):
            for kind in kinds:
                for name, _unit, fn, _higher in scenarios:
                    proc, port = start(kind, logdir)
                    current["pid"] = proc.pid
                    cpu0 = cpu_seconds(proc.pid)
                    try:
                        value, note = fn(port, args.jobs)
                        cpu = cpu_seconds(proc.pid) - cpu0
                    finally:
                        proc.terminate()
                        proc.wait(10)
                    results.setdefault((name, kind), []).append(value)
                    if note:
                        notes[(name, kind)] = note
                    print(f"run {run + 1} {kind:9} {name}: {value:,.1f} {note}"
                          f" (server CPU {cpu * 1e6 / args.jobs:.1f} us/job)",
                          file=sys.stderr, flush=True)
    print(f"\n| measure | unit | {' | '.join(kinds)} | ratio |")
    print("|---|---|" + "---|" * len(kinds) + "---|")
    for name, unit, _fn, higher in scenarios:
        meds = [statistics.median(results[(name, k)]) for k in kinds]
        ratio = ""
        if len(meds) == 2 and meds[1]:
            ratio = f"{meds[0] / meds[1]:.2f}x"
        cells = " | ".join(f"{m:,.0f}{' ' + notes[(name, k)] if (name, k) in notes else ''}"
                           for m, k in zip(meds, kinds, strict=True))
        print(f"| {name} | {unit} ({'higher' if higher else 'lower'} is better) | {cells} "
              f"| {ratio} |")


if __name__ == "__main__":
    main()

"""TLS beside plaintext: our gearmand with ``--ssl`` and without it, the same load.

    .venv/bin/python benchmarks/bench_tls.py [--runs 3] [--jobs 20000] [--window 200]

The load is round trips (SUBMIT_JOB, the job's WORK_COMPLETE echoing the payload) from
our own library, which speaks TLS (the C load generator of bench_server.py does not):
one ``AsyncWorker`` process (64 jobs at once) and one ``AsyncClient`` process keeping
``--window`` jobs in flight on its connection, both over TLS or both plaintext. The
server is pinned to CPU 0, the load to the others (taskset, with two CPUs or more).
Certificates are made with ``trustme`` for the run (nothing is written outside a
temporary directory). Modes run interleaved (plain, tls, plain, ...); the table shows
medians: jobs per second, and the server's CPU per job (from /proc, in the timed phase)
— the cost TLS adds to the server whatever the load generator's own speed. Every result
is checked against its payload; a run with a wrong or missing one is FAILED.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_server import cpu_seconds, free_port, pin, wait_port

PAYLOAD = 100


def _pin_load() -> None:
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))


def _tls(ca_file: str | None) -> object:
    if ca_file is None:
        return False
    from gearman_cli._tls import tls_context

    return tls_context(ca_file)


def _worker_main(port: int, ca_file: str | None) -> None:
    import trio

    from gearman_cli import AsyncWorker

    _pin_load()

    async def echo(job: object) -> bytes:
        return bytes(job.data)  # type: ignore[attr-defined]

    async def main() -> None:
        worker = AsyncWorker(f"127.0.0.1:{port}", concurrency=64,
                             ssl=_tls(ca_file))  # type: ignore[arg-type]
        worker.add_function("echo", echo)
        await worker.work_forever()

    trio.run(main)


def _client_main(port: int, ca_file: str | None, jobs: int, window: int,
                 out: mp.Queue[tuple[float, int]]) -> None:
    import trio

    from gearman_cli import AsyncClient

    _pin_load()

    async def main() -> tuple[float, int]:
        wrong = 0
        async with AsyncClient(f"127.0.0.1:{port}", ssl=_tls(ca_file)  # type: ignore[arg-type]
                               ) as client:
            # Warm-up: the worker is registered and every connection is open.
            for _ in range(50):
                await client.do("echo", b"w")
            counter = iter(range(jobs))

            async def lane() -> None:
                nonlocal wrong
                for n in counter:
                    payload = n.to_bytes(8, "big") * (PAYLOAD // 8)
                    if await client.do("echo", payload) != payload:
                        wrong += 1

            out.put((time.monotonic(), 0))  # the clock starts
            cpu0 = time.process_time()
            async with trio.open_nursery() as nursery:
                for _ in range(window):
                    nursery.start_soon(lane)
            ended = time.monotonic()
            out.put((time.process_time() - cpu0, 0))
            return ended, wrong

    result = trio.run(main)
    out.put(result)


def one_run(tls: bool, jobs: int, window: int, certs: dict[str, str], logdir: str
            ) -> tuple[float, float, float, str]:
    """jobs/s, server and load CPU microseconds per job, and a FAILED note (or "")."""
    port = free_port()
    args = [sys.executable, "-m", "server", "-p", str(port), "-L", "127.0.0.1",
            "-l", os.path.join(logdir, f"{port}.log"), "-P", os.path.join(logdir, f"{port}.pid")]
    if tls:
        args += ["--ssl", "--ssl-certificate", certs["cert"], "--ssl-key", certs["key"]]
    server = subprocess.Popen(pin("0") + args, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    ca_file = certs["ca"] if tls else None
    worker = mp.Process(target=_worker_main, args=(port, ca_file), daemon=True)
    try:
        wait_port(port)
        worker.start()
        out: mp.Queue[tuple[float, int]] = mp.Queue()
        client = mp.Process(target=_client_main, args=(port, ca_file, jobs, window, out))
        client.start()
        started, _ = out.get(timeout=60)
        cpu0 = cpu_seconds(server.pid)
        worker0 = cpu_seconds(worker.pid) if worker.pid else 0.0
        client_cpu, _ = out.get(timeout=300)
        cpu1 = cpu_seconds(server.pid)
        worker1 = cpu_seconds(worker.pid) if worker.pid else 0.0
        ended, wrong = out.get(timeout=30)
        client.join(30)
        note = f"FAILED ({wrong} wrong results)" if wrong or client.exitcode else ""
        seconds = ended - started
        load = (client_cpu + worker1 - worker0) * 1e6 / jobs
        return jobs / seconds, (cpu1 - cpu0) * 1e6 / jobs, load, note
    finally:
        worker.kill()
        worker.join()
        server.terminate()
        server.wait(10)


def make_certs(directory: str) -> dict[str, str]:
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    paths = {"ca": os.path.join(directory, "ca.pem"), "cert": os.path.join(directory, "s.crt"),
             "key": os.path.join(directory, "s.key")}
    ca.cert_pem.write_to_path(paths["ca"])
    leaf.cert_chain_pems[0].write_to_path(paths["cert"])
    leaf.private_key_pem.write_to_path(paths["key"])
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--window", type=int, default=200, help="jobs in flight")
    opts = ap.parse_args()
    results: dict[str, list[tuple[float, float, float, str]]] = {"plain": [], "tls": []}
    with tempfile.TemporaryDirectory() as tmp:
        certs = make_certs(tmp)
        for run in range(opts.runs):
            for mode in ("plain", "tls"):
                rate, cpu, load, note = one_run(mode == "tls", opts.jobs, opts.window, certs,
                                                tmp)
                results[mode].append((rate, cpu, load, note))
                print(f"run {run + 1} {mode:5}: {rate:9.0f} jobs/s, server {cpu:6.1f} us/job,"
                      f" load {load:6.1f} us/job {note}", file=sys.stderr)
    rows = {}
    for mode, runs in results.items():
        failed = [n for *_, n in runs if n]
        rows[mode] = (statistics.median(r[0] for r in runs),
                      statistics.median(r[1] for r in runs),
                      statistics.median(r[2] for r in runs), failed[0] if failed else "")
    plain, tls = rows["plain"], rows["tls"]
    print(f"round trips, {opts.jobs} jobs x {PAYLOAD} B, {opts.window} in flight, "
          f"medians of {opts.runs} runs")
    print(f"{'':22}{'jobs/s':>10}{'server us/job':>15}{'load us/job':>13}")
    for name, (rate, cpu, load, note) in (("plaintext", plain), ("--ssl (TLS 1.3)", tls)):
        print(f"{name:22}{rate:10.0f}{cpu:15.1f}{load:13.1f}  {note}")
    print(f"TLS rate / plaintext rate: {tls[0] / plain[0]:.2f} "
          f"(cost {100 * (1 - tls[0] / plain[0]):.0f}%); "
          f"server CPU per job x{tls[1] / plain[1]:.2f}")


if __name__ == "__main__":
    main()

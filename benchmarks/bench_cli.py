"""Lines per second of ``gearman -n`` (ours vs the reference C tool) on the same server.

Two measurements, each for our ``gearman`` and the reference ``/usr/bin/gearman``:

* ``seq N | gearman -n -b -f x``: background jobs, one per line;
* ``seq M | gearman -n -f y`` through a ``gearman -w -f y`` worker (ours with ours, the
  reference with the reference), foreground, one job per line.

Usage::

    .venv/bin/python benchmarks/bench_cli.py [--server ours|reference|both] [-n 200000] [-m 20000]

The reference tool does one round trip per line, so it gets fewer lines (``--ref-lines``)
to keep the run short; rates are lines/s either way.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = [sys.executable, "-m", "gearman_cli"]
REFERENCE = ["/usr/bin/gearman"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextlib.contextmanager
def server(kind: str, tmp: Path) -> Iterator[int]:
    port = free_port()
    log = tmp / f"{kind}.log"
    if kind == "reference":
        cmd = ["/usr/sbin/gearmand", "-p", str(port), "-L", "127.0.0.1", f"--log-file={log}"]
    else:
        cmd = [sys.executable, "-m", "server", "-p", str(port), "-L", "127.0.0.1",
               f"--log-file={log}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def lines(n: int) -> bytes:
    return b"".join(b"%d\n" % i for i in range(1, n + 1))


def timed(cmd: list[str], data: bytes) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, input=data, stdout=subprocess.DEVNULL, check=True, timeout=600, cwd=ROOT)
    return time.perf_counter() - start


def background(tool: list[str], port: int, n: int, function: str) -> float:
    return n / timed([*tool, "-p", str(port), "-n", "-b", "-f", function], lines(n))


def through_worker(tool: list[str], port: int, n: int, function: str) -> float:
    # Ours runs 64 jobs at once (--concurrency; the default is 1, like the C tool, which
    # has no such option and always runs one).
    extra = ["--concurrency", "64"] if tool != REFERENCE else []
    worker = subprocess.Popen([*tool, "-p", str(port), "-w", "-f", function, *extra],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # registered
        return n / timed([*tool, "-p", str(port), "-n", "-f", function], lines(n))
    finally:
        worker.terminate()
        worker.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=["ours", "reference", "both"], default="both")
    parser.add_argument("-n", type=int, default=200_000, help="lines for -n -b (ours)")
    parser.add_argument("-m", type=int, default=50_000, help="lines through a worker (ours)")
    parser.add_argument("--ref-lines", type=int, default=10_000,
                        help="lines for the reference tool (one round trip per line)")
    args = parser.parse_args()
    kinds = ["ours", "reference"] if args.server == "both" else [args.server]
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            with server(kind, Path(tmp)) as port:
                ours_bg = background(OURS, port, args.n, "bg_ours")
                ref_bg = background(REFERENCE, port, args.ref_lines, "bg_ref")
                ours_fg = through_worker(OURS, port, args.m, "fg_ours")
                ref_fg = through_worker(REFERENCE, port, args.ref_lines // 4, "fg_ref")
            print(f"server={kind}")
            print(f"  -n -b          ours {ours_bg:10.0f} lines/s   reference {ref_bg:8.0f}"
                  f" lines/s   ratio {ours_bg / ref_bg:5.1f}x")
            print(f"  -n via worker  ours {ours_fg:10.0f} lines/s   reference {ref_fg:8.0f}"
                  f" lines/s   ratio {ours_fg / ref_fg:5.1f}x")
            sys.stdout.flush()
    os.environ.pop("GEARMAN_SERVER", None)


if __name__ == "__main__":
    main()

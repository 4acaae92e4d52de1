"""Start-up time of the command-line tools: ours beside the reference C tools.

Each command runs ``--runs`` times (default 20) as a fresh process; the median wall time
is printed, with the user+system CPU time per run (less sensitive to a busy machine):

* ``gearman -f bench_rt data``: a one-off foreground job, round trip through a worker;
* ``gearadmin --status``;
* ``gearman --help`` (the C tool: ``gearman -H``);
* ``python -c pass``: the interpreter alone, the floor for our tools.

Both tools talk to the same server (the reference C gearmand by default, so only the
client differs; ``--server ours`` for ours) and the same worker (the C ``gearman -w``
running ``cat``). Usage::

    .venv/bin/python benchmarks/bench_startup.py [--runs 20] [--server reference|ours]

Our tools run as installed console scripts (``.venv/bin/gearman``), as a user runs them,
with their bytecode compiled first (``compileall``, as ``pip install`` does for a
wheel): with ``PYTHONDONTWRITEBYTECODE=1`` in the environment an editable checkout never
caches bytecode and every run compiles every module again (about 20 ms more per run);
``--no-bytecode`` measures that case (it removes our packages' ``__pycache__`` and runs
the tools with ``PYTHONDONTWRITEBYTECODE=1``).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
REF_GEARMAN = "/usr/bin/gearman"
REF_GEARADMIN = "/usr/bin/gearadmin"
REF_GEARMAND = "/usr/sbin/gearmand"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def measure(cmd: list[str], runs: int, expect: bytes | None = None) -> tuple[float, float]:
    """Median wall time and median CPU time (user + system) of ``cmd``, in ms."""
    walls: list[float] = []
    cpus: list[float] = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, check=False)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != 0 or (expect is not None and done.stdout != expect):
            raise SystemExit(f"{cmd}: exit {done.returncode}, {done.stdout[:80]!r} "
                             f"{done.stderr[:200]!r}")
    return statistics.median(walls) * 1000, statistics.median(cpus) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--server", choices=["reference", "ours"], default="reference")
    parser.add_argument("--no-bytecode", action="store_true",
                        help="no bytecode cache for our packages (compile on every run)")
    args = parser.parse_args()
    for package in ("protocol", "gearman_cli"):
        if args.no_bytecode:
            shutil.rmtree(ROOT / package / "__pycache__", ignore_errors=True)
            os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
        else:
            import compileall

            compileall.compile_dir(ROOT / package, quiet=1)
    for tool in (REF_GEARMAN, REF_GEARADMIN):
        if not os.path.exists(tool):
            raise SystemExit(f"{tool} is missing (apt-get install gearman-tools)")
    gearman = str(BIN / "gearman")
    gearadmin = str(BIN / "gearadmin")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        if args.server == "reference":
            server_cmd = [REF_GEARMAND, "-p", str(port), "-L", "127.0.0.1",
                          f"--log-file={tmp}/g.log", "--pid-file", f"{tmp}/g.pid"]
        else:
            server_cmd = [sys.executable, "-m", "server", "-p", str(port), "-L", "127.0.0.1",
                          f"--log-file={tmp}/g.log", "--pid-file", f"{tmp}/g.pid"]
        server = subprocess.Popen(server_cmd, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, cwd=ROOT)
        worker = None
        try:
            wait_for_port(port)
            hp = ["-h", "127.0.0.1", "-p", str(port)]
            worker = subprocess.Popen([REF_GEARMAN, *hp, "-w", "-f", "bench_rt", "--",
                                       shutil.which("cat") or "/bin/cat"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # Warm up: the worker is registered, files are in the page cache.
            measure([REF_GEARMAN, *hp, "-f", "bench_rt", "x"], 3, b"x")
            measure([gearman, *hp, "-f", "bench_rt", "x"], 3, b"x")
            rows = [
                ("gearman -f bench_rt data (round trip)",
                 measure([gearman, *hp, "-f", "bench_rt", "data"], args.runs, b"data"),
                 measure([REF_GEARMAN, *hp, "-f", "bench_rt", "data"], args.runs, b"data")),
                ("gearadmin --status",
                 measure([gearadmin, *hp, "--status"], args.runs),
                 measure([REF_GEARADMIN, *hp, "--status"], args.runs)),
                ("gearman --help (C: gearman -H)",
                 measure([gearman, "--help"], args.runs),
                 measure([REF_GEARMAN, "-H"], args.runs)),
                ("python -c pass (the floor)",
                 measure([sys.executable, "-c", "pass"], args.runs),
                 None),
            ]
        finally:
            for proc in (worker, server):
                if proc is not None:
                    proc.terminate()
                    proc.wait(5)
    compiled = "no bytecode cache" if args.no_bytecode else "bytecode compiled"
    print(f"median of {args.runs} runs, server: {args.server} gearmand, {compiled}; "
          f"wall ms (cpu ms user+sys)")
    print(f"{'command':<40} {'ours':>16} {'C tool':>16}")
    for name, ours, ref in rows:
        theirs = f"{ref[0]:7.1f} ({ref[1]:5.1f})" if ref else ""
        print(f"{name:<40} {ours[0]:7.1f} ({ours[1]:5.1f}) {theirs:>16}")


if __name__ == "__main__":
    main()

"""Connection churn: server CPU per connection, ours beside the reference.

Each round opens a connection and closes it (``--echo``: after one ECHO round trip),
``--count`` times in a row from this process, against our gearmand and the reference
C gearmand (/usr/sbin/gearmand, when installed). The figure is the server's own CPU time
(user + system, from /proc) divided by the number of connections.

    .venv/bin/python benchmarks/bench_connect.py --count 5000 [--echo]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocol import PacketType, encode_req  # noqa: E402

REFERENCE = "/usr/sbin/gearmand"
ECHO = encode_req(PacketType.ECHO_REQ, b"x")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def start(kind: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    if kind == "ours":
        cmd = [sys.executable, "-m", "server", "-p", str(port), "-L", "127.0.0.1",
               f"--log-file={log}", "-P", ""]
    else:
        cmd = [REFERENCE, "-p", str(port), "-L", "127.0.0.1", f"--log-file={log}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{kind} gearmand did not start")


def churn(port: int, count: int, echo: bool) -> float:
    began = time.perf_counter()
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            if echo:
                sock.sendall(ECHO)
                got = b""
                while len(got) < len(ECHO):
                    data = sock.recv(64)
                    if not data:
                        raise RuntimeError("closed before the echo")
                    got += data
    return time.perf_counter() - began


def measure(kind: str, count: int, echo: bool) -> tuple[float, float]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = start(kind, port, Path(tmp) / "log")
        try:
            churn(port, 200, echo)  # warm up
            before = cpu_seconds(proc.pid)
            wall = churn(port, count, echo)
            time.sleep(0.5)  # let the server finish the last closes
            used = cpu_seconds(proc.pid) - before
        finally:
            proc.terminate()
            proc.wait(10)
    return used / count * 1e6, count / wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--echo", action="store_true")
    args = ap.parse_args()
    kinds = ["ours"] + (["reference"] if os.path.exists(REFERENCE) else [])
    print(f"{args.count} connections{' with one ECHO each' if args.echo else ''}")
    results = {kind: measure(kind, args.count, args.echo) for kind in kinds}
    for kind, (cpu, rate) in results.items():
        print(f"  {kind:9} server CPU {cpu:7.1f} us per connection, {rate:8.0f} connections/s")
    if len(results) == 2:
        print(f"  ours / reference CPU: {results['ours'][0] / results['reference'][0]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

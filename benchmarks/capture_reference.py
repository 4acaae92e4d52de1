"""Capture byte-exact traffic of the reference C tools through a loopback logging proxy.

Starts /usr/sbin/gearmand on a free 127.0.0.1 port, runs /usr/bin/gearman and
/usr/bin/gearadmin against a proxy that records both directions of every
connection, and writes the streams to ``tests/fixtures/`` (see its README).

    .venv/bin/python benchmarks/capture_reference.py [OUTDIR]
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

GEARMAND = "/usr/sbin/gearmand"
GEARMAN = "/usr/bin/gearman"
GEARADMIN = "/usr/bin/gearadmin"
HOST = "127.0.0.1"
TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing on {HOST}:{port}") from None
            time.sleep(0.02)


@dataclass
class Recorded:
    """Both directions of one proxied connection."""

    c2s: bytearray = field(default_factory=bytearray)
    s2c: bytearray = field(default_factory=bytearray)
    threads: list[threading.Thread] = field(default_factory=list)

    def join(self, timeout: float = TIMEOUT) -> None:
        for t in self.threads:
            t.join(timeout)
            if t.is_alive():
                raise TimeoutError("proxy pump did not finish")


class LoggingProxy:
    """Accepts on 127.0.0.1:port and forwards every connection to the upstream port."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.listener = socket.socket()
        self.listener.bind((HOST, 0))
        self.listener.listen(8)
        self.port = int(self.listener.getsockname()[1])
        self.connections: list[Recorded] = []
        self._lock = threading.Lock()
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection((HOST, self.upstream))
            rec = Recorded()
            for src, dst, log in ((down, up, rec.c2s), (up, down, rec.s2c)):
                t = threading.Thread(target=self._pump, args=(src, dst, log), daemon=True)
                rec.threads.append(t)
            with self._lock:
                self.connections.append(rec)
            for t in rec.threads:
                t.start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, log: bytearray) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                log += data
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def wait_for(self, index: int, needle: bytes, timeout: float = TIMEOUT) -> None:
        """Wait until connection ``index`` has sent ``needle`` to the server."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.connections) > index and needle in self.connections[index].c2s:
                    return
            time.sleep(0.01)
        raise TimeoutError(f"connection {index} never sent {needle!r}")

    def close(self) -> None:
        self.listener.close()


def run(cmd: list[str], port: int) -> subprocess.CompletedProcess[bytes]:
    full = [cmd[0], "-h", HOST, "-p", str(port), *cmd[1:]]
    return subprocess.run(full, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=TIMEOUT, check=False)


#: PRE_SLEEP as a worker sends it: the worker is idle and registered.
PRE_SLEEP = b"\0REQ\0\0\0\x04\0\0\0\0"


def capture(outdir: Path) -> dict[str, str]:
    """Run every scenario; returns {fixture stem: command line} for the README."""
    outdir.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = subprocess.Popen(
            [GEARMAND, "-p", str(port), "-L", HOST, f"--log-file={tmp}/gearmand.log",
             f"--pid-file={tmp}/gearmand.pid"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port)

            def save(stem: str, rec: Recorded, what: str) -> None:
                rec.join()
                (outdir / f"{stem}.c2s.bin").write_bytes(bytes(rec.c2s))
                (outdir / f"{stem}.s2c.bin").write_bytes(bytes(rec.s2c))
                made[stem] = what

            # 1. A foreground job: an idle worker, then a client.
            wproxy, cproxy = LoggingProxy(port), LoggingProxy(port)
            worker = subprocess.Popen(
                [GEARMAN, "-h", HOST, "-p", str(wproxy.port), "-w", "-f", "x", "-c", "1"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )
            wproxy.wait_for(0, PRE_SLEEP)
            client = run([GEARMAN, "-f", "x", "data"], cproxy.port)
            out, _ = worker.communicate(timeout=TIMEOUT)
            assert out == b"data", out
            save("fg_worker", wproxy.connections[0], "gearman -w -f x -c 1")
            save("fg_client", cproxy.connections[0], 'gearman -f x "data"')
            wproxy.close()
            cproxy.close()
            assert client.returncode == 0, client

            # 2. A background job (no worker for "bg"), then the status table.
            proxy = LoggingProxy(port)
            run([GEARMAN, "-b", "-f", "bg", "payload"], proxy.port)
            save("bg_client", proxy.connections[0], 'gearman -b -f bg "payload"')
            run([GEARADMIN, "--status"], proxy.port)
            save("admin_status", proxy.connections[1], "gearadmin --status")
            proxy.close()

            # 3. A failing worker command: WORK_DATA then WORK_FAIL; the client exits 1.
            wproxy, cproxy = LoggingProxy(port), LoggingProxy(port)
            worker = subprocess.Popen(
                [GEARMAN, "-h", HOST, "-p", str(wproxy.port), "-w", "-f", "fail", "-c", "1",
                 "--", "sh", "-c", "cat; exit 3"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            wproxy.wait_for(0, PRE_SLEEP)
            client = run([GEARMAN, "-f", "fail", "oops"], cproxy.port)
            worker.wait(TIMEOUT)
            save("fail_worker", wproxy.connections[0],
                 "gearman -w -f fail -c 1 -- sh -c 'cat; exit 3'")
            save("fail_client", cproxy.connections[0], 'gearman -f fail "oops"')
            wproxy.close()
            cproxy.close()
            assert client.returncode == 1, client
        finally:
            server.terminate()
            server.wait(TIMEOUT)
    return made


def main() -> None:
    outdir = Path(sys.argv[1]) if len(sys.argv) > 1 else (
        Path(__file__).resolve().parent.parent / "tests" / "fixtures"
    )
    made = capture(outdir)
    for stem, what in made.items():
        c2s = (outdir / f"{stem}.c2s.bin").stat().st_size
        s2c = (outdir / f"{stem}.s2c.bin").stat().st_size
        print(f"{stem}: {what!r} c2s={c2s}B s2c={s2c}B")


if __name__ == "__main__":
    main()

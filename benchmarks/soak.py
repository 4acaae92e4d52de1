"""Soak test of our gearmand (``scripts/soak``): mixed load, random kills, then checks.

Phase 1 (``--seconds``): clients submit background jobs (each payload a unique id) and
foreground jobs, and ask for status; workers run them and sometimes die mid-job (their
socket closed with the job unfinished); every ``--kill-every`` seconds the server is
killed with SIGKILL and started again on the same store. Clients and workers reconnect.

Then the queue is drained and checked:
- every background job that was acknowledged (JOB_CREATED) ran at least once;
- a job ran twice only inside the documented at-least-once window: its first run ended
  within ``--window`` seconds before a kill (its removal may not have been committed);
- foreground jobs that got WORK_COMPLETE got the right result.

Phase 2: with no more kills, ``--cycles`` rounds of load then drain on one server; its
RSS after each drain must stay within 10% (plus 8 MiB) of the first round's.

Only loopback traffic; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocol import NEED_DATA, Packet, PacketType, Parser, encode_req  # noqa: E402

PT = PacketType


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, port: int, queue: str, path: Path, log: Path) -> None:
        self.port, self.queue, self.path, self.log = port, queue, path, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills: list[float] = []

    def start(self) -> None:
        option = {"libsqlite3": "--libsqlite3-db", "flatfile": "--flatfile-file"}[self.queue]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "-p", str(self.port), "-L", "127.0.0.1",
             "-q", self.queue, f"{option}={self.path}", f"--log-file={self.log}", "-P", "",
             "--graceful-timeout=5"],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.kills.append(time.monotonic())
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def rss(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0


class Conn:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.parser = Parser()

    def send(self, *packets: bytes) -> None:
        self.sock.sendall(b"".join(packets))

    def packet(self) -> Packet:
        while True:
            ev = self.parser.next_event()
            if ev is not NEED_DATA:
                assert isinstance(ev, Packet), ev
                return ev
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.parser.receive_data(data)

    def text(self, line: bytes) -> bytes:
        self.sock.sendall(line)
        buf = b""
        while not buf.endswith(b".\n"):
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            buf += data
        return buf

    def close(self) -> None:
        self.sock.close()


class Ledger:
    """What clients were told and what workers did, with times."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: set[bytes] = set()
        self.runs: Counter[bytes] = Counter()
        self.first_done: dict[bytes, float] = {}
        self.foreground_ok = 0
        self.foreground_bad = 0
        self.worker_deaths = 0


def client_loop(port: int, ledger: Ledger, stop: threading.Event, prefix: str,
                rng: random.Random) -> None:
    n = 0
    while not stop.is_set():
        try:
            conn = Conn(port)
        except OSError:
            time.sleep(0.1)
            continue
        try:
            while not stop.is_set():
                batch = [b"%s-%d" % (prefix.encode(), n + i) for i in range(rng.randint(1, 50))]
                n += len(batch)
                conn.send(*(encode_req(PT.SUBMIT_JOB_BG, b"soak", b"", p) for p in batch))
                for payload in batch:
                    reply = conn.packet()
                    if reply.type is PT.JOB_CREATED:
                        with ledger.lock:
                            ledger.acked.add(payload)
                if rng.random() < 0.2:
                    data = b"fg-%d" % rng.randrange(1 << 30)
                    conn.send(encode_req(PT.SUBMIT_JOB, b"soak_fg", b"", data))
                    while True:
                        reply = conn.packet()
                        if reply.type is PT.WORK_COMPLETE:
                            with ledger.lock:
                                if reply.args[1] == data[::-1]:
                                    ledger.foreground_ok += 1
                                else:
                                    ledger.foreground_bad += 1
                            break
                        if reply.type in (PT.WORK_FAIL, PT.ERROR):
                            break
                if rng.random() < 0.1:
                    conn.send(encode_req(PT.GET_STATUS, b"H:none:1"))
                    conn.packet()
                time.sleep(rng.random() * 0.01)
        except (OSError, ConnectionError):
            pass  # the server was killed: reconnect
        finally:
            conn.close()


def worker_loop(port: int, ledger: Ledger, stop: threading.Event, rng: random.Random,
                die: float) -> None:
    while not stop.is_set():
        try:
            conn = Conn(port)
        except OSError:
            time.sleep(0.1)
            continue
        try:
            conn.send(encode_req(PT.CAN_DO, b"soak"), encode_req(PT.CAN_DO, b"soak_fg"))
            while not stop.is_set():
                conn.send(encode_req(PT.GRAB_JOB))
                reply = conn.packet()
                while reply.type is PT.NOOP:
                    reply = conn.packet()
                if reply.type is PT.NO_JOB:
                    conn.send(encode_req(PT.PRE_SLEEP))
                    conn.sock.settimeout(0.5)
                    with contextlib.suppress(TimeoutError):
                        conn.packet()  # NOOP
                    conn.sock.settimeout(10)
                    continue
                handle, function, data = reply.args
                if rng.random() < die:
                    with ledger.lock:
                        ledger.worker_deaths += 1
                    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                         b"\1\0\0\0\0\0\0\0")
                    break  # dies with the job unfinished
                if function == b"soak_fg":
                    conn.send(encode_req(PT.WORK_COMPLETE, handle, data[::-1]))
                    continue
                conn.send(encode_req(PT.WORK_COMPLETE, handle, b""))
                with ledger.lock:
                    ledger.runs[data] += 1
                    ledger.first_done.setdefault(data, time.monotonic())
        except (OSError, ConnectionError, ValueError):
            pass
        finally:
            conn.close()


def queued(port: int, function: bytes) -> int | None:
    try:
        conn = Conn(port)
        reply = conn.text(b"status\n")
        conn.close()
    except (OSError, ConnectionError):
        return None
    for line in reply.splitlines():
        parts = line.split(b"\t")
        if parts[0] == function:
            return int(parts[1])
    return 0


def drain(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if queued(port, b"soak") == 0 and queued(port, b"soak_fg") == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"queue not drained after {timeout:.0f} s")


def run_load(port: int, ledger: Ledger, seconds: float, clients: int, workers: int,
             die: float, rng: random.Random, tag: str,
             during: object = None) -> None:
    stop = threading.Event()
    threads = [threading.Thread(target=client_loop,
                                args=(port, ledger, stop, f"{tag}c{i}",
                                      random.Random(rng.random())), daemon=True)
               for i in range(clients)]
    threads += [threading.Thread(target=worker_loop,
                                 args=(port, ledger, stop, random.Random(rng.random()), die),
                                 daemon=True)
                for _ in range(workers)]
    for t in threads:
        t.start()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if callable(during):
            during()
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--kill-every", type=float, default=10)
    ap.add_argument("--queue", choices=["libsqlite3", "flatfile"], default="libsqlite3")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--worker-death", type=float, default=0.002,
                    help="chance that a worker dies holding a job")
    ap.add_argument("--window", type=float, default=2.0,
                    help="seconds before a kill in which a completed job may run again")
    ap.add_argument("--cycles", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="gearman-soak-"))
    server = Server(free_port(), args.queue, tmp / "queue", tmp / "gearmand.log")
    server.start()
    ledger = Ledger()
    next_kill = time.monotonic() + args.kill_every

    def maybe_kill() -> None:
        nonlocal next_kill
        if time.monotonic() >= next_kill:
            server.kill()
            server.start()
            next_kill = time.monotonic() + args.kill_every * (0.5 + rng.random())

    started = time.monotonic()
    print(f"phase 1: {args.seconds:.0f} s of load, server killed every ~{args.kill_every:.0f} s "
          f"({args.queue}), in {tmp}", flush=True)
    run_load(server.port, ledger, args.seconds, args.clients, args.workers,
             args.worker_death, rng, "p1", maybe_kill)
    drain_stop = threading.Event()
    drainers = [threading.Thread(target=worker_loop,
                                 args=(server.port, ledger, drain_stop, random.Random(i), 0.0),
                                 daemon=True) for i in range(args.workers)]
    for t in drainers:
        t.start()
    drain(server.port, 300)
    drain_stop.set()
    for t in drainers:
        t.join(30)

    lost = ledger.acked - set(ledger.runs)
    twice = {p for p, n in ledger.runs.items() if n > 1}
    outside = {p for p in twice
               # A worker records a run just after sending WORK_COMPLETE: one sent as the
               # server died never arrived, so it shows as ending just after the kill.
               if not any(-0.5 <= k - ledger.first_done[p] <= args.window
                          for k in server.kills)}
    print(f"  {len(ledger.acked)} background jobs acknowledged, {sum(ledger.runs.values())} "
          f"runs, {len(server.kills)} server kills, {ledger.worker_deaths} worker deaths, "
          f"{ledger.foreground_ok} foreground results ({ledger.foreground_bad} wrong), "
          f"{time.monotonic() - started:.0f} s")
    print(f"  lost: {len(lost)}; ran twice: {len(twice)} "
          f"({len(outside)} outside the {args.window:.0f} s window before a kill)")
    for payload in sorted(outside)[:5]:
        gaps = ", ".join(f"{k - ledger.first_done[payload]:+.2f}" for k in server.kills)
        print(f"    {payload.decode()}: ran {ledger.runs[payload]} times; kills at {gaps} s "
              "from its first run")

    print(f"phase 2: {args.cycles} rounds of load then drain, no kills", flush=True)
    rss: list[int] = []
    for cycle in range(args.cycles):
        run_load(server.port, ledger, max(args.seconds / 8, 5), args.clients, args.workers, 0,
                 rng, f"p2r{cycle}")
        drainers = [threading.Thread(target=worker_loop,
                                     args=(server.port, ledger, drain_stop, random.Random(i),
                                           0.0), daemon=True) for i in range(2)]
        drain_stop.clear()
        for t in drainers:
            t.start()
        drain(server.port, 300)
        drain_stop.set()
        for t in drainers:
            t.join(30)
        time.sleep(1)
        rss.append(server.rss())
        print(f"  round {cycle + 1}: RSS after drain {rss[-1] / 2**20:.1f} MiB", flush=True)
    server.stop()
    grew = rss[-1] - rss[0]
    plateau_ok = grew <= rss[0] * 0.10 + 8 * 2**20
    ok = not lost and not outside and ledger.foreground_bad == 0 and plateau_ok
    print(f"RSS: first round {rss[0] / 2**20:.1f} MiB, last {rss[-1] / 2**20:.1f} MiB "
          f"({'within' if plateau_ok else 'PAST'} the plateau bound)")
    print("soak: PASS" if ok else "soak: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

"""Side-by-side server benchmark: our gearmand and the reference C gearmand (when installed).

    .venv/bin/python benchmarks/bench_server.py [--runs 3] [--jobs 20000] [--only ours]
    .venv/bin/python benchmarks/bench_server.py --scenario idle   (the 2,000 idle workers)

Each server is pinned to CPU 0 (taskset, when there are two CPUs), the load generator to
the others. The load generator is ``loadgen.c``, compiled on demand with ``gcc -O2`` into
``benchmarks/.build/``; without gcc (or with ``--loadgen python``) the slower Python
``loadgen.py`` is used and the output says so. Scenarios run interleaved (ours,
reference, ours, ...) and the table shows medians of the runs with the ratio
ours/reference, then the CPU both sides used in the timed phase. Every scenario checks
that each job completed exactly once with its payload intact; a run with errors is
reported as FAILED (``--fault K`` injects one fault to show that it is). The rows of
TLS, the HTTP front-end and the cluster mode are in ``bench_server_rows.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen
from bench_server_py import IdleWorkers, py_cpu, wait_workers
from bench_server_py import pin_self as _pin_self
from bench_server_py import with_workers as _with_workers
from bench_server_report import pct, report

if TYPE_CHECKING:
    import bench_server_rows

REFERENCE = "/usr/sbin/gearmand"
HERE = Path(__file__).resolve().parent
LOADGEN_C = HERE / "loadgen.c"
BUILD_DIR = HERE / ".build"
LOADGEN_TIMEOUT = 300.0  # seconds; the C program stops itself and reports a timeout


@dataclass(frozen=True)
class Outcome:
    """One scenario run: the measured value, a FAILED note, and who used how much CPU."""

    value: float
    note: str = ""
    seconds: float = 0.0  # the timed phase
    loadgen_cpu: float = 0.0  # load generator CPU seconds in the timed phase
    server_cpu: float | None = None  # server CPU seconds in the timed phase, when known
    jobs: int = 0  # jobs in the timed phase
    detail: str = ""  # the first error, for the per-run line
    idle_noops: int | None = None  # idle-workers scenario: NOOPs the idle workers got
    idle_other: int = 0  # ... and any other packets (beyond their own ECHO_RES)
    idle_registered: int = 0  # ... and the workers `status` showed for their function

    def loadgen_us_per_job(self) -> float:
        return self.loadgen_cpu * 1e6 / self.jobs if self.jobs else 0.0


class Settings:
    """Run-wide choices: which load generator, the fault to inject, the server's pid."""

    exe: Path | None = None
    fault: int = 0
    server_pid: int = 0
    idle: int = 2000  # --idle: sleeping workers of --idle-function beside the round trips
    idle_function: str = "idle"
    tls: bool = False  # loadgen.c was built with OpenSSL (--tls)


SETTINGS = Settings()


def has_openssl(cc: str) -> bool:
    """The OpenSSL headers and libraries are there: a one-line program links."""
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "t.c"
        src.write_text("#include <openssl/ssl.h>\n"
                       "int main(void) { return !OPENSSL_init_ssl(0, 0); }\n")
        return subprocess.run([cc, "-o", str(Path(d) / "t"), str(src), "-lssl", "-lcrypto"],
                              capture_output=True, timeout=60).returncode == 0


def build_loadgen() -> Path | None:
    """Compile loadgen.c with gcc -O2 into benchmarks/.build/ (cached by a hash of the
    source and the flags); with OpenSSL found, -DLOADGEN_TLS (the --tls option)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return None
    SETTINGS.tls = has_openssl(cc)
    flags = ["-O2", "-Wall"] + (["-DLOADGEN_TLS"] if SETTINGS.tls else [])
    libs = ["-lssl", "-lcrypto"] if SETTINGS.tls else []
    digest = hashlib.sha256(LOADGEN_C.read_bytes() + " ".join(flags + libs).encode()
                            ).hexdigest()[:12]
    exe = BUILD_DIR / f"loadgen-{digest}"
    if not exe.exists():
        BUILD_DIR.mkdir(exist_ok=True)
        tmp = BUILD_DIR / f"loadgen-{digest}.{os.getpid()}.tmp"
        subprocess.run([cc, *flags, "-o", str(tmp), str(LOADGEN_C), *libs], check=True,
                       timeout=120)
        tmp.replace(exe)
    return exe


def loadgen_cpus() -> list[int]:
    cpus = sorted(os.sched_getaffinity(0))
    return [c for c in cpus if c != 0] or cpus


def run_c(mode: str, port: int, jobs: int, *extra: str) -> dict[str, object]:
    """Run the C load generator pinned to the load CPUs; its JSON result line."""
    assert SETTINGS.exe is not None
    cpus = ",".join(str(c) for c in loadgen_cpus())
    cmd = [*pin(cpus), str(SETTINGS.exe), mode, "--port", str(port), "--jobs", str(jobs),
           "--timeout", str(LOADGEN_TIMEOUT), *extra]
    if SETTINGS.fault:
        cmd += ["--fault", str(SETTINGS.fault)]
    if SETTINGS.server_pid:
        cmd += ["--server-pid", str(SETTINGS.server_pid)]
    proc = subprocess.run(cmd, capture_output=True, timeout=LOADGEN_TIMEOUT + 30)
    for line in reversed(proc.stdout.decode().splitlines()):
        if line.startswith("{"):
            result: dict[str, object] = json.loads(line)
            return result
    raise RuntimeError(f"loadgen exited {proc.returncode}: {proc.stderr.decode().strip()}")


def c_outcome(result: dict[str, object], value: float) -> Outcome:
    errors = int(str(result["errors"]))
    note = f"FAILED ({errors} errors)" if errors else ""
    server = float(str(result["server_cpu_seconds"])) if SETTINGS.server_pid else None
    return Outcome(value, note, float(str(result["seconds"])),
                   float(str(result["cpu_seconds"])), server, int(str(result["expected"])),
                   str(result["first_error"]))


def c_procs() -> str:
    """Load processes for the many-connection scenarios: two even on one load CPU.

    Measured on 2 vCPUs: two processes kept more work in flight than one epoll loop
    (reference gearmand round trips 60k/s against 30-47k/s); four were no better.
    """
    return str(max(2, len(loadgen_cpus())))


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


def start(kind: str, logdir: str, extra: list[str] | None = None,
          common: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], int]:
    """Start one server; ``extra`` goes to ours only, ``common`` (e.g. -b, -f) to both."""
    port = free_port()
    log = os.path.join(logdir, f"{kind}-{port}.log")
    if kind == "reference":
        cmd = [REFERENCE, "-p", str(port), "-L", "127.0.0.1", "-t", "0",
               f"--log-file={log}", "--pid-file", os.path.join(logdir, f"{port}.pid"),
               *common]
    else:
        cmd = [sys.executable, "-m", "server", "-p", str(port), "-L", "127.0.0.1",
               f"--log-file={log}", "--pid-file", os.path.join(logdir, f"{port}.pid"),
               *common, *(extra or [])]
    proc = subprocess.Popen(pin("0") + cmd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
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


def scenario_roundtrip(clients: int = 4, inflight: int = 100,
                       workers: int = 32) -> Callable[[int, int], Outcome]:
    """Round trips: ``clients`` connections x ``inflight`` jobs, ``workers`` echo workers."""
    def run(port: int, jobs: int) -> Outcome:
        if SETTINGS.exe:
            r = run_c("roundtrip", port, jobs, "--clients", str(clients), "--inflight",
                      str(inflight), "--workers", str(workers), "--procs", c_procs())
            return c_outcome(r, float(str(r["rate"])))
        cpu0 = py_cpu()
        result, done = _with_workers(
            port, workers, b"echo",
            lambda: loadgen.run_clients(port, clients, inflight, jobs, b"echo"))
        ok = result.errors == 0 and done == result.jobs == jobs
        return Outcome(result.jobs / result.seconds,
                       "" if ok else f"FAILED ({result.errors} errors)", result.seconds,
                       py_cpu() - cpu0, None, jobs)
    return run


def idle_name(clients: int, inflight: int, workers: int) -> str:
    same = SETTINGS.idle_function == "echo"
    return (f"round trips, {clients}x{inflight} in flight, {workers} workers, plus "
            f"{SETTINGS.idle:,} idle workers of "
            f"{'the same (wrong setup)' if same else 'another'} function")


def idle_server_args() -> tuple[str, ...]:
    """-b: a backlog for many connections; -f: descriptors for them (both servers)."""
    fds = SETTINGS.idle + 1024
    return ("-b", "4096", "-f", str(fds))


def scenario_idle(clients: int = 4, inflight: int = 100,
                  workers: int = 32) -> Callable[[int, int], Outcome]:
    """Round trips as ``scenario_roundtrip`` while ``--idle`` more workers sleep on a function
    no job is for; the clock starts once ``status`` shows them all. A NOOP (or any other
    packet) to one of them is an error: a server should wake only workers that can do
    the job."""
    def run(port: int, jobs: int) -> Outcome:
        n, fn = SETTINGS.idle, SETTINGS.idle_function
        if SETTINGS.exe:
            r = run_c("roundtrip", port, jobs, "--clients", str(clients), "--inflight",
                      str(inflight), "--workers", str(workers), "--procs", c_procs(),
                      "--idle", str(n), "--idle-function", fn)
            return replace(c_outcome(r, float(str(r["rate"]))),
                           idle_noops=int(str(r["idle_noops"])),
                           idle_other=int(str(r["idle_other_packets"])),
                           idle_registered=int(str(r["idle_registered"])))
        idle = IdleWorkers(port, n, fn.encode())
        try:
            want = n  # the echo workers connect later, in the round trips
            registered = wait_workers(port, fn, want)
            out = scenario_roundtrip(clients, inflight, workers)(port, jobs)
            noops, other = idle.check()
        finally:
            idle.close()
        errors = noops + other + (registered != want)
        note = out.note
        if errors:
            note = f"FAILED ({errors} idle-worker errors{', ' + out.note if out.note else ''})"
        return replace(out, note=note, idle_noops=noops, idle_other=other,
                       idle_registered=registered)
    return run


def scenario_latency(quantile: str = "p50") -> Callable[[int, int], Outcome]:
    """Single-job latency (1 client, 1 job at a time, 1 worker): ``p50`` or ``p99``, in us."""
    def run(port: int, jobs: int) -> Outcome:
        if SETTINGS.exe:
            r = run_c("latency", port, min(jobs, 2000))
            return c_outcome(r, float(str(r[f"{quantile}_us"])))
        cpu0 = py_cpu()
        result, _ = _with_workers(port, 1, b"lat",
                                  lambda: loadgen.run_latency(port, min(jobs, 2000), b"lat"))
        assert result.latencies
        lat = sorted(result.latencies)
        value = (loadgen.median_us(lat) if quantile == "p50"
                 else lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6)
        return Outcome(value, "" if not result.errors else "FAILED", result.seconds,
                       py_cpu() - cpu0, None, result.jobs)
    return run


def scenario_background(unique: bool, depth: int = 0) -> Callable[[int, int], Outcome]:
    """Background submits; ``depth`` > 0 submits that many jobs whatever ``--jobs`` says
    (the queue depth the run reaches matters to the reference, see below)."""
    def run(port: int, jobs: int) -> Outcome:
        jobs = depth or jobs
        fn = b"bgu" if unique else b"bgn"
        if SETTINGS.exe:
            # --jobs is also the queue depth reached: gearmand's unique submits slow down
            # as its queue grows (~600k/s at 20,000 jobs, ~90k/s at 100,000).
            r = run_c("bg", port, jobs, "--function", fn.decode(), "--window", "1000",
                      "--payload", "100", *(["--unique"] if unique else []))
            return c_outcome(r, float(str(r["rate"])))
        result = loadgen.run_background(port, jobs, fn, unique)
        return Outcome(result.jobs / result.seconds, "" if not result.errors else "FAILED",
                       result.seconds, result.cpu_seconds, None, jobs)
    return run


def scenario_drain(port: int, jobs: int) -> Outcome:
    if SETTINGS.exe:
        r = run_c("drain", port, jobs, "--workers", "100", "--payload", "100",
                  "--procs", c_procs())
        return c_outcome(r, float(str(r["rate"])))
    loadgen.run_background(port, jobs, b"drain", False)
    cpu0 = py_cpu()
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
    return Outcome(jobs / result.seconds, "" if ok else f"FAILED ({done} of {jobs})",
                   result.seconds, py_cpu() - cpu0, None, jobs)


def scenario_memory(kind_pid: dict[str, int]) -> Callable[[int, int], Outcome]:
    def run(port: int, jobs: int) -> Outcome:
        pid = kind_pid["pid"]
        before = rss_kib(pid)
        note = ""
        if SETTINGS.exe:
            r = run_c("bg", port, jobs, "--function", "mem", "--payload", "100")
            if int(str(r["errors"])):
                note = f"FAILED ({r['errors']} errors)"
        else:
            result = loadgen.run_background(port, jobs, b"mem", False, payload_size=100)
            note = "" if not result.errors else "FAILED"
        time.sleep(0.2)
        after = rss_kib(pid)
        return Outcome((after - before) * 1024 / jobs, note)
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
                    out = scenario_background(False)(port, jobs)
                finally:
                    proc.terminate()
                    proc.wait(10)
                ok = f" {out.note}" if out.note else ""
                print(f"run {run + 1} {name}: {out.value:,.0f}/s{ok}",
                      file=sys.stderr, flush=True)
                results.setdefault(name, []).append(out.value)
    base = statistics.median(results["builtin (memory)"])
    print("\n| store | background submits/s | ratio to memory |\n|---|---|---|")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"| {name} | {med:,.0f} | {med / base:.2f}x |")


class Scenario(NamedTuple):
    name: str
    unit: str
    fn: Callable[[int, int], Outcome]
    higher: bool  # higher is better
    server_args: tuple[str, ...] = ()  # for both servers
    jobs: int = 0  # a fixed job count for this row (0: --jobs)
    #: The performance issue's target for ours / reference: (">=" or "<=", ratio).
    target: tuple[str, float] | None = None
    #: Per-start arguments for both servers, given a fresh directory (a queue file).
    setup: Callable[[str], tuple[str, ...]] | None = None
    #: (kind, logdir) -> which program runs in that column, with what (bench_server_rows).
    launch: Callable[[str, str], bench_server_rows.Launch] | None = None
    anchor: str = ""  # what the second column holds, when it is not the reference


def sqlite_args(directory: str) -> tuple[str, ...]:
    """Both servers' SQLite queue flags (the same spelling in ours and the reference)."""
    return ("-q", "libsqlite3", "--libsqlite3-db", os.path.join(directory, "q.sqlite"))


def raise_nofile(need: int) -> None:
    """Soft RLIMIT_NOFILE to the hard limit (the servers and loadgen inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < need:
        sys.exit(f"bench_server: {need} file descriptors needed, RLIMIT_NOFILE hard limit "
                 f"is {hard} (ulimit -Hn); lower --idle")


def describe_loadgen(kind: str) -> str:
    if SETTINGS.exe:
        return (f"load generator: C ({SETTINGS.exe.relative_to(HERE.parent)}), pinned to "
                f"CPUs {loadgen_cpus()}")
    why = "gcc not found" if kind == "auto" else "--loadgen python"
    return (f"load generator: Python loadgen.py ({why}); it is slower than the servers, "
            "so the ratios say more about it than about them")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--only", choices=["ours", "reference"])
    ap.add_argument("--stores", action="store_true",
                    help="instead: background submits/s with each embedded store")
    ap.add_argument("--scenario", action="append", default=[],
                    help="run only scenarios whose name contains this (repeatable)")
    ap.add_argument("--loadgen", choices=["auto", "c", "python"], default="auto",
                    help="load generator: C (compiled on demand) or Python (default auto: "
                         "C when gcc is installed)")
    ap.add_argument("--fault", type=int, default=0, metavar="K",
                    help="C load generator: inject one fault at job K (a damaged echo, a "
                         "repeated handle, a damaged queued payload); the run must FAIL")
    ap.add_argument("--idle", type=int, default=SETTINGS.idle, metavar="N",
                    help="idle-workers scenario: N sleeping workers beside the round trips "
                         "(default %(default)s; 0 leaves the scenario out)")
    ap.add_argument("--idle-function", default=SETTINGS.idle_function, metavar="NAME",
                    help="the function the idle workers register (default %(default)s); "
                         "'echo', the busy function, is a wrong setup whose NOOPs must "
                         "make the scenario FAIL")
    args = ap.parse_args()
    if args.idle < 0:
        ap.error("--idle must be >= 0")
    SETTINGS.idle, SETTINGS.idle_function = args.idle, args.idle_function
    if args.loadgen != "python":
        SETTINGS.exe = build_loadgen()
        if SETTINGS.exe is None and args.loadgen == "c":
            ap.error("--loadgen c: no gcc/cc found to compile loadgen.c")
    if args.fault:
        if SETTINGS.exe is None:
            ap.error("--fault needs the C load generator")
        SETTINGS.fault = args.fault
    print(describe_loadgen(args.loadgen), file=sys.stderr, flush=True)
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
    # The rows of the performance issue (targets are ours / reference), then the rest of
    # the earlier table. A row with a fixed job count ignores --jobs.
    scenarios = [
        Scenario("round trips, 4x32 in flight, 100 workers", "jobs/s",
                 scenario_roundtrip(4, 32, 100), True, target=(">=", 1.0)),
        Scenario("round trips, 4x100 in flight, 32 workers", "jobs/s", scenario_roundtrip(),
                 True, target=(">=", 1.0)),
        Scenario("single-job latency, p50", "us", scenario_latency("p50"), False,
                 target=("<=", 1.1)),
        Scenario("single-job latency, p99", "us", scenario_latency("p99"), False,
                 target=("<=", 1.0)),
        Scenario("background submits, no unique, 200,000 jobs", "jobs/s",
                 scenario_background(False), True, jobs=200_000, target=(">=", 0.5)),
        Scenario("background submits, unique per job, 20,000 jobs", "jobs/s",
                 scenario_background(True), True, jobs=20_000, target=(">=", 1.0)),
        Scenario("background submits, unique per job, 200,000 jobs", "jobs/s",
                 scenario_background(True), True, jobs=200_000, target=(">=", 2.0)),
        Scenario("background submits, unique per job, 100,000 deep", "jobs/s",
                 scenario_background(True), True, jobs=100_000),
        Scenario("drain 200,000 queued jobs to 100 workers", "jobs/s", scenario_drain, True,
                 jobs=200_000, target=(">=", 2.0)),
        Scenario("memory per queued 100-byte bg job", "bytes", scenario_memory(current),
                 False, target=("<=", 0.5)),
        Scenario("background submits, -q libsqlite3, 5,000 jobs", "jobs/s",
                 scenario_background(False), True, jobs=5_000, setup=sqlite_args,
                 target=(">=", 10.0)),  # "keep" the lead (65x when the issue was filed)
    ]
    if SETTINGS.idle:
        scenarios.append(Scenario(idle_name(4, 4, 100), "jobs/s", scenario_idle(4, 4, 100),
                                  True, idle_server_args(), target=(">=", 1.0)))
        scenarios.append(Scenario(idle_name(4, 100, 32), "jobs/s", scenario_idle(), True,
                                  idle_server_args()))
    import bench_server_rows as new_rows
    scenarios += new_rows.rows(Scenario)  # TLS, the HTTP front-end, the cluster mode
    if args.scenario:
        scenarios = [s for s in scenarios if any(w in s.name for w in args.scenario)]
    if any("idle workers" in s.name for s in scenarios):
        raise_nofile(SETTINGS.idle + 1024)
    results: dict[tuple[str, str], list[Outcome]] = {}
    notes: dict[tuple[str, str], str] = {}
    with tempfile.TemporaryDirectory() as logdir:
        for run in range(args.runs):
            for kind in kinds:
                for sc in scenarios:
                    name, fn, server_args = sc.name, sc.fn, sc.server_args
                    if sc.setup:
                        server_args += sc.setup(tempfile.mkdtemp(dir=logdir))
                    jobs = sc.jobs or args.jobs
                    program, cleanup = kind, None
                    who = f"{kind:9}" if kind == "ours" or not sc.anchor else sc.anchor
                    if sc.launch:
                        try:
                            launch = sc.launch(kind, logdir)
                            program, cleanup = launch.server, launch.cleanup
                            server_args += launch.args
                            proc, port = start(program, logdir, common=server_args)
                        except Exception as e:  # any setup failure: a skipped cell
                            if cleanup:
                                cleanup()
                            why = str(e) if isinstance(e, new_rows.Skip) else f"setup: {e!r}"
                            out = Outcome(math.nan, f"skipped: {why}")
                            results.setdefault((name, kind), []).append(out)
                            notes[(name, kind)] = out.note
                            print(f"run {run + 1} {who} {name}: {out.note}",
                                  file=sys.stderr, flush=True)
                            continue
                    else:
                        proc, port = start(kind, logdir, common=server_args)
                    current["pid"] = proc.pid
                    SETTINGS.server_pid = proc.pid
                    cpu0 = cpu_seconds(proc.pid)
                    try:
                        out = fn(port, jobs)
                        cpu = cpu_seconds(proc.pid) - cpu0
                    except RuntimeError as e:  # the load generator gave no result line
                        out, cpu = Outcome(math.nan, f"FAILED ({e})"), 0.0
                    finally:
                        proc.terminate()
                        proc.wait(10)
                        if cleanup:
                            cleanup()
                    if out.server_cpu is None:
                        out = replace(out, server_cpu=cpu)
                    results.setdefault((name, kind), []).append(out)
                    if out.note:
                        notes[(name, kind)] = out.note
                    busy = ""
                    if out.seconds:
                        server_busy = pct(out.server_cpu or 0, out.seconds)
                        busy = (f"; timed phase: server {server_busy} busy, loadgen CPU "
                                f"{out.loadgen_us_per_job():.1f} us/job ="
                                f" {pct(out.loadgen_cpu, out.seconds)} of a core")
                    detail = f": {out.detail}" if out.detail else ""
                    if out.idle_noops is not None:
                        detail += (f" [idle workers: {out.idle_registered} in status, "
                                   f"{out.idle_noops} NOOPs, {out.idle_other} other packets]")
                    per_job = cpu * 1e6 / (out.jobs or jobs)
                    print(f"run {run + 1} {who} {name}: {out.value:,.1f} {out.note}{detail}"
                          f" (server CPU {per_job:.1f} us/job{busy})",
                          file=sys.stderr, flush=True)
    report(scenarios, kinds, results, notes, SETTINGS.idle, SETTINGS.idle_function)

if __name__ == "__main__":
    sys.modules["bench_server"] = sys.modules[__name__]  # one SETTINGS for bench_server_rows
    main()

"""``benchmarks/loadgen.c``'s http mode and ``--tls`` (the rows of bench_server.py): a
clean run has no errors, and a damaged echo (``--fault``) is caught, so the rows can fail.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import RunningServer, free_port, wait_for_port

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loadgen_exe() -> tuple[Path, bool]:
    """loadgen.c built as bench_server.py builds it; (path, built with TLS)."""
    if not (shutil.which("gcc") or shutil.which("cc")):
        pytest.skip("no C compiler")
    sys.path.insert(0, str(BENCH))
    try:
        import bench_server
    finally:
        sys.path.remove(str(BENCH))
    exe = bench_server.build_loadgen()
    assert exe is not None
    return exe, bench_server.SETTINGS.tls


def run(exe: Path, *args: str) -> tuple[int, dict[str, object]]:
    proc = subprocess.run([str(exe), *args, "--timeout", "60"], capture_output=True,
                          timeout=120)
    line = proc.stdout.decode().strip().splitlines()[-1]
    result: dict[str, object] = json.loads(line)
    return proc.returncode, result


@pytest.mark.parametrize("close", [False, True])
def test_http_mode_counts_and_checks(loadgen_exe: tuple[Path, bool],
                                     start_server: Callable[..., RunningServer],
                                     close: bool) -> None:
    http = free_port()
    srv = start_server("ours", "-r", "http", "--http-port", str(http))
    wait_for_port(http)
    base = ["http", "--port", str(srv.port), "--http-port", str(http), "--jobs", "300",
            "--clients", "4", "--workers", "4", *(["--http-close"] if close else [])]
    code, ok = run(loadgen_exe[0], *base)
    assert (code, ok["errors"], ok["jobs"]) == (0, 0, 300), ok["first_error"]
    code, bad = run(loadgen_exe[0], *base, "--fault", "17")
    assert code == 1 and bad["error_kinds"] == {"payload_mismatch": 1}


def test_http_keep_alive_refused_is_an_error(loadgen_exe: tuple[Path, bool],
                                             start_server: Callable[..., RunningServer]
                                             ) -> None:
    """The reference closes after each answer: the keep-alive mode must say so."""
    http = free_port()
    srv = start_server("reference", "-r", "http", "--http-port", str(http))
    wait_for_port(http)
    code, r = run(loadgen_exe[0], "http", "--port", str(srv.port), "--http-port", str(http),
                  "--jobs", "50", "--clients", "1", "--workers", "2")
    assert code == 2 and "after 1 answers" in str(r["first_error"])


def test_tls_roundtrips(loadgen_exe: tuple[Path, bool], tmp_path: Path,
                        start_server: Callable[..., RunningServer]) -> None:
    exe, tls = loadgen_exe
    if not tls:
        pytest.skip("loadgen.c built without OpenSSL")
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "s.crt"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "s.key"))
    srv = start_server("ours", "--ssl", "--ssl-certificate", str(tmp_path / "s.crt"),
                       "--ssl-key", str(tmp_path / "s.key"))
    base = ["roundtrip", "--port", str(srv.port), "--jobs", "2000", "--clients", "2",
            "--inflight", "16", "--workers", "4", "--procs", "2", "--tls", "--tls-ca",
            str(tmp_path / "ca.pem")]
    code, ok = run(exe, *base)
    assert (code, ok["errors"], ok["jobs"]) == (0, 0, 2000), ok["first_error"]
    code, bad = run(exe, *base, "--fault", "100")
    assert code == 1 and bad["error_kinds"] == {"payload_mismatch": 1}
    other = trustme.CA()  # a CA that did not sign the server's certificate
    other.cert_pem.write_to_path(str(tmp_path / "other.pem"))
    code, r = run(exe, *base[:-1], str(tmp_path / "other.pem"))
    assert code == 2 and "TLS handshake" in str(r["first_error"])

"""The gearmand command line: parsing in-process, then the real program as a process."""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from server import __main__ as entry
from server import cli, daemon, logs
from server.config import ServerConfig
from tests.conftest import REFERENCE_GEARMAND, free_port, need_reference, wait_for_port

REPO = Path(__file__).resolve().parent.parent
MAN_PAGE = REPO / "man" / "gearmand.8"
LINE = re.compile(r"^ {0,6}[A-Z]{4,8} \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} \[  main \] ")

#: Every option of the reference's ``gearmand --help`` (1.1.20), long form.
REFERENCE_OPTIONS = (
    "backlog", "daemon", "exceptions", "file-descriptors", "help", "job-retries",
    "job-handle-prefix", "hashtable-buckets", "keepalive", "keepalive-idle",
    "keepalive-interval", "keepalive-count", "log-file", "listen", "pid-file", "protocol",
    "round-robin", "queue-type", "config-file", "syslog", "coredump", "threads", "user",
    "verbose", "version", "worker-wakeup", "http-port", "port", "ssl", "ssl-ca-file",
    "ssl-certificate", "ssl-key", "libmemcached-servers", "libmemcached-prefix",
    "libsqlite3-db", "store-queue-on-shutdown", "libsqlite3-table", "libpq-conninfo",
    "libpq-table", "redis-server", "redis-port", "redis-password", "redis-prefix",
    "mysql-host", "mysql-port", "mysql-user", "mysql-password", "mysql-db", "mysql-table",
)


@pytest.fixture(autouse=True)
def no_default_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never read the machine's /etc/gearmand.conf in tests."""
    monkeypatch.setattr(cli, "DEFAULT_CONFIG_FILE", str(tmp_path / "absent-gearmand.conf"))


def parse(*args: str, env: dict[str, str] | None = None) -> cli.Invocation:
    return cli.parse_args(list(args), env or {})


def refused(*args: str) -> str:
    with pytest.raises(cli.CliError) as info:
        parse(*args)
    assert info.value.exit_code == 1
    message = info.value.format_message()
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- parsing


def test_defaults_are_the_reference_ones_with_head_retries() -> None:
    inv = parse()
    config = inv.config
    assert config.port == 4730 and config.listen == ()
    assert config.backlog == 1024  # docs/differences.md: the reference's 32 drops bursts
    assert config.job_retries is None  # HEAD: unset = unlimited
    assert config.worker_wakeup == 0 and not config.exceptions
    assert config.queue_type == "builtin" and config.queue_options == ()
    assert config.verbose == "ERROR" and inv.log.level == logging.ERROR
    assert inv.log.destination == "/var/log/gearmand.log"
    assert inv.pid_file == Path("/var/gearmand.pid") and not inv.pid_file_explicit
    assert not inv.daemon and inv.user is None and inv.file_descriptors is None
    assert config.job_handle_prefix == ServerConfig().job_handle_prefix


@pytest.mark.parametrize(("args", "level"), [
    ((), "ERROR"),
    (("-v",), "WARNING"),
    (("-vv",), "NOTICE"),
    (("-vvv",), "INFO"),
    (("-vvvv",), "DEBUG"),
    (("-vvvvvv",), "DEBUG"),
    (("-v", "-v"), "NOTICE"),
    (("--verbose=INFO",), "INFO"),
    (("--verbose", "FATAL"), "FATAL"),
    (("--verbose=ALERT", "-v"), "CRITICAL"),
    (("--verbose=NOTICE", "-vv"), "DEBUG"),
])
def test_verbosity(args: tuple[str, ...], level: str) -> None:
    inv = parse(*args)
    assert inv.config.verbose == level
    assert inv.log.level_name == level
    assert inv.log.level == logs.LEVELS[level]


@pytest.mark.parametrize("value", ["info", "Debug", "TRACE", ""])
def test_verbose_names_are_exact_upper_case(value: str) -> None:
    assert refused(f"--verbose={value}") == "Invalid value for --verbose supplied"


def test_levels_map_onto_logging() -> None:
    assert [logs.LEVELS[name] for name in logs.LEVEL_NAMES] == sorted(logs.LEVELS.values(),
                                                                      reverse=True)
    assert logs.NOTICE == 25 and logging.getLevelName(25) == "NOTICE"
    assert logs.level_name(logging.WARNING) == "WARNING"
    assert logs.level_name(logs.FATAL) == "FATAL"
    assert logs.level_name(5) == "DEBUG"
    assert logging.getLevelName("FATAL") == logging.CRITICAL  # we did not redefine it


def test_listen_is_repeatable_and_port_takes_numbers_and_services() -> None:
    inv = parse("-L", "127.0.0.1", "--listen=::1", "-p", "4731")
    assert inv.config.listen == ("127.0.0.1", "::1")
    assert inv.config.port == 4731
    assert parse("--port=0").config.port == 0
    assert parse("-p", "http").config.port == socket.getservbyname("http", "tcp")
    assert "--port" in refused("-p", "no-such-service-xyz")
    assert "--port" in refused("-p", "70000")


def test_gearmand_port_environment_replaces_the_default_port_only() -> None:
    assert parse(env={"GEARMAND_PORT": "5123"}).config.port == 5123
    assert parse("-p", "6000", env={"GEARMAND_PORT": "5123"}).config.port == 6000
    assert parse(env={"GEARMAND_PORT": ""}).config.port == 4730


@pytest.mark.parametrize(("value", "expected"), [("-1", None), ("0", 0), ("3", 3)])
def test_job_retries_head_semantics(value: str, expected: int | None) -> None:
    assert parse("-j", value).config.job_retries == expected
    assert parse(f"--job-retries={value}").config.job_retries == expected


def test_bad_numbers_are_one_line_naming_the_option() -> None:
    assert refused("-j", "-2") == "invalid value for --job-retries: -2 is less than -1"
    assert refused("-j", "abc") == "invalid value for --job-retries: 'abc' is not an integer"
    assert "--backlog" in refused("-b", "0")
    assert "--worker-wakeup" in refused("-w", "-1")
    assert refused("--hashtable-buckets=0") == "hashtable-buckets has to be greater than 0"
    assert refused("-p") == "the required argument for option '-p' is missing"


def test_server_options_reach_the_config() -> None:
    inv = parse("-R", "--exceptions", "-w", "2", "-b", "100", "--job-handle-prefix", "X:y",
                "--keepalive", "--keepalive-idle", "30", "--keepalive-interval=5",
                "--keepalive-count", "4", "--graceful-timeout", "2.5",
                "--admin-from-anywhere", "--max-packet-size", "4096")
    c = inv.config
    assert (c.exceptions, c.worker_wakeup, c.backlog) == (True, 2, 100)
    assert c.job_handle_prefix == "X:y"
    assert (c.keepalive, c.keepalive_idle, c.keepalive_interval, c.keepalive_count) == (
        True, 30, 5, 4)
    assert c.graceful_timeout == 2.5 and c.admin_from_anywhere and c.max_packet_size == 4096


def test_process_options() -> None:
    inv = parse("-dP", "rel.pid", "-u", "nobody", "-f", "512", "-t", "0", "--coredump",
                "--syslog", "-l", "rel.log")
    assert inv.daemon and inv.user == "nobody" and inv.file_descriptors == 512
    assert inv.pid_file == Path.cwd() / "rel.pid" and inv.pid_file_explicit
    assert inv.config.pid_file == inv.pid_file
    assert inv.log.destination == str(Path.cwd() / "rel.log") and inv.log.syslog
    assert inv.coredump and inv.threads == 0
    assert any("single-threaded" in note for note in inv.notes)
    assert parse("-l", "stderr").log.destination == "stderr"
    assert parse("--log-file=none").log.destination == "none"
    assert parse("-P", "").pid_file is None
    assert parse("--check-args").check_args


@pytest.mark.parametrize(("name", "expected"), [
    ("builtin", "builtin"), ("libsqlite3", "libsqlite3"), ("Postgres", "postgres"),
    ("MySQL", "mysql"), ("libmemcached", "libmemcached"), ("redis", "redis"),
    ("flatfile", "flatfile"), ("REDIS", "redis"),
])
def test_queue_types(name: str, expected: str) -> None:
    assert parse("-q", name).config.queue_type == expected


@pytest.mark.parametrize("name", ["libpq", "libtokyocabinet", "libdrizzle", "nope"])
def test_unknown_queue_types(name: str) -> None:
    assert refused("-q", name) == f"Unknown queue {name}"


def test_queue_options_pass_through_as_given_pairs() -> None:
    inv = parse("-q", "libsqlite3", "--libsqlite3-db", "/tmp/q.db",
                "--store-queue-on-shutdown", "--mysql-port=3307", "--redis-prefix", "p_",
                "--flatfile-file", "/tmp/j", "--libpq-conninfo", "dbname=test",
                "--libmemcached-servers", "127.0.0.1:11211")
    assert dict(inv.config.queue_options) == {
        "libsqlite3-db": "/tmp/q.db", "store-queue-on-shutdown": "true",
        "mysql-port": "3307", "redis-prefix": "p_", "flatfile-file": "/tmp/j",
        "libpq-conninfo": "dbname=test", "libmemcached-servers": "127.0.0.1:11211",
    }
    # Defaults are the store's business: nothing given, nothing passed.
    assert parse("-q", "mysql").config.queue_options == ()


def test_unknown_options_and_arguments_are_one_clear_line() -> None:
    assert refused("--bogus") == "unrecognised option '--bogus'"
    assert refused("-x") == "unrecognised option '-x'"
    assert refused("extra") == "unrecognised option 'extra'"
    # no abbreviations, as boost::program_options is set up in the reference
    assert refused("--back", "3") == "unrecognised option '--back'"


@pytest.mark.parametrize("args", [("--ssl-key", "k.pem"), ("--ssl-ca-file=ca",),
                                  ("--ssl-certificate", "c.pem"), ("--ssl-verify-client",)])
def test_tls_files_without_ssl_are_refused_by_name(args: tuple[str, ...]) -> None:
    """Never a plaintext server to someone who gave it a certificate (tests/test_tls.py
    has the rest of --ssl's checks)."""
    option = args[0].split("=")[0]
    message = refused(*args)
    assert message.startswith(option + " without --ssl")
    assert refused("--ssl") == "--ssl needs --ssl-certificate FILE and --ssl-key FILE"


def test_protocols_http_only() -> None:
    config = parse("-r", "http", "--http-port", "8081", "-r", "http").config
    assert (config.protocols, config.http_port) == (("http",), 8081)
    assert not any("--http-port" in note for note in
                   parse("-r", "http", "--http-port", "8081").notes)
    assert (parse().config.protocols, parse().config.http_port) == ((), 8080)
    assert refused("--protocol=gopher") == "Unknown protocol module : gopher"
    assert refused("-r", "http", "-r", "gopher") == "Unknown protocol module : gopher"
    # --http-port alone is a module option, harmless without -r http (as the reference)
    assert any("--http-port" in note for note in parse("--http-port", "8081").notes)


def test_help_and_version() -> None:
    for flag in ("-h", "--help"):
        with pytest.raises(cli.Exit) as info:
            parse(flag)
        assert info.value.code == 0
        assert info.value.output.startswith("Usage: gearmand [OPTIONS]")
    with pytest.raises(cli.Exit) as info:
        parse("-V")
    assert re.fullmatch(r"gearmand \d+\.\d+\S* - .+", info.value.output)


def test_help_lists_every_reference_option_and_explains_threads() -> None:
    text = cli.help_text()
    for option in REFERENCE_OPTIONS:
        assert re.search(rf"--{option}\b", text), option
    threads = text[text.index("--threads"):text.index("--user")]
    assert "single-threaded" in " ".join(threads.split())
    assert "--check-args" not in text  # hidden, as in the reference


def test_config_file_uses_command_line_syntax_and_the_command_line_wins(tmp_path: Path) -> None:
    conf = tmp_path / "gearmand.conf"
    conf.write_text("# our server\n--port=5000 -L 127.0.0.2\n -j 2\n--exceptions\n"
                    "--job-handle-prefix 'H:with space'\n-vv\n")
    inv = parse("--config-file", str(conf), "-p", "6000")
    assert inv.config.port == 6000  # command line wins
    assert inv.config.listen == ("127.0.0.2",)
    assert inv.config.job_retries == 2 and inv.config.exceptions
    assert inv.config.job_handle_prefix == "H:with space"
    assert inv.config.verbose == "NOTICE"
    # a repeatable option given on the command line replaces the file's
    assert parse(f"--config-file={conf}", "-L", "::1").config.listen == ("::1",)


def test_config_file_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert refused("--config-file", str(tmp_path / "missing")) == \
        "Could not open configuration file."
    bad = tmp_path / "bad.conf"
    bad.write_text("--bogus\n")
    assert refused(f"--config-file={bad}") == f"unrecognised option '--bogus' (in {bad})"
    # the default file is read when present, ignored when absent
    default = tmp_path / "default.conf"
    monkeypatch.setattr(cli, "DEFAULT_CONFIG_FILE", str(default))
    assert parse().config.port == 4730
    default.write_text("-p 4999")
    assert parse().config.port == 4999


def test_retry_policies_and_result_cache_options(tmp_path: Path) -> None:
    from server.retry import RetryPolicy

    conf = tmp_path / "gearmand.conf"
    conf.write_text("# retries for every function, and a result cache\n"
                    "--retry-policy '*=3,backoff=1s..1m'\n--result-ttl 600\n")
    inv = parse("--config-file", str(conf), "--retry-policy", "resize=5,backoff=2s..10m",
                "--retry-policy", "resize=6", "--result-ttl", "thumb=30",
                "--max-dead-letters", "7", "--result-cache-bytes", "4096")
    # The command line's repeatable option replaces the file's (as -L does).
    assert dict(inv.config.retry_policies) == {b"resize": RetryPolicy(6, 1.0, 600.0)}
    assert inv.config.result_ttls == ((b"thumb", 30.0),)
    assert (inv.config.max_dead_letters, inv.config.result_cache_bytes) == (7, 4096)
    from_file = parse("--config-file", str(conf)).config
    assert dict(from_file.retry_policies) == {None: RetryPolicy(3, 1.0, 60.0)}
    assert from_file.result_ttls == ((None, 600.0),) and from_file.result_cache == "memory"
    assert parse("--result-ttl", "1", "--result-cache",
                 "redis://127.0.0.1:6379/2").config.result_cache == "redis://127.0.0.1:6379/2"
    assert "no effect without --result-ttl" in " ".join(
        parse("--result-cache-bytes", "4096").notes)


@pytest.mark.parametrize(("args", "words"), [
    (("--retry-policy", "resize"), "expected NAME=ATTEMPTS"),
    (("--retry-policy", "resize=0"), "whole number >= 1"),
    (("--retry-policy", "resize=2,backoff=9s..1s"), "maximum is below its minimum"),
    (("--retry-policy", "resize=2,backoff=fast"), "is not a duration"),
    (("--retry-policy", "resize=2,sometimes"), "unknown option"),
    (("--result-ttl", "-5"), "not negative"),
    (("--result-ttl", "f=soon"), "[NAME=]SECONDS"),
    (("--result-ttl", "inf"), "finite"),
    (("--result-cache", "ftp://x"), "expected memory, memcached://HOST:PORT or redis://"),
    (("--result-cache", "memcached://"), "expected memcached://HOST:PORT"),
    (("--result-cache", "memcached://h:port"), "Port could not be cast"),
    (("--max-dead-letters", "0"), "--max-dead-letters"),
])
def test_bad_retry_and_result_options_are_one_line(args: tuple[str, ...], words: str) -> None:
    assert words in refused(*args)


# --------------------------------------------------------------------------- logs


def test_log_line_format() -> None:
    record = logging.LogRecord("server.x", logs.NOTICE, __file__, 10, "hello %s", ("you",),
                               None)
    line = logs.Formatter().format(record)
    assert re.fullmatch(r" NOTICE \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} \[  main \] hello you",
                        line)
    debug = logging.LogRecord("server.x", logging.DEBUG, __file__, 42, "x", None, None)
    assert logs.Formatter().format(debug).startswith("  DEBUG ")
    assert logs.Formatter().format(debug).endswith(" x -> test_server_cli:42")
    assert logs.format_timestamp(0.9999999).endswith(".000000")


def test_log_file_reopen_and_fallback(tmp_path: Path) -> None:
    logger = logging.getLogger("test_server_cli.reopen")
    logger.propagate = False
    path = tmp_path / "g.log"
    setup = logs.configure(logs.LogSettings(str(path), "INFO"), logger)
    try:
        logger.info("one")
        path.rename(tmp_path / "g.log.1")
        setup.reopen()
        logger.info("two")
        assert "one" in (tmp_path / "g.log.1").read_text()
        assert "two" in path.read_text() and "one" not in path.read_text()
        logger.debug("not shown")
        assert "not shown" not in path.read_text()
    finally:
        setup.close()

    class Err:
        text = ""

        def write(self, s: str) -> int:
            self.text += s
            return len(s)

        def flush(self) -> None:
            pass

    err: Any = Err()
    setup = logs.configure(logs.LogSettings(str(tmp_path / "no" / "dir.log"), "ERROR"),
                           logger, stderr=err)
    try:
        logger.error("to stderr")
        assert err.text.startswith('gearmand: Could not open log file "')
        assert "switching to stderr" in err.text and "to stderr\n" in err.text
    finally:
        setup.close()


# --------------------------------------------------------------------------- run() in-process


class FakeServer:
    """Stands in for server.app.Server: started at once, then raises signals at itself."""

    def __init__(self, config: ServerConfig, signals: list[signal.Signals]) -> None:
        self.config = config
        self.signals = signals
        self.calls: list[str] = []
        self._stop = trio.Event()

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started([("127.0.0.1", 4999)])
        for signum in self.signals:
            os.kill(os.getpid(), signum)
            await trio.sleep(0.05)
        with trio.fail_after(5):
            await self._stop.wait()

    def shutdown(self, graceful: bool = False) -> None:
        self.calls.append("graceful" if graceful else "stop")
        self._stop.set()


def run_fake(tmp_path: Path, *signals: signal.Signals, args: tuple[str, ...] = ()
             ) -> tuple[int, FakeServer, str]:
    servers: list[FakeServer] = []

    def factory(config: ServerConfig) -> FakeServer:
        servers.append(FakeServer(config, list(signals)))
        return servers[0]

    log = tmp_path / "fake.log"
    inv = parse("-l", str(log), "-P", str(tmp_path / "fake.pid"), "-vvv", "--coredump", *args)
    logger = logging.getLogger("server")
    code = entry.run(inv, factory, logger)
    return code, servers[0], log.read_text()


@pytest.mark.parametrize(("signum", "call"), [
    (signal.SIGTERM, "stop"), (signal.SIGINT, "stop"), (signal.SIGUSR1, "graceful"),
])
def test_signals_become_shutdown_calls(tmp_path: Path, signum: signal.Signals,
                                       call: str) -> None:
    code, server, log = run_fake(tmp_path, signum)
    assert code == 0 and server.calls == [call]
    assert f"Received {signum.name}" in log
    assert "Listening on 127.0.0.1:4999" in log and "Queue type: builtin" in log
    assert not (tmp_path / "fake.pid").exists()


def test_sighup_reopens_the_log_in_process(tmp_path: Path) -> None:
    code, server, log = run_fake(tmp_path, signal.SIGHUP, signal.SIGTERM)
    assert code == 0 and server.calls == ["stop"]
    assert "Reopened log file" in log


# --------------------------------------------------------------------------- the program


def gearmand(*args: str, timeout: float = 20, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})}, cwd=REPO)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Popen objects to kill and reap at teardown, whatever happened."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def spawn(processes: list[subprocess.Popen[bytes]], tmp_path: Path, *args: str,
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "server", *args], cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
    processes.append(proc)
    return proc


def wait_gone(path: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while path.exists():
        assert time.monotonic() < deadline, f"{path} still exists"
        time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow  # runs gearmand (or man) as a process
def test_help_version_and_errors_as_a_program() -> None:
    result = gearmand("--help")
    assert result.returncode == 0 and "--job-retries" in result.stdout and not result.stderr
    assert gearmand("-h").stdout == result.stdout
    version = gearmand("-V")
    assert version.returncode == 0 and version.stdout.startswith("gearmand ")
    for args, message in [
        (("--bogus",), "gearmand: unrecognised option '--bogus'\n"),
        (("--verbose=info",), "gearmand: Invalid value for --verbose supplied\n"),
        (("-q", "nope"), "gearmand: Unknown queue nope\n"),
        (("--config-file=/nonexistent/gearmand.conf",),
         "gearmand: Could not open configuration file.\n"),
    ]:
        failed = gearmand(*args)
        assert (failed.returncode, failed.stdout, failed.stderr) == (1, "", message)
    for args in (("-r", "gopher"), ("--ssl",)):
        failed = gearmand(*args)
        assert failed.returncode == 1 and failed.stderr.count("\n") == 1
        assert "Traceback" not in failed.stderr
    assert gearmand("--check-args", "-p", "1").returncode == 0


def test_start_pid_file_log_and_sigterm(tmp_path: Path,
                                        processes: list[subprocess.Popen[bytes]]) -> None:
    port = free_port()
    pid_file, log = tmp_path / "g.pid", tmp_path / "g.log"
    proc = spawn(processes, tmp_path, "-p", str(port), "-L", "127.0.0.1", "-l", str(log),
                 "-P", str(pid_file), "--verbose=INFO")
    wait_for_port(port)
    # The port accepts as soon as it is bound; the pid file is written just after.
    deadline = time.monotonic() + 10
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pid_file.read_text() == f"{proc.pid}\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == -signal.SIGTERM  # cleaned up, then died by the signal
    assert not pid_file.exists()
    lines = log.read_text().splitlines()
    assert lines and all(LINE.match(line) for line in lines), lines
    text = "\n".join(lines)
    assert re.search(r"   INFO .* gearmand \S+ starting up with pid \d+, verbose is set to INFO",
                     text)
    assert f"Listening on 127.0.0.1:{port}" in text
    assert "Queue type: builtin" in text
    assert " NOTICE " in text and "Received SIGTERM" in text
    assert lines[-1].endswith("Shutdown complete")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGUSR1])
def test_sigint_and_sigusr1_end_the_process(tmp_path: Path, signum: signal.Signals,
                                            processes: list[subprocess.Popen[bytes]]) -> None:
    port = free_port()
    proc = spawn(processes, tmp_path, "-p", str(port), "-L", "127.0.0.1", "-l", "none",
                 "-P", str(tmp_path / "g.pid"))
    wait_for_port(port)
    proc.send_signal(signum)
    # SIGINT: it cleans up, then dies by the signal (issue 13); SIGUSR1 (graceful) exits 0.
    assert proc.wait(15) == (-signal.SIGINT if signum == signal.SIGINT else 0)
    assert proc.stderr is not None and proc.stderr.read() == b""
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_sighup_reopens_the_log_file(tmp_path: Path,
                                     processes: list[subprocess.Popen[bytes]]) -> None:
    port = free_port()
    log = tmp_path / "g.log"
    proc = spawn(processes, tmp_path, "-p", str(port), "-L", "127.0.0.1", "-l", str(log),
                 "-P", "", "-vvv")
    wait_for_port(port)
    log.rename(tmp_path / "g.log.1")
    proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not (log.exists() and "Reopened log file" in log.read_text()):
        assert time.monotonic() < deadline, "log not reopened"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == -signal.SIGTERM  # cleaned up, then died by the signal
    assert "Shutdown complete" in log.read_text()
    assert "Listening on" in (tmp_path / "g.log.1").read_text()


def test_log_to_stderr_and_none(tmp_path: Path,
                                processes: list[subprocess.Popen[bytes]]) -> None:
    for destination, expect_lines in (("stderr", True), ("none", False)):
        port = free_port()
        proc = spawn(processes, tmp_path, "-p", str(port), "-L", "127.0.0.1",
                     "-l", destination, "-P", "", "-vvvv")
        wait_for_port(port)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == -signal.SIGTERM
        text = err.decode()
        if expect_lines:
            assert f"Listening on 127.0.0.1:{port}" in text
            assert all(LINE.match(line) for line in text.splitlines() if line[:1] == " ")
        else:
            assert text == ""


def test_unopenable_log_file_falls_back_to_stderr(
        tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    port = free_port()
    proc = spawn(processes, tmp_path, "-p", str(port), "-L", "127.0.0.1",
                 "-l", str(tmp_path / "no" / "such.log"), "-P", "", "-vvv")
    wait_for_port(port)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGTERM
    first, *rest = err.decode().splitlines()
    assert first.startswith('gearmand: Could not open log file "') and "stderr" in first
    assert any("Listening on" in line for line in rest)


def test_listen_on_several_addresses_and_environment_port(
        tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    port = free_port()
    proc = spawn(processes, tmp_path, "-L", "127.0.0.1", "-L", "127.0.0.2", "-l", "none",
                 "-P", "", env={"GEARMAND_PORT": str(port)})
    wait_for_port(port)
    wait_for_port(port, host="127.0.0.2")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == -signal.SIGTERM  # cleaned up, then died by the signal


@pytest.mark.slow  # runs gearmand (or man) as a process
def test_port_in_use_is_one_line_exit_1(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = gearmand("-p", str(port), "-L", "127.0.0.1", "-l", "none", "-P",
                          str(tmp_path / "g.pid"))
    assert result.returncode == 1
    assert result.stderr.startswith("gearmand: Could not start: ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "g.pid").exists()


@pytest.mark.slow  # runs gearmand (or man) as a process
def test_explicit_pid_file_that_cannot_be_written_is_fatal(tmp_path: Path) -> None:
    result = gearmand("-p", str(free_port()), "-L", "127.0.0.1", "-l", "none",
                      "-P", str(tmp_path / "no" / "g.pid"))
    assert result.returncode == 1
    assert result.stderr.startswith("gearmand: Could not open pid file for writing: ")


@pytest.mark.slow  # runs gearmand (or man) as a process
def test_daemon_detaches_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    pid_file, log = tmp_path / "d.pid", tmp_path / "d.log"
    started = time.monotonic()
    result = gearmand("-d", "-p", str(port), "-L", "127.0.0.1", "-l", str(log),
                      "-P", str(pid_file), "--verbose=INFO")
    pid = int(pid_file.read_text()) if pid_file.exists() else None
    try:
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
        assert time.monotonic() - started < 15
        assert pid is not None and pid_alive(pid)
        # -d returns once the server listens: no waiting needed
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        assert os.getsid(pid) == pid  # its own session
        os.kill(pid, signal.SIGTERM)
        wait_gone(pid_file)
        deadline = time.monotonic() + 10
        while pid_alive(pid):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert log.read_text().rstrip().endswith("Shutdown complete")
    finally:
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow  # runs gearmand (or man) as a process
def test_daemon_start_failure_is_reported_by_the_parent(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = gearmand("-d", "-p", str(port), "-L", "127.0.0.1", "-l", "none",
                          "-P", str(tmp_path / "d.pid"))
    assert result.returncode == 1
    assert result.stderr.startswith("gearmand: Could not start: ")
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "d.pid").exists()


def _proc_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].split()[0]
    raise KeyError(name)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")
def test_user_switch_after_binding(tmp_path: Path,
                                   processes: list[subprocess.Popen[bytes]]) -> None:
    nobody = pwd.getpwnam("nobody")
    port = free_port()
    proc = spawn(processes, tmp_path, "-p", str(port), "-L", "127.0.0.1", "-l", "none",
                 "-P", "", "-u", "nobody")
    wait_for_port(port)  # bound: the switch follows at once
    deadline = time.monotonic() + 10
    while int(_proc_field(proc.pid, "Uid")) != nobody.pw_uid:
        assert time.monotonic() < deadline, "still not running as nobody"
        time.sleep(0.02)
    assert int(_proc_field(proc.pid, "Gid")) == nobody.pw_gid
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == -signal.SIGTERM  # cleaned up, then died by the signal


@pytest.mark.slow  # runs gearmand (or man) as a process
def test_unknown_user_is_refused() -> None:
    result = gearmand("-u", "no-such-user-xyz", "-p", str(free_port()), "-L", "127.0.0.1",
                      "-l", "none", "-P", "")
    assert (result.returncode, result.stderr) == (
        1, "gearmand: Could not find user : no-such-user-xyz\n")


def test_file_descriptor_limit(tmp_path: Path,
                               processes: list[subprocess.Popen[bytes]]) -> None:
    port = free_port()
    proc = spawn(processes, tmp_path, "-p", str(port), "-L", "127.0.0.1", "-l", "none",
                 "-P", "", "-f", "300")
    wait_for_port(port)
    limits = Path(f"/proc/{proc.pid}/limits").read_text()
    assert re.search(r"Max open files\s+300\s", limits)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == -signal.SIGTERM  # cleaned up, then died by the signal


def test_config_file_as_a_program(tmp_path: Path,
                                  processes: list[subprocess.Popen[bytes]]) -> None:
    port = free_port()
    conf = tmp_path / "g.conf"
    conf.write_text(f"--port {port}\n-L 127.0.0.1\n--log-file={tmp_path / 'c.log'}\n-vvv\n")
    proc = spawn(processes, tmp_path, "--config-file", str(conf), "-P", "")
    wait_for_port(port)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == -signal.SIGTERM  # cleaned up, then died by the signal
    assert f"Listening on 127.0.0.1:{port}" in (tmp_path / "c.log").read_text()


def test_set_file_descriptor_limit_refuses_above_hard_limit_for_non_root() -> None:
    if os.geteuid() == 0:
        # root may raise the hard limit; check the message path through a silly value
        with pytest.raises(daemon.StartupError, match="file descriptors"):
            daemon.set_file_descriptor_limit(1 << 62)
    else:
        _, hard = __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)
        with pytest.raises(daemon.StartupError, match="file descriptors"):
            daemon.set_file_descriptor_limit(hard + 1)


# --------------------------------------------------------------------------- reference, man page


@pytest.mark.slow  # runs gearmand (or man) as a process
def test_every_option_of_the_reference_help_is_accepted() -> None:
    need_reference()
    text = subprocess.run([REFERENCE_GEARMAND, "--help"], capture_output=True, text=True,
                          timeout=10).stdout
    options = set(re.findall(r"(?<![\w-])--([a-z][a-z0-9-]+)", text))
    assert options >= {"backlog", "libsqlite3-db", "mysql-table"}
    assert options <= set(REFERENCE_OPTIONS) | {"check-args"}, options - set(REFERENCE_OPTIONS)
    ours = cli.help_text()
    for option in options:
        assert re.search(rf"--{option}\b", ours), option


def test_man_page_lists_every_option() -> None:
    text = MAN_PAGE.read_text().replace("\\-", "-")
    for option in [*REFERENCE_OPTIONS, "graceful-timeout", "admin-from-anywhere",
                   "max-packet-size", "flatfile-file", "max-outgoing-buffer",
                   "max-name-length", "max-functions", "max-worker-functions",
                   "write-timeout", "idle-timeout", "http-idle-timeout",
                   "http-request-timeout", "memcached-port"]:
        # an item of its own: ".BI --name= ARG", ".B --name" or ".BR -x ", " --name"
        assert re.search(rf'^\.B[IR]? (-\w ", " )?--{option}(?![\w-])', text, re.MULTILINE), \
            option
    for signame in ("SIGTERM", "SIGINT", "SIGUSR1", "SIGHUP"):
        assert signame in text


def test_every_queue_option_of_the_registry_has_a_flag_and_a_man_page_entry() -> None:
    """The store registry is the one table: gearmand's flags and --help come from it,
    and the man page must document each of its options."""
    from server.store import registry

    text = MAN_PAGE.read_text().replace("\\-", "-")
    help_text = cli.help_text()
    names = [option.name for _, option in registry.all_options()]
    assert "flatfile-fsync" in names and "store-queue-on-shutdown" in names
    for name in names:
        assert re.search(rf"--{name}\b", help_text), name
        assert re.search(rf'^\.B[IR]? --{name}(?![\w-])', text, re.MULTILINE), name
    for queue in registry.QUEUE_TYPES:
        assert queue.name in help_text, queue.name
    parsed = parse("-q", "flatfile", "--flatfile-file", "/tmp/j", "--flatfile-fsync", "always")
    assert dict(parsed.config.queue_options) == {"flatfile-file": "/tmp/j",
                                                 "flatfile-fsync": "always"}


@pytest.mark.slow  # runs gearmand (or man) as a process
def test_man_page_renders_without_warnings() -> None:
    if shutil.which("man") is None:
        pytest.skip("man (man-db) is not installed")
    result = subprocess.run(["man", "--warnings", "-l", str(MAN_PAGE)], capture_output=True,
                            text=True, timeout=30, env={**os.environ, "MANWIDTH": "80"})
    assert result.returncode == 0
    assert result.stderr == ""
    assert "gearmand" in result.stdout


@pytest.mark.slow  # runs gearmand (or man) as a process
def test_queue_problems_are_one_line_exit_1(tmp_path: Path) -> None:
    result = gearmand("-q", "libsqlite3", "-p", str(free_port()), "-L", "127.0.0.1",
                      "-l", "none", "-P", "")
    assert (result.returncode, result.stderr) == (
        1, "gearmand: queue libsqlite3 needs --libsqlite3-db\n")


@pytest.mark.parametrize(("queue", "option"), [("libsqlite3", "--libsqlite3-db"),
                                               ("flatfile", "--flatfile-file")])
def test_embedded_queues_start_and_are_logged(
        tmp_path: Path, processes: list[subprocess.Popen[bytes]], queue: str,
        option: str) -> None:
    port = free_port()
    log = tmp_path / "q.log"
    proc = spawn(processes, tmp_path, "-q", queue, f"{option}={tmp_path / 'store'}",
                 "-p", str(port), "-L", "127.0.0.1", "-l", str(log), "-P", "", "-vvv")
    wait_for_port(port)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == -signal.SIGTERM  # cleaned up, then died by the signal
    assert f"Queue type: {queue}" in log.read_text()
    assert (tmp_path / "store").exists()


class StubbornServer(FakeServer):
    """Ignores graceful shutdown (work that never ends) to test the forced stop."""

    def shutdown(self, graceful: bool = False) -> None:
        self.calls.append("graceful" if graceful else "stop")


def test_sigterm_during_a_graceful_stop_stops_at_once(tmp_path: Path) -> None:
    servers: list[FakeServer] = []

    def factory(config: ServerConfig) -> FakeServer:
        servers.append(StubbornServer(config, [signal.SIGUSR1, signal.SIGTERM]))
        return servers[0]

    inv = parse("-l", str(tmp_path / "s.log"), "-P", "", "--coredump", "-vv")
    started = time.monotonic()
    assert entry.run(inv, factory, logging.getLogger("server")) == 0
    assert time.monotonic() - started < 4  # not the fake's 5 s fail_after
    assert servers[0].calls == ["graceful"]
    assert "Received SIGTERM again, stopping now" in (tmp_path / "s.log").read_text()


def test_syslog_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "log.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sink:
        sink.bind(str(path))
        sink.settimeout(5)
        monkeypatch.setattr(logs, "SYSLOG_SOCKET", str(path))
        logger = logging.getLogger("test_server_cli.syslog")
        logger.propagate = False
        setup = logs.configure(logs.LogSettings("none", "INFO", syslog=True), logger)
        try:
            logger.log(logs.NOTICE, "hello")
            logger.critical("bad")
            # facility user (1) * 8 + notice (5) = 13; + crit (2) = 10
            assert sink.recv(1024) == b"<13>gearmand: NOTICE hello\x00"
            assert sink.recv(1024) == b"<10>gearmand: CRITICAL bad\x00"
        finally:
            setup.close()

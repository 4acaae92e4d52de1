"""The ``gearmand`` command line, parse-only: argv (plus a config file) to an :class:`Invocation`.

Every option of the reference's ``gearmand --help`` is accepted (spec §4); those we cannot
honour are refused with one line naming them. Nothing here opens sockets or starts trio.
"""

from __future__ import annotations

import dataclasses
import shlex
import socket
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from protocol import __version__
from server import logs
from server.cli_checks import (
    CliError,
    default_tls,
    result_ttls,
    retry_policies,
    tls_config,
)
from server.config import ServerConfig
from server.results import cache_url_problem
from server.store import registry

PROG = "gearmand"
DEFAULT_PORT = "4730"
DEFAULT_LOG_FILE = "/var/log/gearmand.log"
DEFAULT_PID_FILE = "/var/gearmand.pid"
DEFAULT_CONFIG_FILE = "/etc/gearmand.conf"
VERSION_LINE = f"{PROG} {__version__} - the Gearman toolkit for Python"

#: ``-q`` names we know (lower case; the reference's are case-insensitive: ``Postgres``,
#: ``MySQL``). ``flatfile`` is ours: an embedded store that needs nothing outside Python.
QUEUE_TYPES: tuple[str, ...] = tuple(q.name for q in registry.QUEUE_TYPES)

GENERAL = "General options"
OURS = "Options of this server (not in the reference)"
HTTP = "HTTP"
MEMCACHED = "memcached"
GEAR = "Gear"

__all__ = ["CliError", "Exit", "Invocation", "help_text", "parse_args", "parse_port"]


class Exit(Exception):
    """``--help`` or ``--version``: print ``output`` on stdout and exit with ``code``."""

    def __init__(self, output: str, code: int = 0) -> None:
        super().__init__(output)
        self.output = output
        self.code = code


@dataclasses.dataclass(frozen=True, slots=True)
class Invocation:
    """Everything the command line decided: the server's config and the process around it."""

    config: ServerConfig
    log: logs.LogSettings
    daemon: bool = False
    #: Where to write our pid; a failure is fatal only when the path was given explicitly.
    pid_file: Path | None = None
    pid_file_explicit: bool = False
    user: str | None = None
    file_descriptors: int | None = None
    #: Accepted for compatibility; the server is one trio thread whatever this says.
    threads: int = 4
    #: Off: Python's faulthandler prints a traceback on a crash; on: leave the signal alone.
    coredump: bool = False
    #: ``--check-args``: validate everything, then exit 0 without serving.
    check_args: bool = False
    #: Notes to log once logging is up (options accepted but without effect here).
    notes: tuple[str, ...] = ()


class _Option(click.Option):
    """A click option that knows which ``--help`` section it belongs to."""

    def __init__(self, *args: Any, section: str = GENERAL, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.section = section


class _Command(click.Command):
    """Help grouped in the reference's sections; ``-h`` is help, as in the reference."""

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(PROG, "[OPTIONS]")

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            section = param.section if isinstance(param, _Option) else GENERAL
            sections.setdefault(section, []).append(record)
        for section, records in sections.items():
            with formatter.section(section):
                formatter.write_dl(records)


class _Int(click.ParamType[int]):
    """An integer with a lower bound, without click's range note in ``--help``."""

    name = "integer"

    def __init__(self, minimum: int) -> None:
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            number = value
        else:
            try:
                number = int(str(value), 10)
            except ValueError:
                self.fail(f"'{value}' is not an integer", param, ctx)
        if number < self.minimum:
            self.fail(f"{number} is less than {self.minimum}", param, ctx)
        return number


def _default(name: str) -> Any:
    """A ServerConfig field's default (the class is slotted: no class attributes to read)."""
    for field in dataclasses.fields(ServerConfig):
        if field.name == name:
            return field.default
    raise KeyError(name)


def _opt(*decls: str, section: str = GENERAL, **kwargs: Any) -> _Option:
    kwargs.setdefault("show_default", "default" in kwargs and kwargs["default"] is not None
                      and not kwargs.get("is_flag", False))
    return _Option(list(decls), section=section, **kwargs)


def _queue_opt(queue: registry.QueueType, option: registry.QueueOption) -> _Option:
    if option.flag:
        return _opt(f"--{option.name}", section=queue.section, is_flag=True, help=option.help)
    extra = f" (default: {option.default})" if option.default else ""
    if option.default is None:
        extra = f" (required with -q {queue.name})"
    return _opt(f"--{option.name}", section=queue.section, metavar="ARG",
                help=option.help + extra)


#: The queue modules' options (spec §4.3), from the one registry; passed to the store as
#: (name, value) pairs.
QUEUE_OPTIONS: tuple[_Option, ...] = tuple(_queue_opt(q, o) for q, o in registry.all_options())

PARAMS: list[click.Parameter] = [
    _opt("-b", "--backlog", type=_Int(1), default=_default("backlog"), metavar="N",
         help="Number of backlog connections for listen (the reference's default is 32; "
              "ours is larger so that a burst of connects is not dropped)."),
    _opt("-d", "--daemon", is_flag=True,
         help="Daemon, detach and run in the background. The command returns once the "
              "server listens (exit 0) or failed to start (exit 1, with the reason)."),
    _opt("--exceptions", is_flag=True, help="Enable protocol exceptions by default."),
    _opt("-f", "--file-descriptors", type=_Int(1), metavar="N",
         help="Number of file descriptors to allow for the process (RLIMIT_NOFILE). "
              "Default is the limit the process was started with."),
    _opt("-h", "--help", "help_", is_flag=True, help="Print this help menu."),
    _opt("-j", "--job-retries", type=_Int(-1), default=-1, metavar="N",
         help="Assignments a job gets in all: when its worker is lost on the N-th, the "
              "job fails; 0 and 1 both fail it on the first loss. -1 (the default) means "
              "no limit. (A job past its CAN_DO_TIMEOUT fails at once; a --retry-policy "
              "replaces this for its functions.)"),
    _opt("--job-handle-prefix", metavar="PREFIX",
         help='Prefix used to generate a job handle string. If not provided, the default '
              '"H:<host_name>" is used.'),
    _opt("--hashtable-buckets", type=int, default=991, metavar="N",
         help="Accepted for compatibility (must be > 0); no effect: Python's hash tables "
              "size themselves."),
    _opt("--keepalive", is_flag=True, help="Enable keepalive on sockets."),
    _opt("--keepalive-idle", type=_Int(-1), default=-1, metavar="SECONDS",
         help="With --keepalive: TCP_KEEPIDLE; -1 leaves the system default."),
    _opt("--keepalive-interval", type=_Int(-1), default=-1, metavar="SECONDS",
         help="With --keepalive: TCP_KEEPINTVL; -1 leaves the system default."),
    _opt("--keepalive-count", type=_Int(-1), default=-1, metavar="N",
         help="With --keepalive: TCP_KEEPCNT; -1 leaves the system default."),
    _opt("-l", "--log-file", default=DEFAULT_LOG_FILE, metavar="FILE",
         help="Log file to write errors and information to. 'stderr' logs to stderr, "
              "'none' turns the log off. A file that cannot be opened is reported and "
              "stderr used instead. SIGHUP reopens the file."),
    _opt("-L", "--listen", multiple=True, metavar="ADDRESS",
         help="Address the server should listen on; repeat for several. "
              "Default is every address (0.0.0.0 and ::)."),
    _opt("-P", "--pid-file", default=DEFAULT_PID_FILE, metavar="FILE",
         help="File to write process ID out to (removed on exit). Failing to write the "
              "default one is ignored; failing to write one given here is fatal."),
    _opt("-r", "--protocol", multiple=True, metavar="NAME",
         help="Load protocol module: 'http' or 'memcached' (may be given more than once)."),
    _opt("-R", "--round-robin", is_flag=True,
         help="Accepted for compatibility: work is always rotated fairly between a "
              "worker's functions."),
    _opt("-q", "--queue-type", default="builtin", metavar="NAME",
         help="Persistent queue type to use: " + ", ".join(QUEUE_TYPES)
              + " (case-insensitive; builtin keeps nothing)."),
    # The default is looked up at parse time so that tests can point it elsewhere.
    _opt("--config-file", default=lambda: DEFAULT_CONFIG_FILE,
         show_default=False, metavar="FILE",
         help="More options, written as on the command line (whitespace or newline "
              "separated, # starts a comment); the command line wins. A missing default "
              f"file ({DEFAULT_CONFIG_FILE}) is ignored."),
    _opt("--syslog", is_flag=True, help="Use syslog too (facility LOG_USER, ident gearmand)."),
    _opt("--coredump", is_flag=True,
         help="Do not print a Python traceback on a fatal signal (SIGSEGV, ...); let the "
              "system dump core."),
    _opt("-t", "--threads", type=_Int(0), default=4, metavar="N",
         help="Accepted for compatibility; no effect: this server is one single-threaded "
              "trio event loop (the reference's number of I/O threads)."),
    _opt("-u", "--user", metavar="USER",
         help="Switch to given user after startup (once the ports are bound; needs root)."),
    _opt("--verbose", metavar="LEVEL",
         help="Set verbose level (" + ", ".join(logs.LEVEL_NAMES) + "). Default ERROR."),
    _opt("-v", "v_count", count=True,
         help="Each -v logs one level more than --verbose (or ERROR): -v WARNING, "
              "-vv NOTICE, -vvv INFO, -vvvv DEBUG."),
    _opt("-V", "--version", is_flag=True, help="Display the version of gearmand and exit."),
    _opt("-w", "--worker-wakeup", type=_Int(0), default=0, metavar="N",
         help="Accepted for compatibility: each job received wakes at most one sleeping "
              "worker (as many as there is work for; the reference's default, 0, woke all)."),
    _opt("--check-args", is_flag=True, hidden=True),
    _opt("--graceful-timeout", section=OURS, type=float, default=30.0,
         metavar="SECONDS",
         help="How long SIGUSR1 and the 'shutdown graceful' admin command wait for "
              "running work."),
    _opt("--admin-from-anywhere", section=OURS, is_flag=True,
         help="Without --acl-file, admin-write commands (shutdown, cancel job, drop "
              "function, maxqueue, create function, verbose) are refused from peers not "
              "on loopback; this accepts them from any address. With --acl-file the "
              "rules decide and this flag has no effect."),
    _opt("--acl-file", section=OURS, metavar="FILE",
         help="Access rules (TOML): which peers (by TLS identity or by address/CIDR) may "
              "register and submit which functions, read or change the server by admin "
              "commands, and their tenant (its own function names, limits). SIGHUP "
              "reloads it; a bad file keeps the rules in force. See man gearmand."),
    _opt("--max-packet-size", section=OURS, type=_Int(1024),
         default=_default("max_packet_size"), metavar="BYTES",
         help="Largest packet a peer may send."),
    _opt("--max-outgoing-buffer", section=OURS, type=_Int(4096),
         default=_default("max_outgoing_buffer"), metavar="BYTES",
         help="Output pending for one peer before it is not read (and a peer filling it "
              "is paused); four times this and the peer is dropped."),
    _opt("--max-name-length", section=OURS, type=_Int(1), default=_default("max_name_length"),
         metavar="BYTES", help="Longest function name or client id a peer may use."),
    _opt("--max-functions", section=OURS, type=_Int(1), default=_default("max_functions"),
         metavar="N", help="Functions the server holds at once."),
    _opt("--max-worker-functions", section=OURS, type=_Int(1),
         default=_default("max_worker_functions"), metavar="N",
         help="Functions one worker connection may register."),
    _opt("--write-timeout", section=OURS, type=float, default=_default("write_timeout"),
         metavar="SECONDS",
         help="Drop a peer that takes none of its pending output for this long (0: never)."),
    _opt("--idle-timeout", section=OURS, type=float, default=_default("idle_timeout"),
         metavar="SECONDS",
         help="Close a Gear or memcached connection that sends nothing for this long "
              "(0, the default: never; workers may sleep for hours)."),
    _opt("--http-idle-timeout", section=HTTP, type=float,
         default=_default("http_idle_timeout"), metavar="SECONDS",
         help="Close an HTTP connection idle between requests for this long (0: never)."),
    _opt("--http-request-timeout", section=HTTP, type=float,
         default=_default("http_request_timeout"), metavar="SECONDS",
         help="Time an HTTP client has to send a whole request once begun (0: no bound)."),
    _opt("--http-port", section=HTTP, type=_Int(0), default=8080,
         metavar="PORT", help="Port to listen on (with -r http)."),
    _opt("--metrics-port", section=OURS, type=_Int(0), default=None, metavar="PORT",
         help="Serve GET /metrics (Prometheus text format) on this port at the -L "
              "addresses (0 picks a free port). Off by default."),
    _opt("--events-function", section=OURS, default=None, metavar="NAME",
         help="Submit each job life-cycle event (a JSON object) as a background job to "
              "function NAME, so any worker of NAME is an event hook. Off by default."),
    _opt("--events-payloads", section=OURS, is_flag=True,
         help="Events carry the first 256 bytes of job data and results (as text)."),
    _opt("--events-buffer", section=OURS, type=_Int(1), default=_default("events_buffer"),
         metavar="N", help="Events pending delivery before new ones are dropped (counted)."),
    _opt("--retry-policy", section=OURS, multiple=True, metavar="NAME=N[,backoff=MIN..MAX]",
         help="Retry a failed, timed-out or lost background job of function NAME (* for "
              "every function without its own) up to N attempts in all, after a back-off "
              "doubling from MIN to MAX (default 1s..10m, jittered), then keep it as a dead "
              "letter. Add ',foreground' to retry foreground jobs too. Repeatable."),
    _opt("--max-dead-letters", section=OURS, type=_Int(1),
         default=_default("max_dead_letters"), metavar="N",
         help="Dead letters kept per function (the oldest is dropped past it)."),
    _opt("--result-ttl", section=OURS, multiple=True, metavar="[NAME=]SECONDS",
         help="Keep the result of a finished background job (of function NAME, or of "
              "every function) for SECONDS, to be fetched by handle or unique key. "
              "Repeatable. Off by default."),
    _opt("--result-cache", section=OURS, default=_default("result_cache"), metavar="URL",
         help="Where results are kept: memory, memcached://HOST:PORT or "
              "redis://HOST:PORT[/DB]."),
    _opt("--result-cache-bytes", section=OURS, type=_Int(1024),
         default=_default("result_cache_bytes"), metavar="BYTES",
         help="Bound of the memory result cache (least recently used evicted first)."),
    _opt("--memcached-port", section=MEMCACHED, type=_Int(0), default=11211,
         metavar="PORT", help="Port to listen on (with -r memcached)."),
    _opt("-p", "--port", section=GEAR, default=DEFAULT_PORT, metavar="PORT",
         help="Port or service name the server should listen on. GEARMAND_PORT in the "
              "environment replaces the default; 0 picks a free port."),
    _opt("--ssl", section=GEAR, is_flag=True,
         help="TLS (1.2 or later) on every listener: the Gear port, and the HTTP, "
              "memcached and metrics ports. A plaintext connection is closed; there is "
              "no fallback. Needs --ssl-certificate and --ssl-key."),
    _opt("--ssl-ca-file", section=GEAR, metavar="FILE",
         help="With --ssl: CA certificates (PEM) that sign client certificates. A client "
              "certificate sent is then verified (and its identity given to the "
              "connection); with --ssl-verify-client one is required."),
    _opt("--ssl-certificate", section=GEAR, metavar="FILE",
         help="With --ssl: the server's certificate chain (PEM, the server's first)."),
    _opt("--ssl-key", section=GEAR, metavar="FILE",
         help="With --ssl: the certificate's private key (PEM, unencrypted)."),
    _opt("--ssl-verify-client", section=GEAR, is_flag=True,
         help="With --ssl and --ssl-ca-file: refuse a connection without a client "
              "certificate verified by that CA."),
    _opt("--ssl-handshake-timeout", section=GEAR, type=float,
         default=default_tls("handshake_timeout"), metavar="SECONDS",
         help="With --ssl: time a new connection has to finish its TLS handshake."),
    *QUEUE_OPTIONS,
]

COMMAND = _Command(
    PROG,
    params=PARAMS,
    help="The Gearman job server (pure Python, trio).",
    epilog="Signals: SIGTERM and SIGINT stop the server; SIGUSR1 stops it gracefully "
           "(no new connections, running work may finish); SIGHUP reopens the log file "
           "and reloads the --acl-file.",
    context_settings={"help_option_names": [], "allow_extra_args": True,
                      "max_content_width": 100},
    add_help_option=False,
)


def help_text() -> str:
    """What ``gearmand --help`` prints."""
    with click.Context(COMMAND, info_name=PROG) as ctx:
        return COMMAND.get_help(ctx)


def _make_context(args: Sequence[str], what: str) -> click.Context:
    try:
        ctx = COMMAND.make_context(PROG, list(args))
    except click.NoSuchOption as exc:
        raise CliError(f"unrecognised option '{exc.option_name}'{what}") from None
    except click.BadOptionUsage as exc:
        if "requires an argument" in exc.message:
            raise CliError(f"the required argument for option '{exc.option_name}' is "
                           f"missing{what}") from None
        raise CliError(exc.format_message() + what) from None
    except click.BadParameter as exc:
        option = exc.param.opts[-1] if exc.param is not None and exc.param.opts else "?"
        raise CliError(f"invalid value for {option}: {exc.message}{what}") from None
    except click.UsageError as exc:
        raise CliError(exc.format_message() + what) from None
    if ctx.args:
        raise CliError(f"unrecognised option '{ctx.args[0]}'{what}")
    return ctx


def _read_config_file(path: str, explicit: bool) -> list[str]:
    """The file's words, as on a command line; a missing default file is no file at all."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        if explicit:
            raise CliError("Could not open configuration file.") from None
        return []
    try:
        return shlex.split(text, comments=True)
    except ValueError as exc:
        raise CliError(f"Could not parse configuration file {path}: {exc}") from None


def _merge(cli: click.Context, conf: click.Context | None) -> dict[str, Any]:
    """Command line first, then the config file, then defaults (spec §4.1)."""
    values: dict[str, Any] = {}
    for name, value in cli.params.items():
        values[name] = value
        if conf is not None and cli.get_parameter_source(name) is not ParameterSource.COMMANDLINE \
                and conf.get_parameter_source(name) is ParameterSource.COMMANDLINE:
            values[name] = conf.params[name]
    return values


def _given(cli: click.Context, conf: click.Context | None, name: str) -> bool:
    return any(ctx is not None and ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
               for ctx in (cli, conf))


def parse_port(value: str, environ: Mapping[str, str]) -> int:
    """``-p``: a number or a service name; GEARMAND_PORT replaces 4730 (spec §4.1)."""
    if value == DEFAULT_PORT and environ.get("GEARMAND_PORT"):
        value = environ["GEARMAND_PORT"]
    if value == "":
        try:
            return socket.getservbyname("gearman", "tcp")
        except OSError:
            return int(DEFAULT_PORT)
    if value.isdigit():
        port = int(value)
        if port > 65535:
            raise CliError(f"the argument ('{value}') for option '--port' is invalid")
        return port
    try:
        return socket.getservbyname(value, "tcp")
    except OSError:
        raise CliError(f"the argument ('{value}') for option '--port' is invalid: "
                       "not a port number or a known service name") from None


def _queue_type(value: str) -> str:
    name = value.lower()
    if name not in QUEUE_TYPES:
        raise CliError(f"Unknown queue {value}")
    return name


def _queue_options(values: Mapping[str, Any], given: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """The queue options given (not defaults), as (long option name, value) pairs."""
    pairs: list[tuple[str, str]] = []
    wanted = set(given)
    for option in QUEUE_OPTIONS:
        name = option.name
        assert name is not None
        if name not in wanted:
            continue
        value = values[name]
        pairs.append((option.opts[0][2:], "true" if value is True else str(value)))
    return tuple(pairs)


def parse_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Invocation:
    """Turn gearmand's arguments into an :class:`Invocation`.

    Raises :class:`Exit` for ``--help``/``--version`` and :class:`CliError` (one line,
    exit 1) for anything wrong or refused.
    """
    env: Mapping[str, str] = environ if environ is not None else {}
    cli = _make_context(argv, "")
    conf: click.Context | None = None
    config_explicit = cli.get_parameter_source("config_file") is ParameterSource.COMMANDLINE
    config_path = str(cli.params["config_file"])
    words = _read_config_file(config_path, config_explicit)
    if words:
        conf = _make_context(words, f" (in {config_path})")
        if conf.get_parameter_source("config_file") is ParameterSource.COMMANDLINE:
            raise CliError(f"--config-file cannot be used inside a configuration file "
                           f"({config_path})")
    values = _merge(cli, conf)

    def given(name: str) -> bool:
        return _given(cli, conf, name)

    if values["help_"]:
        raise Exit(help_text())
    if values["version"]:
        raise Exit(VERSION_LINE)

    tls = tls_config(values, given)
    protocols: list[str] = []
    for protocol in values["protocol"]:
        if protocol not in ("http", "memcached"):
            raise CliError(f"Unknown protocol module : {protocol}")
        if protocol not in protocols:
            protocols.append(protocol)
    for seconds in ("graceful_timeout", "write_timeout", "idle_timeout", "http_idle_timeout",
                    "http_request_timeout"):
        if not values[seconds] >= 0 or values[seconds] == float("inf"):  # nan, inf too
            flag = "--" + seconds.replace("_", "-")
            raise CliError(f"invalid value for {flag}: it must be a finite number of "
                           "seconds, not negative")
    for port_option in ("http_port", "memcached_port", "metrics_port"):
        if (values[port_option] or 0) > 65535:
            flag = "--" + port_option.replace("_", "-")
            raise CliError(f"invalid value for {flag}: it must be at most 65535")
    events_function = values["events_function"]
    if events_function is not None and (not events_function or any(
            c.isspace() or not c.isprintable() for c in events_function)):
        raise CliError("invalid value for --events-function: it must be one word")
    if values["hashtable_buckets"] <= 0:
        raise CliError("hashtable-buckets has to be greater than 0")

    base = values["verbose"] if values["verbose"] is not None else logs.DEFAULT_LEVEL_NAME
    if base not in logs.LEVELS:
        raise CliError("Invalid value for --verbose supplied")
    level_name = logs.raise_level(base, values["v_count"])

    notes: list[str] = []
    acl_file: Path | None = None
    if values["acl_file"] is not None:
        from server.acl import AclError, load  # the rules module only when asked for
        acl_file = Path(values["acl_file"]).absolute()
        try:
            load(acl_file)
        except AclError as exc:
            raise CliError(f"--acl-file: {exc}") from None
        if values["admin_from_anywhere"]:
            notes.append("--admin-from-anywhere has no effect with --acl-file")
    if given("http_port") and "http" not in protocols:
        notes.append("--http-port has no effect without -r http")
    if given("memcached_port") and "memcached" not in protocols:
        notes.append("--memcached-port has no effect without -r memcached")
    if given("cluster_lease") and not given("cluster"):
        notes.append("--cluster-lease has no effect without --cluster")
    if given("threads"):
        notes.append(f"-t {values['threads']} ignored: this server is single-threaded (trio)")
    if given("hashtable_buckets"):
        notes.append("--hashtable-buckets ignored: Python's hash tables size themselves")

    policies = retry_policies(values["retry_policy"])
    ttls = result_ttls(values["result_ttl"])
    problem = cache_url_problem(values["result_cache"])
    if problem is not None:
        raise CliError(f"invalid value for --result-cache: {problem}")
    if not ttls and (given("result_cache") or given("result_cache_bytes")):
        notes.append("--result-cache and --result-cache-bytes have no effect without "
                     "--result-ttl")
    retries: int = values["job_retries"]
    pid_file = Path(values["pid_file"]).absolute() if values["pid_file"] else None
    log_file = values["log_file"]
    if log_file not in ("stderr", "none"):
        log_file = str(Path(log_file).absolute())

    prefix_kw: dict[str, Any] = {}
    if values["job_handle_prefix"] is not None:
        prefix_kw["job_handle_prefix"] = values["job_handle_prefix"]
    config = ServerConfig(
        listen=tuple(values["listen"]),
        port=parse_port(values["port"], env),
        backlog=values["backlog"],
        job_retries=None if retries == -1 else retries,
        worker_wakeup=values["worker_wakeup"],
        exceptions=values["exceptions"],
        keepalive=values["keepalive"],
        keepalive_idle=values["keepalive_idle"],
        keepalive_interval=values["keepalive_interval"],
        keepalive_count=values["keepalive_count"],
        max_packet_size=values["max_packet_size"],
        max_outgoing_buffer=values["max_outgoing_buffer"],
        max_name_length=values["max_name_length"],
        max_functions=values["max_functions"],
        max_worker_functions=values["max_worker_functions"],
        write_timeout=values["write_timeout"],
        idle_timeout=values["idle_timeout"],
        http_idle_timeout=values["http_idle_timeout"],
        http_request_timeout=values["http_request_timeout"],
        admin_from_anywhere=values["admin_from_anywhere"],
        acl_file=acl_file,
        queue_type=_queue_type(values["queue_type"]),
        queue_options=_queue_options(values, (o.name for o in QUEUE_OPTIONS
                                              if o.name is not None and given(o.name))),
        graceful_timeout=values["graceful_timeout"],
        pid_file=pid_file,
        verbose=level_name,
        version=__version__,
        protocols=tuple(protocols),
        http_port=values["http_port"],
        memcached_port=values["memcached_port"],
        metrics_port=values["metrics_port"],
        events_function=values["events_function"],
        events_payloads=values["events_payloads"],
        events_buffer=values["events_buffer"],
        tls=tls,
        retry_policies=policies,
        max_dead_letters=values["max_dead_letters"],
        result_ttls=ttls,
        result_cache=values["result_cache"],
        result_cache_bytes=values["result_cache_bytes"],
        **prefix_kw,
    )
    return Invocation(
        config=config,
        log=logs.LogSettings(destination=log_file, level_name=level_name,
                             syslog=values["syslog"]),
        daemon=values["daemon"],
        pid_file=pid_file,
        pid_file_explicit=given("pid_file"),
        user=values["user"],
        file_descriptors=values["file_descriptors"],
        threads=values["threads"],
        coredump=values["coredump"],
        check_args=values["check_args"],
        notes=tuple(notes),
    )

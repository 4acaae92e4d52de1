"""The server's settings: one frozen value built by the command line, read by everything else."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

from .retry import MAX_DEAD_PER_FUNCTION, RetryPolicy


@dataclasses.dataclass(frozen=True, slots=True)
class TlsConfig:
    """``--ssl`` and its files: every listener speaks TLS only (no plaintext fallback)."""

    certificate: Path
    key: Path
    #: CA bundle for client certificates: a client certificate sent is verified against
    #: it (and required with ``verify_client``); None = client certificates not asked for.
    ca_file: Path | None = None
    #: ``--ssl-verify-client``: a connection without a certificate verified by
    #: ``ca_file`` is refused.
    verify_client: bool = False
    #: ``--ssl-handshake-timeout``: seconds a new connection has to finish its handshake.
    handshake_timeout: float = 10.0


def default_handle_prefix() -> str:
    """``H:<nodename>`` as the reference builds it (spec §2.1)."""
    return "H:" + socket.gethostname().split(".")[0]


@dataclasses.dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything ``serve()`` needs. Defaults are the reference's where they make sense."""

    #: Addresses to listen on; empty = all (0.0.0.0 and ::).
    listen: tuple[str, ...] = ()
    port: int = 4730
    #: listen(2) backlog: larger than the reference's 32, so a burst of connects (shell
    #: loops of one-off clients) is queued rather than dropped (a 1 s SYN retransmit).
    backlog: int = 1024
    #: Job handles are ``<prefix>:<n>``.
    job_handle_prefix: str = dataclasses.field(default_factory=default_handle_prefix)
    #: HEAD semantics: None = unlimited, 0 = fail on the first lost worker, N = after N retries.
    job_retries: int | None = None
    #: NOOPs per queued job; 0 = wake every sleeping worker.
    worker_wakeup: int = 0
    #: Every connection starts with the ``exceptions`` option on.
    exceptions: bool = False
    keepalive: bool = False
    keepalive_idle: int = -1
    keepalive_interval: int = -1
    keepalive_count: int = -1
    #: Largest packet payload accepted from a peer.
    max_packet_size: int = 64 * 1024 * 1024
    #: Outgoing bytes buffered for one peer before its reader is paused.
    max_outgoing_buffer: int = 8 * 1024 * 1024
    #: Seconds a peer may take no byte of its pending output before it is dropped (0 =
    #: never). Generous: a single-threaded worker busy with a long job does not read.
    write_timeout: float = 300.0
    #: Seconds a Gear or memcached connection may send nothing before it is closed
    #: (0 = never: workers sleep for hours between jobs).
    idle_timeout: float = 0.0
    #: Seconds an HTTP connection may stay idle between requests (0 = never).
    http_idle_timeout: float = 60.0
    #: Seconds an HTTP client has to send a whole request once it has begun (0 = no bound).
    http_request_timeout: float = 30.0
    #: Bytes in a function name or client id.
    max_name_length: int = 512
    #: Functions the server holds at once.
    max_functions: int = 100_000
    #: Functions one worker connection may register.
    max_worker_functions: int = 10_000
    #: Mutating admin commands (shutdown, cancel job, ...) from non-loopback peers.
    admin_from_anywhere: bool = False
    #: ``--acl-file``: access rules and tenants (docs/acl.md); None = none.
    acl_file: Path | None = None
    #: Persistent queue: "builtin" (memory only) or a store name, with its options.
    queue_type: str = "builtin"
    queue_options: tuple[tuple[str, str], ...] = ()
    #: Seconds that ``shutdown graceful`` / SIGUSR1 waits for running work.
    graceful_timeout: float = 30.0
    pid_file: Path | None = None
    #: Log level name answered to the ``verbose`` admin command (the reference's names).
    verbose: str = "ERROR"
    #: Version string answered to the ``version`` admin command.
    version: str = "0.1.0"
    #: Front-ends loaded with ``-r`` besides Gear: "http", "memcached".
    protocols: tuple[str, ...] = ()
    #: ``--http-port``: the HTTP front-end's port on the ``-L`` addresses (0 = any free one).
    http_port: int = 8080
    #: ``--memcached-port``: the memcached front-end's port (0 = any free one).
    memcached_port: int = 11211
    #: ``--metrics-port``: where ``GET /metrics`` is served on the ``-L`` addresses
    #: (0 = any free port); None = no metrics listener (the default).
    metrics_port: int | None = None
    #: How the Gear front-end reads its connections: "auto" (epoll where the platform
    #: has it), "epoll" or "streams" (a trio task per connection; portable).
    transport: str = "auto"
    #: ``--events-function``: each job life-cycle event is submitted as a background job
    #: to this function (None = no such hook).
    events_function: str | None = None
    #: ``--events-payloads``: events carry the first 256 bytes of data and results.
    events_payloads: bool = False
    #: ``--events-buffer``: events pending delivery before new ones are dropped.
    events_buffer: int = 10_000
    #: ``--ssl``: TLS on every listener (Gear, HTTP, memcached, metrics); None = plaintext.
    tls: TlsConfig | None = None
    #: ``--retry-policy``: (function name, or None for the default, policy) pairs.
    retry_policies: tuple[tuple[bytes | None, RetryPolicy], ...] = ()
    #: ``--max-dead-letters``: dead letters kept per function.
    max_dead_letters: int = MAX_DEAD_PER_FUNCTION
    #: ``--result-ttl``: (function name, or None for the default, seconds) pairs; none =
    #: no result cache.
    result_ttls: tuple[tuple[bytes | None, float], ...] = ()
    #: ``--result-cache``: "memory", "memcached://HOST:PORT" or "redis://...".
    result_cache: str = "memory"
    #: ``--result-cache-bytes``: the bound of the in-memory result cache.
    result_cache_bytes: int = 64 * 1024 * 1024

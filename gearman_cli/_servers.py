"""Server addresses, the ``GEARMAN_SERVERS`` default, and which server a job goes to.

Jobs with a unique key are placed by rendezvous (highest-random-weight) hashing, a
consistent hash: every client orders the servers the same way for the same key, so
coalescing works across several servers, and removing one server moves only its keys.
Jobs without a key are spread round-robin. A server that failed is put last in every
order until its back-off expires (failover with exponential back-off).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Final, NamedTuple

from ._log import get_logger

logger = get_logger(__name__)

DEFAULT_PORT: Final = 4730
DEFAULT_HOST: Final = "localhost"
ENV_VAR: Final = "GEARMAN_SERVERS"

#: First and largest back-off, in seconds, after a server failed.
BACKOFF_MIN: Final = 0.5
BACKOFF_MAX: Final = 30.0


class ServerAddress(NamedTuple):
    """One server: a host name or address and a TCP port."""

    host: str
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_server(text: str, default_port: int = DEFAULT_PORT) -> ServerAddress:
    """Parse ``host``, ``host:port``, ``[v6addr]`` or ``[v6addr]:port``."""
    text = text.strip()
    if not text:
        raise ValueError("empty server address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"bad server address {text!r}")
        port = default_port
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad server address {text!r}")
            port = _port(rest[1:], text)
        return ServerAddress(host, port)
    if text.count(":") == 1:
        host, _, port_text = text.partition(":")
        return ServerAddress(host or DEFAULT_HOST, _port(port_text, text))
    return ServerAddress(text, default_port)


def _port(text: str, whole: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"bad port in server address {whole!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in server address {whole!r}")
    return port


def parse_servers(spec: str, default_port: int = DEFAULT_PORT) -> list[ServerAddress]:
    """Parse a comma-separated list such as ``"10.0.0.1,10.0.0.2:7003"``."""
    return [parse_server(part, default_port) for part in spec.split(",") if part.strip()]


def default_servers() -> list[ServerAddress]:
    """The servers named by ``GEARMAN_SERVERS``, else ``localhost:4730``."""
    spec = os.environ.get(ENV_VAR, "")
    servers = parse_servers(spec) if spec.strip() else []
    return servers or [ServerAddress(DEFAULT_HOST, DEFAULT_PORT)]


ServerSpec = str | ServerAddress | tuple[str, int]


def why(exc: OSError) -> str:
    """A connect failure in a few words that name the problem."""
    import _socket

    if isinstance(exc, _socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror or exc})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "connect timed out"
    return exc.strerror or str(exc) or type(exc).__name__


def to_addresses(servers: ServerSpec | Iterable[ServerSpec]) -> list[ServerAddress]:
    """Accept a comma list, one address, a (host, port) pair, or an iterable of those."""
    if isinstance(servers, str):
        return parse_servers(servers)
    if isinstance(servers, ServerAddress):
        return [servers]
    if isinstance(servers, tuple) and len(servers) == 2 and isinstance(servers[1], int):
        return [ServerAddress(str(servers[0]), servers[1])]
    out: list[ServerAddress] = []
    for item in servers:
        out.extend(to_addresses(item))
    return out


class _Health:
    __slots__ = ("failures", "retry_at")

    def __init__(self) -> None:
        self.failures = 0
        self.retry_at = 0.0


def _weight(server: ServerAddress, key: bytes) -> bytes:
    import hashlib  # only with several servers and a unique key

    return hashlib.blake2b(
        f"{server.host}:{server.port}".encode() + b"\0" + key, digest_size=8
    ).digest()


class ServerPool:
    """The server list of a client plus each server's health (back-off state).

    Health uses ``clock`` (``time.monotonic``) so it survives across calls of the blocking
    client. Without explicit servers, ``GEARMAN_SERVERS`` is read once, at first use.
    """

    def __init__(
        self,
        explicit: list[ServerAddress] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.explicit: list[ServerAddress] = explicit if explicit is not None else []
        self.clock = clock
        self._health: dict[ServerAddress, _Health] = {}
        self._rr = 0
        self._default: list[ServerAddress] | None = None

    def _defaults(self) -> list[ServerAddress]:
        if self._default is None:
            self._default = default_servers()
        return self._default

    def add(self, address: ServerAddress) -> None:
        if address not in self.explicit:
            self.explicit.append(address)

    @property
    def servers(self) -> list[ServerAddress]:
        """The explicit list, or the ``GEARMAN_SERVERS`` default when none was added."""
        return self.explicit or self._defaults()

    def is_down(self, server: ServerAddress, now: float | None = None) -> bool:
        health = self._health.get(server)
        if health is None or health.failures == 0:
            return False
        return (self.clock() if now is None else now) < health.retry_at

    def mark_down(self, server: ServerAddress) -> None:
        health = self._health.get(server)
        if health is None:
            health = self._health[server] = _Health()
        delay = min(BACKOFF_MAX, BACKOFF_MIN * 2**health.failures)
        health.failures += 1
        health.retry_at = self.clock() + delay
        logger.info("server %s is down; retry in %.1fs", server, delay)

    def mark_up(self, server: ServerAddress) -> None:
        health = self._health.get(server)
        if health is not None and health.failures:
            logger.info("server %s is back", server)
            health.failures = 0
            health.retry_at = 0.0

    def order(self, unique: bytes = b"") -> list[ServerAddress]:
        """Servers to try for a job, best first; servers in back-off come last.

        A non-empty ``unique`` gives the same order on every client (rendezvous
        hashing); an empty one rotates round-robin. With one server the list itself is
        returned (the caller must not change it): no ordering work per job.
        """
        servers = self.explicit or self._defaults()
        if len(servers) == 1:
            return servers
        if unique:
            servers = sorted(servers, key=lambda s: _weight(s, unique), reverse=True)
        else:
            start = self._rr % len(servers)
            self._rr += 1
            servers = servers[start:] + servers[:start]
        now = self.clock()
        up = [s for s in servers if not self.is_down(s, now)]
        if len(up) == len(servers):
            return servers
        return up + [s for s in servers if self.is_down(s, now)]

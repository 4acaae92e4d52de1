"""The text admin protocol: one command line in, one reply out (spec §3, decisions.md "Admin").

A translator from admin words onto manager queries and calls; the bytes of each reply
come from ``protocol.admin`` so they match the reference exactly.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import cast

from protocol import AdminCommand
from protocol import admin as text

from . import stats
from .events import LinePeer
from .manager import Conn, Manager

#: The reference closes the connection past five words; we answer instead (decisions.md).
MAX_WORDS = 5


@dataclasses.dataclass
class AdminContext:
    """What admin commands may see and do beyond the manager."""

    manager: Manager
    version: str
    verbose: str
    pid: int
    shutdown: Callable[[bool], None]
    admin_from_anywhere: bool = False
    #: The clock the statistics read (``now`` for ages and the uptime); tests inject one.
    clock: Callable[[], float] = time.time
    #: When the server started (``clock`` time), for the uptime.
    started: float = dataclasses.field(default_factory=time.time)
    #: The server's own counters beyond the core's (traffic, store commits), for the
    #: statistics; set by the server.
    server_stats: Callable[[], dict[str, object]] | None = None
    #: Cluster: jobs per function in the shared queue that this server does not hold
    #: (``status`` adds them to the totals); None outside a cluster.
    shared_counts: Callable[[], dict[bytes, int]] | None = None

    def uptime(self, now: float) -> float:
        return max(0.0, now - self.started)


def _loopback(address: str) -> bool:
    """Whether a peer address is loopback. An unknown address ("-") is never trusted."""
    return address.startswith("127.") or address == "::1" or address.startswith(
        "::ffff:127.")


def handle_admin(ctx: AdminContext, conn: Conn, cmd: AdminCommand) -> bytes:
    """The reply to one admin line."""
    words = cmd.words
    if not words:
        return text.unknown_command(b"")
    if len(words) > MAX_WORDS and cmd.name != "watch":
        return text.err("TOO_MANY_ARGUMENTS", "Too many words in the command line")
    name = cmd.name
    handler = _COMMANDS.get(name)
    listing = _LISTINGS.get(name)
    if handler is None and listing is None:
        return text.unknown_command(words[0])
    if name in _MUTATING and not (ctx.admin_from_anywhere or _loopback(conn.address)):
        return text.err("PERMISSION_DENIED",
                        "Administrative commands are only accepted from loopback")
    if listing is not None:
        return b"".join(listing[0](ctx, conn, words))
    assert handler is not None
    return handler(ctx, conn, words)


def _workers(ctx: AdminContext, conn: Conn, words: tuple[bytes, ...]) -> Iterator[bytes]:
    for c in sorted(list(ctx.manager.conns.values()), key=lambda c: c.id):
        yield (f"{c.id} {c.address} ".encode() + c.client_id + b" :"
               + b"".join(b" " + fname for fname in reversed(c.abilities)) + b"\n")
    yield text.END


def _status(ctx: AdminContext, conn: Conn, words: tuple[bytes, ...]) -> Iterator[bytes]:
    functions = ctx.manager.functions
    shared = ctx.shared_counts() if ctx.shared_counts is not None else {}
    for name in sorted(functions.keys() | shared.keys()):
        fn = functions.get(name)
        if fn is None:
            yield text.row((name, shared[name], 0, 0))
        else:
            yield text.row((name, fn.total + shared.get(name, 0), fn.running,
                            len(fn.workers)))
    yield text.END


def _prioritystatus(ctx: AdminContext, conn: Conn,
                    words: tuple[bytes, ...]) -> Iterator[bytes]:
    for name, fn in sorted(ctx.manager.functions.items()):
        yield text.row((name, fn.live[0], fn.live[1] + fn.scheduled, fn.live[2],
                        len(fn.workers)))
    yield text.END


def _show(ctx: AdminContext, conn: Conn, words: tuple[bytes, ...]) -> Iterator[bytes]:
    if len(words) < 2:
        yield text.unknown_command(words[0])
        return
    what = b" ".join(w.lower() for w in words[1:])
    if what == b"jobs":
        for j in ctx.manager.iter_jobs():
            yield text.row((j.handle, j.retries, int(j.cancelled), int(j.background)))
    elif what == b"unique jobs":
        for j in ctx.manager.iter_jobs():
            yield j.unique + b"\n"
    else:
        yield text.err("UNKNOWN_SHOW_ARGUMENTS")
        return
    yield text.END


def _stats(ctx: AdminContext, conn: Conn, words: tuple[bytes, ...]) -> Iterator[bytes]:
    """``stats``: one line per function (``stats.COLUMNS``); ``stats json``: a document."""
    now = ctx.clock()
    if len(words) == 2 and words[1].lower() == b"json":
        yield stats.json_reply(ctx.manager, version=ctx.version, uptime=ctx.uptime(now),
                               now=now,
                               server=ctx.server_stats() if ctx.server_stats else None)
        return
    if len(words) > 1:
        yield text.invalid_arguments(words[0])
        return
    for name, st, fn in stats.functions(ctx.manager):
        yield text.row(stats.row(name, st, fn, now))
    yield text.END


#: Commands whose reply is one line per function, connection or job, and what they
#: count: past ``CHUNKED_ROWS`` such items the Gear front-end builds the reply in a task
#: that yields to other connections between chunks (``admin_listing``).
_LISTINGS: dict[str, tuple[Callable[[AdminContext, Conn, tuple[bytes, ...]],
                                    Iterator[bytes]],
                           Callable[[Manager], int]]] = {
    "workers": (_workers, lambda m: len(m.conns)),
    "status": (_status, lambda m: len(m.functions)),
    "prioritystatus": (_prioritystatus, lambda m: len(m.functions)),
    "show": (_show, lambda m: len(m.jobs)),
    "stats": (_stats, lambda m: len(m.stats)),
}
CHUNKED_ROWS = 5000


def admin_listing(ctx: AdminContext, conn: Conn, cmd: AdminCommand) -> Iterator[bytes] | None:
    """The reply's lines one by one, for a listing long enough to be built in chunks;
    None for every other command (answer it with ``handle_admin``)."""
    listing = _LISTINGS.get(cmd.name)
    if listing is None or not 1 <= len(cmd.words) <= MAX_WORDS:
        return None
    rows, size = listing
    if size(ctx.manager) < CHUNKED_ROWS:
        return None
    return rows(ctx, conn, cmd.words)


def _cancel(ctx: AdminContext, conn: Conn, words: tuple[bytes, ...]) -> bytes:
    if len(words) < 3:
        return text.unknown_command(words[0])
    if len(words) != 3 or words[1].lower() != b"job":
        return text.err("UNKNOWN_ERROR")
    if ctx.manager.cancel(words[2]):
        return text.ok()
    return text.err("UNKNOWN_JOB")


def _create(ctx: AdminContext, conn: Conn, words: tuple[bytes, ...]) -> bytes:
    if len(words) != 3 or words[1].lower() != b"function":
        return text.invalid_arguments(words[0])
    problem = ctx.manager.name_problem(words[2])
    if problem is not None:
        return text.err(problem[0].decode(), problem[1].decode())
    ctx.manager.function(words[2]).pinned = True
    return text.ok()


def _drop(ctx: AdminContext, conn: Conn, words: tuple[bytes, ...]) -> bytes:
    if len(words) != 3 or words[1].lower() != b"function":
        return text.invalid_arguments(words[0])
    problem = ctx.manager.drop_function(words[2])
    if problem is None:
        return text.ok()
    return text.err_raw(problem)


def _maxqueue(ctx: AdminContext, conn: Conn, words: tuple[bytes, ...]) -> bytes:
    if len(words) < 2:
        return text.invalid_arguments(words[0])
    sizes: list[int] = []
    for raw in words[2:]:
        try:
            sizes.append(max(0, int(raw)))
        except ValueError:
            sizes.append(0)
    if not sizes:
        limits = [0, 0, 0]
    elif len(sizes) == 1:
        limits = [sizes[0]] * 3
    elif len(sizes) == 2:
        limits = [sizes[0], sizes[1], 0]
    else:
        limits = sizes[:3]
    fn = ctx.manager.functions.get(words[1])
    if fn is not None:
        fn.maxqueue = limits
    return text.ok()


def _getpid(ctx: AdminContext, conn: Conn, words: tuple[bytes, ...]) -> bytes:
    return text.ok(str(ctx.pid), crlf=False)


def _verbose(ctx: AdminContext, conn: Conn, words: tuple[bytes, ...]) -> bytes:
    return text.ok(ctx.verbose, crlf=False)


def _version(ctx: AdminContext, conn: Conn, words: tuple[bytes, ...]) -> bytes:
    return text.ok(ctx.version, crlf=False)


def _shutdown(ctx: AdminContext, conn: Conn, words: tuple[bytes, ...]) -> bytes:
    if len(words) == 1:
        ctx.shutdown(False)
    elif len(words) == 2 and words[1].lower() == b"graceful":
        ctx.shutdown(True)
    else:
        return text.invalid_arguments(words[0])
    return text.ok()


def _watch(ctx: AdminContext, conn: Conn, words: tuple[bytes, ...]) -> bytes:
    """``watch [FUNCTION ...]``: ``OK``, then one JSON line per job event (of those
    functions only, when named) until the connection closes (``server.events``)."""
    events = ctx.manager.events
    peer = conn.peer
    if events is None or not hasattr(peer, "out"):
        return text.err("NOT_SUPPORTED", "watch is served on the Gear port only")
    events.watch(conn.id, cast(LinePeer, peer), frozenset(words[1:]))
    return text.ok()


_COMMANDS: dict[str, Callable[[AdminContext, Conn, tuple[bytes, ...]], bytes]] = {
    "cancel": _cancel,
    "create": _create,
    "drop": _drop,
    "maxqueue": _maxqueue,
    "getpid": _getpid,
    "verbose": _verbose,
    "version": _version,
    "shutdown": _shutdown,
    "watch": _watch,
}
_MUTATING = frozenset({"shutdown", "cancel", "drop", "maxqueue", "create"})

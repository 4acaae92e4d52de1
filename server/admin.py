"""The text admin protocol: one command line in, one reply out (spec §3, decisions.md "Admin").

A translator from admin words onto manager queries and calls; the bytes of each reply
come from ``protocol.admin`` so they match the reference exactly.
"""

from __future__ import annotations

import base64
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import cast

from protocol import AdminCommand
from protocol import admin as text

from . import stats
from .acl import ALL, Acl, View
from .events import LinePeer
from .jobs import name_problem
from .manager import Conn, Job, Manager
from .results import Result, handle_key, unique_key

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
    #: Access rules (``--acl-file``); None: admin-write from loopback only.
    acl: Acl | None = None

    def view(self, conn: Conn) -> View:
        """The functions (and workers, jobs) ``conn`` sees: all, or its tenant's."""
        return ALL if self.acl is None else self.acl.view(conn)

    def refusal(self, conn: Conn, name: str, log: bool = True) -> bytes | None:
        """``ERR PERMISSION_DENIED ...`` when ``conn`` may not run admin command ``name``
        (logged, unless not ``log``)."""
        if self.acl is None:
            if name in _MUTATING and not (self.admin_from_anywhere
                                          or _loopback(conn.address)):
                return text.err("PERMISSION_DENIED",
                                "Administrative commands are only accepted from loopback")
            return None
        right = "admin-write" if name in _MUTATING else "admin-read" if name in _READING \
            else None
        if right is None:
            return None
        why = self.acl.admin(conn, right, server_wide=name in _SERVER_WIDE, log=log)
        return None if why is None else text.err("PERMISSION_DENIED", why)
    #: Answer a command later (its reply comes from a task; later replies wait behind
    #: it): set by the server for replies read from a remote result cache.
    defer: Callable[[Conn, Callable[[], Awaitable[bytes]]], None] | None = None
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
    refused = ctx.refusal(conn, name)
    if refused is not None:
        return refused
    if listing is not None:
        return b"".join(listing[0](ctx, conn, words))
    assert handler is not None
    return handler(ctx, conn, words)


def _workers(ctx: AdminContext, conn: Conn, words: tuple[bytes, ...]) -> Iterator[bytes]:
    view = ctx.view(conn)
    for c in sorted(list(ctx.manager.conns.values()), key=lambda c: c.id):
        if view.sees_conn(c):
            yield (f"{c.id} {c.address} ".encode() + c.client_id + b" :"
                   + b"".join(b" " + view.show(f) for f in reversed(c.abilities)) + b"\n")
    yield text.END


def _status(ctx: AdminContext, conn: Conn, words: tuple[bytes, ...]) -> Iterator[bytes]:
    view = ctx.view(conn)
    functions = ctx.manager.functions
    shared = ctx.shared_counts() if ctx.shared_counts is not None else {}
    for name in sorted(functions.keys() | shared.keys()):
        if not view.sees(name):
            continue
        fn = functions.get(name)
        if fn is None:
            yield text.row((view.show(name), shared[name], 0, 0))
        else:
            yield text.row((view.show(name), fn.total + shared.get(name, 0), fn.running,
                            len(fn.workers)))
    yield text.END


def _prioritystatus(ctx: AdminContext, conn: Conn,
                    words: tuple[bytes, ...]) -> Iterator[bytes]:
    view = ctx.view(conn)
    for name, fn in sorted(ctx.manager.functions.items()):
        if view.sees(name):
            yield text.row((view.show(name), fn.live[0], fn.live[1] + fn.scheduled,
                            fn.live[2], len(fn.workers)))
    yield text.END


def _show(ctx: AdminContext, conn: Conn, words: tuple[bytes, ...]) -> Iterator[bytes]:
    if len(words) < 2:
        yield text.unknown_command(words[0])
        return
    what = b" ".join(w.lower() for w in words[1:])
    view = ctx.view(conn)
    if what == b"jobs":
        for j in ctx.manager.iter_jobs():
            if view.sees(j.function.name):
                yield text.row((j.handle, j.retries, int(j.cancelled), int(j.background)))
    elif what == b"unique jobs":
        for j in ctx.manager.iter_jobs():
            if view.sees(j.function.name):
                yield j.unique + b"\n"
    elif words[1].lower() == b"dead" and len(words) <= 3:
        only = view.key(words[2]) if len(words) == 3 else None
        for d in ctx.manager.dead_letters.rows(only):
            if view.sees(d.function):
                yield text.row((view.show(d.function), d.handle, d.unique, d.attempts,
                                f"{d.first_failed:.3f}", f"{d.last_failed:.3f}",
                                _one_line(d.error)))
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
                               server=ctx.server_stats() if ctx.server_stats else None,
                               view=ctx.view(conn))
        return
    if len(words) > 1:
        yield text.invalid_arguments(words[0])
        return
    for name, st, fn in stats.functions(ctx.manager, ctx.view(conn)):
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
    if ctx.acl is not None and ctx.refusal(conn, cmd.name, log=False) is not None:
        return None  # handle_admin answers (and logs) the refusal
    rows, size = listing
    if size(ctx.manager) < CHUNKED_ROWS:
        return None
    return rows(ctx, conn, cmd.words)


def _one_line(error: str) -> bytes:
    """An error text as one cell of a tab-separated row."""
    return "".join(c if c.isprintable() and c != "\t" else " " for c in error)[:512].encode()


def _dead_target(words: tuple[bytes, ...]) -> tuple[bytes, bytes | None] | None:
    """``retry|drop dead FN [HANDLE|all]``: (function, handle or None for all)."""
    if len(words) not in (3, 4) or words[1].lower() != b"dead":
        return None
    if len(words) == 3 or words[3].lower() == b"all":
        return words[2], None
    return words[2], words[3]


def _retry(ctx: AdminContext, conn: Conn, words: tuple[bytes, ...]) -> bytes:
    target = _dead_target(words)
    if target is None:
        return text.invalid_arguments(words[0])
    count = ctx.manager.retry_dead(ctx.view(conn).key(target[0]), target[1], ctx.clock())
    if count == 0 and target[1] is not None:
        return text.err("UNKNOWN_JOB")
    return text.ok(str(count))


def result_line(state: str, result: Result | None) -> bytes:
    """The ``result`` reply: ``OK STATE`` and, done or failed, the attempts and the data
    (or the failure's text) in base64."""
    if result is None:
        return text.ok(state)
    return text.ok(f"{state} {result.attempts} {base64.b64encode(result.data).decode()}")


def _job_state(job: Job | None) -> str | None:
    if job is None or job.cancelled:
        return None
    return "running" if job.worker is not None else "queued"


def _result(ctx: AdminContext, conn: Conn, words: tuple[bytes, ...]) -> bytes:
    """``result HANDLE`` / ``result unique FUNCTION KEY``: queued, running, done, failed
    or unknown (``server.results``)."""
    m = ctx.manager
    view = ctx.view(conn)  # another tenant's jobs and results read as unknown
    if len(words) == 2:
        job, key = m.jobs.get(words[1]), handle_key(words[1])
    elif len(words) == 4 and words[1].lower() == b"unique":
        function = view.key(words[2])
        job, key = m.unique_index.get((function, words[3])), unique_key(function, words[3])
    else:
        return text.invalid_arguments(words[0])
    if job is not None and not view.sees(job.function.name):
        job = None
    state = _job_state(job)
    cache = m.results
    if state is not None or cache is None:
        return text.ok(state or "unknown")
    if not cache.remote:
        raw = cache.backend.get(key, ctx.clock())
        found = Result.decode(raw) if raw is not None else None
        if found is not None and not view.sees(found.function):
            found = None
        return result_line(found.state if found else "unknown", found)
    if ctx.defer is None:
        return text.err("NOT_SUPPORTED", "result is served on the Gear port only")

    async def answer() -> bytes:
        from .results_io import ResultCacheError, fetch

        try:
            found = await fetch(cache, key)
        except ResultCacheError as exc:
            return text.err("RESULT_CACHE_UNAVAILABLE", str(exc))
        if found is not None and not view.sees(found.function):
            found = None
        return result_line(found.state if found else "unknown", found)

    ctx.defer(conn, answer)
    return b""


def _cancel(ctx: AdminContext, conn: Conn, words: tuple[bytes, ...]) -> bytes:
    if len(words) < 3:
        return text.unknown_command(words[0])
    if len(words) != 3 or words[1].lower() != b"job":
        return text.err("UNKNOWN_ERROR")
    job = ctx.manager.jobs.get(words[2])
    if job is not None and not ctx.view(conn).sees(job.function.name):
        return text.err("UNKNOWN_JOB")  # another tenant's: as if it did not exist
    if ctx.manager.cancel(words[2]):
        return text.ok()
    return text.err("UNKNOWN_JOB")


def _create(ctx: AdminContext, conn: Conn, words: tuple[bytes, ...]) -> bytes:
    if len(words) != 3 or words[1].lower() != b"function":
        return text.invalid_arguments(words[0])
    problem = name_problem(words[2], ctx.manager.limits.max_name)
    if problem is not None:
        return text.err(problem[0].decode(), problem[1].decode())
    ctx.manager.function(ctx.view(conn).key(words[2])).pinned = True
    return text.ok()


def _drop(ctx: AdminContext, conn: Conn, words: tuple[bytes, ...]) -> bytes:
    target = _dead_target(words)
    if target is not None:
        count = ctx.manager.drop_dead(ctx.view(conn).key(target[0]), target[1])
        if count == 0 and target[1] is not None:
            return text.err("UNKNOWN_JOB")
        return text.ok(str(count))
    if len(words) != 3 or words[1].lower() != b"function":
        return text.invalid_arguments(words[0])
    problem = ctx.manager.drop_function(ctx.view(conn).key(words[2]))
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
    fn = ctx.manager.functions.get(ctx.view(conn).key(words[1]))
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
    view = ctx.view(conn)
    events.watch(conn.id, cast(LinePeer, peer), frozenset(view.key(w) for w in words[1:]),
                 view.prefix)
    return text.ok()


_COMMANDS: dict[str, Callable[[AdminContext, Conn, tuple[bytes, ...]], bytes]] = {
    "cancel": _cancel,
    "create": _create,
    "drop": _drop,
    "maxqueue": _maxqueue,
    "retry": _retry,
    "result": _result,
    "getpid": _getpid,
    "verbose": _verbose,
    "version": _version,
    "shutdown": _shutdown,
    "watch": _watch,
}
#: admin-write: every command that changes the server (``verbose``, which only reads
#: the level here, is the reference's way to change it and counted as writing).
_MUTATING = frozenset({"shutdown", "cancel", "drop", "maxqueue", "create", "verbose",
                       "retry"})
#: admin-write commands that act on the whole server, not one tenant's functions.
_SERVER_WIDE = frozenset({"shutdown", "verbose"})
#: admin-read: what lists functions, workers, jobs, results, statistics or events.
#: ``version`` needs no right (clients use it as a ping).
_READING = frozenset({"workers", "status", "prioritystatus", "show", "stats", "watch",
                      "getpid", "result"})

"""gearmand's HTTP front-end (``-r http``): an h11 codec plus a translator onto the job manager.

One trio task per HTTP connection turns each request into one ``Manager.submit``, and
the packets the core delivers back (through a ``PacketPeer``) into one HTTP response:
no coalescing unless asked for, streamed WORK_DATA, keep-alive, real status codes
(``docs/architecture.md`` has the mapping).
"""

from __future__ import annotations

import logging
import math
import time
import urllib.parse
from typing import Final

import h11
import trio

from protocol import PacketType, Priority

from .host import Host, PacketPeer, Stream, TaskFrontEnd

log = logging.getLogger(__name__)

PT = PacketType

_RECEIVE_SIZE: Final = 64 * 1024
#: Bytes of a pipelined next request taken while a job runs. Reading on while the job runs
#: is how a client leaving is noticed; past this the socket is left alone until the answer.
_PIPELINE_LIMIT: Final = 64 * 1024
_METHODS: Final = (b"GET", b"POST", b"PUT")
_ALLOW: Final = b"GET, POST, PUT"
_PRIORITIES: Final = {b"high": Priority.HIGH, b"normal": Priority.NORMAL, b"low": Priority.LOW}
_REASONS: Final = {
    200: b"OK", 400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found",
    405: b"Method Not Allowed", 408: b"Request Timeout",
    413: b"Content Too Large", 500: b"Internal Server Error", 503: b"Service Unavailable",
}
#: HTTP status for an ERROR packet answering the submit; any other code is a 500.
_ERROR_STATUS: Final = {b"QUEUE_ERROR": 503, b"ARGUMENT_TOO_LARGE": 400,
                        b"INVALID_ARGUMENT": 400, b"TOO_MANY_FUNCTIONS": 503,
                        b"PERMISSION_DENIED": 403}
#: Headers that may come as trailers of a streamed (chunked) answer.
_TRAILERS: Final = b"X-Gearman-Command, X-Gearman-Work-Status, X-Gearman-Work-Warning"
#: Printable ASCII except "%": what a warning keeps as is in a header; the rest is %XX.
_HEADER_SAFE: Final = "".join(chr(c) for c in range(0x21, 0x7F) if c != ord("%"))

Headers = list[tuple[bytes, bytes]]


class _Dropped(Exception):
    """The connection is to be dropped (the message says why); the job detaches."""


def header_value(data: bytes) -> bytes:
    """Any bytes as a valid header value: printable ASCII kept, the rest (and "%") as %XX."""
    return urllib.parse.quote_from_bytes(data, safe=_HEADER_SAFE).encode("ascii")


class _Answer:
    """What the worker said so far about the job one request waits for."""

    __slots__ = ("body", "handle", "status", "warnings")

    def __init__(self) -> None:
        self.handle = b""
        self.status: tuple[bytes, bytes] | None = None
        self.warnings: list[bytes] = []
        #: WORK_DATA collected for a client that cannot take a chunked answer.
        self.body = bytearray()

    def size(self) -> int:
        return len(self.body) + sum(len(w) for w in self.warnings)

    def take_headers(self) -> Headers:
        """Status and warnings as headers (or trailers); each is reported once."""
        headers: Headers = []
        if self.status is not None:
            headers.append((b"X-Gearman-Work-Status", b"%s/%s" % self.status))
            self.status = None
        headers.extend((b"X-Gearman-Work-Warning", header_value(w)) for w in self.warnings)
        self.warnings.clear()
        return headers


class HttpConnection:
    """One HTTP client: requests read with h11, each answered from the manager's packets."""

    def __init__(self, host: Host, stream: Stream, address: str,
                 port: int = 0, *, metrics_only: bool = False) -> None:
        config = host.config
        #: ``--metrics-port``: only ``GET /metrics`` and the web monitor (``/`` and
        #: ``/stats.json``) are served; anything else is a 404.
        self.metrics_only = metrics_only
        self.host = host
        self.manager = host.manager
        self.stream = stream
        self.max_body = config.max_packet_size
        #: Bytes of answer held for this client (pending packets or a collected body).
        self.limit = config.max_packet_size + 4 * config.max_outgoing_buffer
        self.peer = PacketPeer(self.limit)
        self.conn = self.manager.connect(self.peer, address, port, "http")
        # decisions.md: an HTTP client hears of exceptions (500 with the text), not WORK_FAIL.
        self.conn.exceptions = True
        self.cid = self.peer.cid = self.conn.id
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        self.server_header = f"Gearman/{config.version} (Python)".encode()
        self.client_gone = False
        self._pipelined = 0

    # ------------------------------------------------------------------ the connection

    async def run(self) -> None:
        """Answer requests until the client leaves or the connection must close."""
        try:
            with self.peer.scope:
                while await self._one_request():
                    pass
            if self.peer.overflowed:
                raise _Dropped("too much output pending")
        except OverflowError as exc:
            log.warning("connection %d: dropped: %s", self.cid, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("connection %d: %s", self.cid, exc or "closed by peer")
        except _Dropped as exc:
            log.warning("connection %d: dropped: %s", self.cid, exc)
        except Exception:
            log.exception("connection %d: dropped after an unexpected error", self.cid)
        finally:
            # A foreground job still running loses this client, as when a Gear client leaves.
            self.manager.disconnect(self.conn, time.time())
            self.host.changed()
            with trio.CancelScope(shield=True):
                await self.stream.aclose()
            log.info("connection %d: closed", self.cid)

    async def _one_request(self) -> bool:
        """Read one request and answer it; False when the connection is to end."""
        h = self.h11
        config = self.host.config
        if not h.trailing_data[0]:
            # Idle between requests: bounded by --http-idle-timeout.
            with trio.move_on_after(config.http_idle_timeout or math.inf) as idle:
                data = await self.stream.receive_some(_RECEIVE_SIZE)
            if idle.cancelled_caught:
                log.info("connection %d: HTTP connection idle for %.0f s; closing", self.cid,
                         config.http_idle_timeout)
                return False
            h.receive_data(data)
        try:
            # A request begun must be whole within --http-request-timeout (a client that
            # trickles its head or body cannot hold the connection for ever).
            with trio.move_on_after(config.http_request_timeout or math.inf) as reading:
                event = await self._next_event()
                if not isinstance(event, h11.Request):
                    return False  # ConnectionClosed between requests
                body = await self._read_body(event)
            if reading.cancelled_caught:
                log.info("connection %d: HTTP request not complete after %.0f s; closing",
                         self.cid, config.http_request_timeout)
                if h.our_state is h11.SEND_RESPONSE or h.our_state is h11.IDLE:
                    await self._simple(408)
                return False
            assert isinstance(event, h11.Request)
        except h11.RemoteProtocolError as exc:
            log.info("connection %d: bad HTTP request: %s", self.cid, exc)
            if h.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await self._simple(exc.error_status_hint)
            return False
        if body is None:
            await self._simple(413)
            return False
        await self._answer(event, body)
        if self.client_gone or h.our_state is not h11.DONE or h.their_state is not h11.DONE:
            return False
        h.start_next_cycle()
        self._pipelined = 0
        return True

    async def _next_event(self) -> h11.Event | None:
        """The client's next event; None for h11's PAUSED (cannot happen between cycles)."""
        h = self.h11
        while True:
            event = h.next_event()
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:
                return None
            h.receive_data(await self.stream.receive_some(_RECEIVE_SIZE))

    async def _read_body(self, request: h11.Request) -> bytes | None:
        """The request body, or None when it is larger than a job may be."""
        h = self.h11
        for name, value in request.headers:
            if name == b"content-length" and int(value) > self.max_body:
                return None
        if h.they_are_waiting_for_100_continue:
            await self._send(h11.InformationalResponse(status_code=100, headers=[]))
        body = bytearray()
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.max_body:
                    return None
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:  # h11 raises on a truncated body; anything else is the end too
                raise h11.RemoteProtocolError("request body incomplete", error_status_hint=400)

    # ------------------------------------------------------------------ the translation

    async def _answer(self, request: h11.Request, body: bytes) -> None:
        path = request.target.partition(b"?")[0]
        if path == b"/metrics" or self.metrics_only:
            # Reserved on the -r http port: never a function name (man/gearmand.8). The
            # web monitor is on the metrics port only: there every path is ours.
            await self._metrics(request, path)
            return
        if request.method not in _METHODS:
            await self._simple(405, [(b"Allow", _ALLOW)])
            return
        if request.method == b"GET" and (path == b"/dead" or path.startswith((b"/dead/",
                                                                             b"/jobs/"))):
            from .http_jobs import job_page  # reserved paths (man/gearmand.8)

            admin = self.host.admin  # admin-read with --acl-file; a tenant sees its own
            if admin.refusal(self.conn, "result" if path.startswith(b"/jobs/")
                             else "show") is not None:
                await self._simple(403)
                return
            await self._page(*await job_page(self.manager, path, admin.view(self.conn)))
            return
        # As the reference: leading "/"s stripped, the rest (query included) verbatim.
        function = request.target.lstrip(b"/")
        if not function:
            await self._simple(404)
            return
        unique = b""  # decisions.md: no coalescing unless asked for
        background = False
        priority = Priority.NORMAL
        for name, value in request.headers:
            if name == b"x-gearman-unique":
                unique = value
            elif name == b"x-gearman-background":
                background = value.lower() == b"true"
            elif name == b"x-gearman-priority":
                priority = _PRIORITIES.get(value.lower(), Priority.NORMAL)
        workload = b"" if request.method == b"GET" else body
        self.manager.submit_checked(self.conn, function, unique, workload, int(priority),
                                    background, time.time())
        # The submit may have woken workers on other connections.
        self.host.changed()
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch, nursery.cancel_scope)
            try:
                await self._relay(request, background)
            except Exception as exc:  # re-raised below, not wrapped in an exception group
                failure = exc
            finally:
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _metrics(self, request: h11.Request, path: bytes) -> None:
        """``GET /metrics``: the Prometheus text format, read from the core now; on the
        metrics port also ``GET /`` (the web monitor) and ``GET /stats.json``."""
        pages = (b"/metrics", b"/", b"/stats.json") if self.metrics_only else (b"/metrics",)
        if path not in pages:
            await self._simple(404)
            return
        if request.method != b"GET":
            await self._simple(405, [(b"Allow", b"GET")])
            return
        admin = self.host.admin
        if admin.refusal(self.conn, "stats") is not None:  # admin-read, with --acl-file
            await self._simple(403)
            return
        view = admin.view(self.conn)
        extra: Headers = []
        if path == b"/metrics":
            from .metrics import CONTENT_TYPE, render  # prometheus_client only when asked

            content_type, page = CONTENT_TYPE, render(admin, view)
        else:
            from . import web

            if path == b"/":
                content_type, page = web.PAGE_TYPE, web.page()
            else:
                content_type, page = web.JSON_TYPE, web.stats_json(admin, view)
                extra.append((b"Cache-Control", b"no-store"))
        await self._send(h11.Response(status_code=200, reason=b"OK", headers=[
            (b"Content-Type", content_type), (b"Content-Length", b"%d" % len(page)),
            *extra, (b"Server", self.server_header)]))
        await self._send(h11.Data(data=page))
        await self._send(h11.EndOfMessage())

    async def _watch(self, scope: trio.CancelScope) -> None:
        """While a job runs, notice the client leaving (and keep what it pipelined)."""
        while self._pipelined < _PIPELINE_LIMIT:
            try:
                data = await self.stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                log.info("connection %d: HTTP client left before its answer", self.cid)
                self.client_gone = True
                scope.cancel()
                return
            self._pipelined += len(data)
            self.h11.receive_data(data)

    async def _relay(self, request: h11.Request, background: bool) -> None:
        """Turn the packets about the submitted job into one HTTP response."""
        chunked_ok = request.http_version == b"1.1"
        streaming = False
        answer = _Answer()
        while True:
            ptype, args = await self.peer.next_packet()
            if ptype == PT.JOB_CREATED:
                answer.handle = args[0]
                if background:
                    await self._final(answer, 200, b"JOB_CREATED", b"", streaming)
                    return
                continue
            if ptype == PT.ERROR:
                code, text = args[0], args[1]
                log.info("connection %d: submit refused: %s %s", self.cid,
                         code.decode("latin-1"), text.decode("latin-1"))
                await self._final(answer, _ERROR_STATUS.get(code, 500), b"ERROR", text,
                                  streaming, [(b"X-Gearman-Error", header_value(code))])
                return
            if not args or args[0] != answer.handle:
                continue  # not about this request's job (a stray; cannot happen today)
            if ptype == PT.WORK_DATA:
                if chunked_ok:
                    if not streaming:
                        await self._start_stream(answer)
                        streaming = True
                    await self._send(h11.Data(data=args[1]))
                else:
                    answer.body += args[1]
            elif ptype == PT.WORK_WARNING:
                answer.warnings.append(args[1])
            elif ptype == PT.WORK_STATUS:
                answer.status = (args[1], args[2])
            elif ptype == PT.WORK_COMPLETE:
                await self._final(answer, 200, b"WORK_COMPLETE", args[1], streaming)
                return
            elif ptype == PT.WORK_FAIL:
                await self._final(answer, 500, b"WORK_FAIL", b"", streaming)
                return
            elif ptype == PT.WORK_EXCEPTION:
                await self._final(answer, 500, b"WORK_EXCEPTION", args[1], streaming)
                return
            if answer.size() > self.limit:
                raise _Dropped("answer larger than the output bound")

    async def _start_stream(self, answer: _Answer) -> None:
        """First WORK_DATA on HTTP/1.1: headers now, the data chunked, the end in trailers."""
        headers: Headers = [
            (b"X-Gearman-Job-Handle", answer.handle),
            (b"X-Gearman-Command", b"WORK_DATA"),
            *answer.take_headers(),
            (b"Trailer", _TRAILERS),
            (b"Transfer-Encoding", b"chunked"),
            (b"Server", self.server_header),
        ]
        await self._send(h11.Response(status_code=200, headers=headers, reason=b"OK"))

    async def _final(self, answer: _Answer, status: int, command: bytes, payload: bytes,
                     streaming: bool, extra: Headers | None = None) -> None:
        """End the answer: the last chunk and trailers, or one whole response."""
        if streaming:
            if payload:
                await self._send(h11.Data(data=payload))
            trailers: Headers = [(b"X-Gearman-Command", command), *answer.take_headers()]
            await self._send(h11.EndOfMessage(headers=trailers))
            return
        body = bytes(answer.body) + payload if answer.body else payload
        headers: Headers = []
        if answer.handle:
            headers.append((b"X-Gearman-Job-Handle", answer.handle))
        headers.append((b"X-Gearman-Command", command))
        headers.extend(answer.take_headers())
        headers.extend(extra or ())
        headers += [(b"Content-Length", b"%d" % len(body)), (b"Server", self.server_header)]
        await self._send(h11.Response(status_code=status, headers=headers,
                                      reason=_REASONS.get(status, b"")))
        if body:
            await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())

    async def _page(self, status: int, body: bytes) -> None:
        await self._send(h11.Response(status_code=status, reason=_REASONS.get(status, b""),
                                      headers=[(b"Content-Type", b"application/json"),
                                               (b"Content-Length", b"%d" % len(body)),
                                               (b"Server", self.server_header)]))
        await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())

    async def _simple(self, status: int, extra: Headers | None = None) -> None:
        """An empty answer that submits nothing (400, 404, 405, 413)."""
        headers: Headers = [(b"Server", self.server_header), (b"Content-Length", b"0")]
        headers.extend(extra or ())
        if status in (400, 408, 413):
            headers.append((b"Connection", b"close"))
        await self._send(h11.Response(status_code=status, headers=headers,
                                      reason=_REASONS.get(status, b"")))
        await self._send(h11.EndOfMessage())

    async def _send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            # Bounded like a Gear peer's output: a client that takes none of it for
            # --write-timeout seconds is dropped.
            timeout = self.host.config.write_timeout or math.inf
            with trio.move_on_after(timeout) as scope:
                await self.stream.send_all(data)
            if scope.cancelled_caught:
                raise _Dropped(f"took no data for {timeout:.0f} s")


# ---------------------------------------------------------------------- listening


class HttpFrontEnd(TaskFrontEnd):
    """``-r http``: HTTP/1.1 on ``--http-port`` at the ``-L`` addresses."""

    name = "http"

    def open(self, stream: Stream, address: str, port: int) -> HttpConnection:
        return HttpConnection(self.host, stream, address, port)


class MetricsFrontEnd(TaskFrontEnd):
    """``--metrics-port``: ``GET /metrics`` and the web monitor (``GET /``,
    ``GET /stats.json``) on its own listener at the ``-L`` addresses (the HTTP front-end's
    machinery; no job is ever submitted here)."""

    name = "metrics"

    def open(self, stream: Stream, address: str, port: int) -> HttpConnection:
        return HttpConnection(self.host, stream, address, port, metrics_only=True)

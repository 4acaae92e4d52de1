"""gearmand's HTTP front-end (``-r http``): an h11 codec plus a translator onto the job manager.

One trio task per HTTP connection reads requests and turns each into one
``Manager.submit``; the packets the core delivers back become the HTTP response as they
come (in the core's call: no queue, no task switch). Each piece of a response is one
write, straight to the socket when it takes it all, else (and over TLS) by the
connection's writer task. No coalescing unless asked for, streamed WORK_DATA,
keep-alive, pipelining, real status codes (``docs/architecture.md`` has the mapping).

A keep-alive request costs one wake-up of the connection's task (its read) and one write;
no cancel scope, no deadline moved. The idle and request timeouts share one cancel scope
per connection, re-armed only when it fires before either is due, and moved only when a
read leaves a request incomplete.
"""

from __future__ import annotations

import logging
import math
import os
import time
import urllib.parse
from collections.abc import Callable
from typing import Final

import h11
import trio

from protocol import PacketType, Priority

from .host import Host, PacketPeer, Stream, TaskFrontEnd

log = logging.getLogger(__name__)

PT = PacketType

_RECEIVE_SIZE: Final = 64 * 1024
_wait_readable: Final = trio.lowlevel.wait_readable
_END: Final = h11.EndOfMessage()  # events are immutable: one serves every response
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

    __slots__ = ("background", "body", "chunked_ok", "handle", "status", "streaming",
                 "warnings")

    def __init__(self, background: bool, chunked_ok: bool) -> None:
        self.background = background
        #: HTTP/1.1: WORK_DATA is streamed as chunks; HTTP/1.0: collected in ``body``.
        self.chunked_ok = chunked_ok
        self.streaming = False
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


class _HttpPeer(PacketPeer):
    """The core's packets handed to the connection as they come (holds kept in order by
    ``PacketPeer``): no queue, no wake-up of the connection's task."""

    __slots__ = ("take",)

    def __init__(self, limit: int, take: Callable[[PacketType, tuple[bytes, ...]], None]
                 ) -> None:
        super().__init__(limit)
        self.take = take

    def _push(self, ptype: PacketType, args: tuple[bytes, ...]) -> None:
        self.take(ptype, args)


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
        #: Plain TCP: answers are written straight to this descriptor when it takes them.
        self.fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        self.max_body = config.max_packet_size
        #: Bytes of answer held for this client (a collected body, or output not taken).
        self.limit = config.max_packet_size + 4 * config.max_outgoing_buffer
        self.peer = _HttpPeer(self.limit, self._packet)
        self.conn = self.manager.connect(self.peer, address, port, "http")
        # decisions.md: an HTTP client hears of exceptions (500 with the text), not WORK_FAIL.
        self.conn.exceptions = True
        self.cid = self.peer.cid = self.conn.id
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        self.server_header = f"Gearman/{config.version} (Python)".encode()
        self.client_gone = False
        self._idle_timeout = config.http_idle_timeout or math.inf
        self._request_timeout = config.http_request_timeout or math.inf
        self._request: h11.Request | None = None  # the request being read, and its body
        self._body = bytearray()
        #: When the request being read was found incomplete (inf: none is).
        self._begun = math.inf
        #: When the connection last went idle (its last answer ended).
        self._last = 0.0
        #: The job the current request waits for (None: no job runs).
        self._answer: _Answer | None = None
        self._keep_alive = True
        self._pipelined = 0
        self._closing = False
        #: Why the connection is dropped (set where no exception can carry it).
        self._drop: tuple[int, str] | None = None
        self._timer = trio.CancelScope()
        #: While a job runs and its end must wake the reading task: that read's scope.
        self._wake: trio.CancelScope | None = None
        self._answered: trio.Event | None = None
        self._unwakeable = False  # the reading task is in a read only data can end
        # Output: what the socket did not take yet, written in order by ``_writer``.
        self._out = bytearray()
        self._writing = False
        self._nursery: trio.Nursery | None = None
        self._writer_wake: trio.Event | None = None
        self._drained: trio.Event | None = None

    # ------------------------------------------------------------------ the connection

    async def run(self) -> None:
        """Answer requests until the client leaves or the connection must close."""
        try:
            with self.peer.scope:
                failure: Exception | None = None
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    try:
                        await self._serve_timed()
                        if not self.client_gone:
                            await self._drain()
                    except Exception as exc:  # re-raised below, not in an exception group
                        failure = exc
                    finally:
                        nursery.cancel_scope.cancel()
                if failure is not None:
                    raise failure
            if self._drop is not None:
                log.log(self._drop[0], "connection %d: %s", self.cid, self._drop[1])
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("connection %d: %s", self.cid, exc or "closed by peer")
        except _Dropped as exc:
            log.warning("connection %d: dropped: %s", self.cid, exc)
        except Exception:
            log.exception("connection %d: dropped after an unexpected error", self.cid)
        finally:
            self._drop = self._drop or (logging.DEBUG, "closed")
            # No cycle left (peer -> self): freed without the cyclic GC.
            self.peer.take, self._nursery = lambda ptype, args: None, None
            # A foreground job still running loses this client, as when a Gear client leaves.
            self.manager.disconnect(self.conn, time.time())
            self.host.changed()
            with trio.CancelScope(shield=True):
                await self.stream.aclose()
            log.info("connection %d: closed", self.cid)

    async def _serve_timed(self) -> None:
        """``_serve`` under the idle and request timeouts: one scope, re-armed when it fired
        before either was really due (an answer or a request moved them on meanwhile)."""
        self._last = now = trio.current_time()
        deadline = now + self._idle_timeout
        while True:
            with trio.CancelScope(deadline=deadline) as self._timer:
                await self._serve()
                return
            now = trio.current_time()
            if self._begun + self._request_timeout <= now:
                log.info("connection %d: HTTP request not complete after %.0f s; closing",
                         self.cid, self._request_timeout)
                if self.h11.our_state is h11.SEND_RESPONSE or self.h11.our_state is h11.IDLE:
                    self._simple(408)
                return
            if self._answer is None and self._last + self._idle_timeout <= now \
                    and self._begun == math.inf:
                log.info("connection %d: HTTP connection idle for %.0f s; closing", self.cid,
                         self._idle_timeout)
                return
            idle_end = (now if self._answer is not None else self._last) + self._idle_timeout
            deadline = min(idle_end, self._begun + self._request_timeout)

    async def _serve(self) -> None:
        """Read and answer requests until the connection is to end. What a request has got
        to is kept on ``self``: a cancelled read loses nothing, so this may be re-entered."""
        h = self.h11
        receive = self._receive
        while not self._closing:
            if self._answer is not None:
                # A job runs: read on, to notice the client leaving (and keep what it
                # pipelined, up to a bound); its answer is written as the core delivers it.
                if self._pipelined >= _PIPELINE_LIMIT:
                    self._answered = answered = trio.Event()
                    await answered.wait()
                    continue
                if self._pipelined or not self._keep_alive:
                    # This answer's end must wake this task (the next request is here
                    # already, or the connection closes after it).
                    with trio.CancelScope() as wake:
                        self._wake = wake
                        data = await receive()
                    self._wake = None
                    if wake.cancelled_caught:
                        continue
                else:
                    self._unwakeable = True
                    try:
                        data = await receive()
                    finally:
                        self._unwakeable = False
                if self._answer is None:  # answered meanwhile: this is the next request
                    h.receive_data(data)
                    continue
                if not data:
                    log.info("connection %d: HTTP client left before its answer", self.cid)
                    self.client_gone = True
                    return
                self._pipelined += len(data)
                h.receive_data(data)
                continue
            try:
                event = h.next_event()
                if event is h11.NEED_DATA:
                    if self._request is not None or self._begun != math.inf or \
                            h.trailing_data[0]:
                        self._started()
                    h.receive_data(await receive())
                    continue
                if type(event) is h11.Request:
                    if not self._read_head(event):
                        return
                elif type(event) is h11.Data:
                    self._body += event.data
                    if len(self._body) > self.max_body:
                        self._simple(413)
                        return
                elif type(event) is h11.EndOfMessage:
                    request = self._request
                    assert request is not None
                    body = bytes(self._body)
                    self._request = None
                    self._body = bytearray()
                    self._begun = math.inf
                    if self._dispatch(request, body):
                        await self._job_page(request.target.partition(b"?")[0])
                else:  # ConnectionClosed between requests, or PAUSED (cannot happen)
                    return
            except h11.RemoteProtocolError as exc:
                log.info("connection %d: bad HTTP request: %s", self.cid, exc)
                if h.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    self._simple(exc.error_status_hint)
                return

    async def _receive(self) -> bytes:
        """What the client sent next (b"": it closed). Plain TCP: wait, then one read (no
        read tried first: between requests nothing is there yet)."""
        fd = self.fd
        if fd < 0:
            return await self.stream.receive_some(_RECEIVE_SIZE)
        while True:
            await _wait_readable(fd)
            try:
                return os.read(fd, _RECEIVE_SIZE)
            except BlockingIOError:
                continue
            except OSError as exc:  # ECONNRESET and the like
                raise trio.BrokenResourceError(f"read failed: {exc}") from exc

    def _started(self) -> None:
        """A request is begun and not whole: it must be within --http-request-timeout
        (a client that trickles its head or body cannot hold the connection for ever)."""
        if self._begun == math.inf:
            self._begun = trio.current_time()
            due = self._begun + self._request_timeout
            if due < self._timer.deadline:
                self._timer.deadline = due

    def _read_head(self, request: h11.Request) -> bool:
        """A request's head: False (after a 413) when its body is larger than a job may be."""
        for name, value in request.headers:
            if name == b"content-length" and int(value) > self.max_body:
                self._simple(413)
                return False
        self._request = request
        if self.h11.they_are_waiting_for_100_continue:
            self._write(self.h11.send(h11.InformationalResponse(status_code=100,
                                                                headers=[])) or b"")
        return True

    # ------------------------------------------------------------------ the translation

    def _dispatch(self, request: h11.Request, body: bytes) -> bool:
        """Answer a request, or submit its job; True when it is for a job page (async)."""
        path = request.target.partition(b"?")[0]
        if path == b"/metrics" or self.metrics_only:
            # Reserved on the -r http port: never a function name (man/gearmand.8). The
            # web monitor is on the metrics port only: there every path is ours.
            self._metrics(request, path)
            return False
        if request.method not in _METHODS:
            self._simple(405, [(b"Allow", _ALLOW)])
            return False
        if request.method == b"GET" and (path == b"/dead" or path.startswith((b"/dead/",
                                                                             b"/jobs/"))):
            return True
        # As the reference: leading "/"s stripped, the rest (query included) verbatim.
        function = request.target.lstrip(b"/")
        if not function:
            self._simple(404)
            return False
        unique = b""  # decisions.md: no coalescing unless asked for
        background = False
        priority = Priority.NORMAL
        # Whether h11 keeps the connection open after the answer (its rule): when it does
        # not, the answer's end must wake the reading task.
        keep_alive = request.http_version == b"1.1"
        for name, value in request.headers:
            if name == b"x-gearman-unique":
                unique = value
            elif name == b"x-gearman-background":
                background = value.lower() == b"true"
            elif name == b"x-gearman-priority":
                priority = _PRIORITIES.get(value.lower(), Priority.NORMAL)
            elif name == b"connection" and b"close" in [
                    v.strip() for v in value.lower().split(b",")]:
                keep_alive = False
        workload = b"" if request.method == b"GET" else body
        self._answer = _Answer(background, request.http_version == b"1.1")
        self._keep_alive = keep_alive
        # A next request read with this one waits in h11 until this answer ends.
        self._pipelined = len(self.h11.trailing_data[0])
        # The answer may come in this call already (an ERROR, a background JOB_CREATED).
        self.manager.submit_checked(self.conn, function, unique, workload, int(priority),
                                    background, time.time())
        # The submit may have woken workers on other connections.
        self.host.changed()
        return False

    async def _job_page(self, path: bytes) -> None:
        from .http_jobs import job_page  # reserved paths (man/gearmand.8)

        admin = self.host.admin  # admin-read with --acl-file; a tenant sees its own
        if admin.refusal(self.conn, "result" if path.startswith(b"/jobs/")
                         else "show") is not None:
            self._simple(403)
            return
        # Not cut short by the idle timer (re-armed after).
        self._timer.deadline = math.inf
        status, page = await job_page(self.manager, path, admin.view(self.conn))
        self._timer.deadline = trio.current_time() + self._idle_timeout
        self._respond(status, [(b"Content-Type", b"application/json"),
                               (b"Content-Length", b"%d" % len(page)),
                               (b"Server", self.server_header)], page)

    def _metrics(self, request: h11.Request, path: bytes) -> None:
        from .http_jobs import metrics_page

        status, headers, page = metrics_page(self.host.admin, self.conn, request.method,
                                             path, self.metrics_only)
        if status != 200:
            self._simple(status, headers)
            return
        self._respond(200, [*headers, (b"Server", self.server_header)], page)

    def _packet(self, ptype: PacketType, args: tuple[bytes, ...]) -> None:
        """A packet from the core about the running job: turned into the answer at once.
        Never raises into the core: a failure drops this connection."""
        answer = self._answer
        if answer is None or self._drop is not None:
            return  # not about a request of this connection (a stray; cannot happen today)
        try:
            self._relay(answer, ptype, args)
        except _Dropped as exc:
            self._fail(logging.WARNING, f"dropped: {exc}")
        except Exception:
            log.exception("connection %d: dropped after an unexpected error", self.cid)
            self._fail(logging.DEBUG, "dropped")

    def _relay(self, answer: _Answer, ptype: PacketType, args: tuple[bytes, ...]) -> None:
        if ptype == PT.WORK_COMPLETE and args[0] == answer.handle:
            self._final(answer, 200, b"WORK_COMPLETE", args[1])
            return
        if ptype == PT.JOB_CREATED:
            answer.handle = args[0]
            if answer.background:
                self._final(answer, 200, b"JOB_CREATED", b"")
            return
        if ptype == PT.ERROR:
            code, text = args[0], args[1]
            log.info("connection %d: submit refused: %s %s", self.cid,
                     code.decode("latin-1"), text.decode("latin-1"))
            self._final(answer, _ERROR_STATUS.get(code, 500), b"ERROR", text,
                        [(b"X-Gearman-Error", header_value(code))])
            return
        if not args or args[0] != answer.handle:
            return  # not about this request's job (a stray; cannot happen today)
        if ptype == PT.WORK_DATA:
            if answer.chunked_ok:
                if not answer.streaming:
                    self._start_stream(answer)
                self._write(self.h11.send(h11.Data(data=args[1])) or b"")
            else:
                answer.body += args[1]
        elif ptype == PT.WORK_WARNING:
            answer.warnings.append(args[1])
        elif ptype == PT.WORK_STATUS:
            answer.status = (args[1], args[2])
        elif ptype == PT.WORK_FAIL or ptype == PT.WORK_EXCEPTION:
            failed = ptype == PT.WORK_FAIL
            self._final(answer, 500, ptype.name.encode(), b"" if failed else args[1])
            return
        if answer.size() > self.limit:
            raise _Dropped("answer larger than the output bound")

    def _start_stream(self, answer: _Answer) -> None:
        """First WORK_DATA on HTTP/1.1: headers now, the data chunked, the end in trailers."""
        answer.streaming = True
        headers: Headers = [(b"X-Gearman-Job-Handle", answer.handle),
                            (b"X-Gearman-Command", b"WORK_DATA"), *answer.take_headers(),
                            (b"Trailer", _TRAILERS), (b"Transfer-Encoding", b"chunked"),
                            (b"Server", self.server_header)]
        self._write(self.h11.send(h11.Response(status_code=200, headers=headers,
                                               reason=b"OK")) or b"")

    def _final(self, answer: _Answer, status: int, command: bytes, payload: bytes,
               extra: Headers | None = None) -> None:
        """End the answer (the last chunk and trailers, or one whole response): one write."""
        if answer.streaming:
            send = self.h11.send
            trailers: Headers = [(b"X-Gearman-Command", command), *answer.take_headers()]
            out = (send(h11.Data(data=payload)) or b"") if payload else b""
            self._write(out + (send(h11.EndOfMessage(headers=trailers)) or b""))
            self._answered_end()
            return
        body = bytes(answer.body) + payload if answer.body else payload
        headers: Headers = []
        if answer.handle:
            headers.append((b"X-Gearman-Job-Handle", answer.handle))
        headers.append((b"X-Gearman-Command", command))
        if answer.status is not None or answer.warnings:
            headers.extend(answer.take_headers())
        if extra:
            headers.extend(extra)
        headers += [(b"Content-Length", b"%d" % len(body)), (b"Server", self.server_header)]
        self._respond(status, headers, body)
        self._answered_end()

    def _answered_end(self) -> None:
        """The job's answer is written: the task reading goes on with the next request."""
        self._answer = None
        self._last = trio.current_time()
        if self._wake is not None:
            self._wake.cancel()
        elif self._closing and self._unwakeable:  # cannot be: keep_alive is h11's rule
            self.peer.scope.cancel()
        if self._answered is not None:
            self._answered.set()
            self._answered = None

    def _respond(self, status: int, headers: Headers, body: bytes) -> None:
        """A whole response with a Content-Length: head and body in one write."""
        h = self.h11
        head = h.send(h11.Response(status_code=status, headers=headers,
                                   reason=_REASONS.get(status, b""))) or b""
        self._write(head + (h.send(h11.Data(data=body)) or b"") if body else head)
        h.send(_END)
        if h.our_state is h11.DONE and h.their_state is h11.DONE:
            h.start_next_cycle()
            self._pipelined = 0
        else:  # Connection: close, HTTP/1.0, or a request not read to its end
            self._closing = True

    def _simple(self, status: int, extra: Headers | None = None) -> None:
        """An empty answer that submits nothing (400, 404, 405, 408, 413)."""
        headers: Headers = [(b"Server", self.server_header), (b"Content-Length", b"0")]
        headers.extend(extra or ())
        if status in (400, 408, 413):
            headers.append((b"Connection", b"close"))
        self._respond(status, headers, b"")

    # ------------------------------------------------------------------ output

    def _write(self, data: bytes) -> None:
        """Output in order: written at once when the socket takes it all, the rest (and
        everything over TLS) by the writer task, bounded like a Gear peer's output."""
        if not data or self._drop is not None:
            return
        if self.fd >= 0 and not self._out and not self._writing:
            try:
                sent = os.write(self.fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:  # the client has gone (EPIPE, ECONNRESET)
                self._fail(logging.INFO, f"write failed: {exc}")
                return
            if sent == len(data):
                return
            data = data[sent:]
        self._out += data
        if len(self._out) > self.limit:
            self._fail(logging.WARNING, f"client does not read ({len(self._out)} bytes "
                       "pending); dropping")
            return
        if self._writer_wake is not None:
            self._writer_wake.set()
        elif not self._writing and self._nursery is not None:
            self._writing = True
            self._nursery.start_soon(self._writer)

    async def _writer(self) -> None:
        """Write what the socket did not take at once: a client that takes none of it for
        --write-timeout seconds is dropped."""
        timeout = self.host.config.write_timeout or math.inf
        try:
            while True:
                self._writing = True
                while self._out:
                    data = bytes(self._out)
                    self._out.clear()
                    with trio.move_on_after(timeout) as scope:
                        await self.stream.send_all(data)
                    if scope.cancelled_caught:
                        self._fail(logging.WARNING, f"dropped: took no data for {timeout:.0f} s")
                        return
                self._writing = False
                if self._drained is not None:
                    self._drained.set()
                self._writer_wake = wake = trio.Event()
                await wake.wait()
                self._writer_wake = None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(logging.INFO, str(exc) or "closed by peer")

    async def _drain(self) -> None:
        """Wait until the writer task has written everything (the connection closes)."""
        while (self._out or self._writing) and self._drop is None:
            self._drained = drained = trio.Event()
            await drained.wait()

    def _fail(self, level: int, why: str) -> None:
        """Drop the connection (from the core's call or the writer): the reading task ends."""
        if self._drop is None:
            self._drop = (level, why)
            self._out.clear()
            self.peer.overflowed = True  # the core's later packets are not taken
            self.peer.scope.cancel()


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

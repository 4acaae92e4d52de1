"""The web monitor on ``--metrics-port`` (issue 15): ``GET /`` (one self-contained page)
and ``GET /stats.json`` (the admin ``stats json`` document), checked in-process over the
wire (fast layer), and the page rendered by a real headless chromium against a gearmand
process with jobs run by a worker (slow layer).
"""

from __future__ import annotations

import html.parser
import json
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import pytest
import trio
from conftest import IN_CI, RunningServer, free_port
from test_server_app import Peer

from gearman_cli import Client, Job, Worker
from protocol import PacketType, encode_req
from server.app import Server
from server.config import ServerConfig

PT = PacketType
CHROMIUM = "/usr/bin/chromium"


async def _http(port: int, target: bytes, method: bytes = b"GET") -> tuple[bytes, bytes]:
    """One HTTP/1.0 request; the head and the body."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(method + b" " + target + b" HTTP/1.0\r\nHost: x\r\n\r\n")
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    await stream.aclose()
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def _header(head: bytes, name: bytes) -> bytes:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    raise KeyError(name)


class _Links(html.parser.HTMLParser):
    """Every URL the page refers to in an attribute (src, href, action, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "action", "srcset", "poster", "data") and value:
                self.urls.append(value)


def assert_self_contained(page: str) -> None:
    """Nothing in the page is loaded from another host (or any absolute URL)."""
    links = _Links()
    links.feed(page)
    assert links.urls, "the page links stats.json and metrics"
    for url in links.urls:
        assert not re.match(r"\s*(?:[a-z][a-z0-9+.-]*:)?//", url, re.I), url
        assert not url.lower().startswith(("http:", "https:", "data:", "javascript:")), url
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert not re.search(r"@import|url\(", page, re.I)  # CSS loads nothing
    # Scripts fetch only what is relative to the page (stats.json).
    assert re.findall(r"""fetch\(\s*["']([^"']*)""", page) == ["stats.json"]
    assert "<script src" not in page and "<link" not in page


@pytest.fixture
async def web(nursery: trio.Nursery) -> tuple[Server, int, int]:
    """Our server in-process with a metrics port: (server, Gear port, metrics port)."""
    srv = Server(ServerConfig(listen=("127.0.0.1",), port=0, metrics_port=0))
    (addr, *_) = await nursery.start(srv.serve)
    return srv, addr[1], srv.metrics_addresses[0][1]


async def test_page_is_served_and_self_contained(web: tuple[Server, int, int]) -> None:
    srv, _, mport = web
    head, body = await _http(mport, b"/")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert _header(head, b"content-type").startswith(b"text/html")
    assert int(_header(head, b"content-length")) == len(body)
    page = body.decode()
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    assert_self_contained(page)
    # The page is the file shipped in the package (importlib.resources in the installed
    # tree), so a wheel built from the package carries it.
    shipped = resources.files("server.web").joinpath("monitor.html").read_bytes()
    assert body == shipped
    # A query string does not change the page; /index.html is not an alias.
    assert (await _http(mport, b"/?refresh=1"))[1] == body
    srv.shutdown()


async def test_the_self_contained_check_catches_external_urls() -> None:
    for bad in ('<script src="https://cdn.example/x.js"></script>',
                '<link rel="stylesheet" href="//cdn.example/x.css">',
                '<img src="http://127.0.0.2/x.png">',
                '<style>@import "x.css";</style>'):
        with pytest.raises(AssertionError):
            assert_self_contained('<a href="stats.json">s</a><script>fetch("stats.json")'
                                  "</script>" + bad)


async def test_stats_json_after_jobs(web: tuple[Server, int, int]) -> None:
    srv, port, mport = web
    # An empty server: the document with no function.
    head, body = await _http(mport, b"/stats.json")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert _header(head, b"content-type") == b"application/json"
    assert _header(head, b"cache-control") == b"no-store"
    doc = json.loads(body)
    assert doc["functions"] == {} and doc["version"] == srv.config.version
    # A worker for "rev", two jobs for it (one run to the end) and one for "idle".
    worker = Peer(await trio.open_tcp_stream("127.0.0.1", port))
    client = Peer(await trio.open_tcp_stream("127.0.0.1", port))
    await worker.send(encode_req(PT.CAN_DO, b"rev"))
    await client.send(encode_req(PT.SUBMIT_JOB, b"rev", b"", b"abc"))
    handle = (await client.packet()).args[0]
    await client.send(encode_req(PT.SUBMIT_JOB_BG, b"rev", b"", b"later"),
                      encode_req(PT.SUBMIT_JOB_HIGH_BG, b"idle", b"", b"x"))
    assert (await client.packet()).type is PT.JOB_CREATED
    assert (await client.packet()).type is PT.JOB_CREATED
    await worker.send(encode_req(PT.GRAB_JOB))
    while (assign := await worker.packet()).type is not PT.JOB_ASSIGN:
        await worker.send(encode_req(PT.GRAB_JOB))
    assert assign.args == (handle, b"rev", b"abc")
    await worker.send(encode_req(PT.WORK_COMPLETE, handle, b"cba"))
    assert (await client.packet()).type is PT.WORK_COMPLETE
    doc = json.loads((await _http(mport, b"/stats.json"))[1])
    rev, idle = doc["functions"]["rev"], doc["functions"]["idle"]
    assert rev["completed"] == 1 and rev["queued"] == 1 and rev["workers"] == 1
    assert rev["submitted"]["normal"] == {"foreground": 1, "background": 1}
    assert rev["run_seconds"]["count"] == 1 and rev["queue_wait_seconds"]["count"] == 1
    assert idle["submitted"]["high"]["background"] == 1 and idle["workers"] == 0
    assert doc["connections"] >= 2 and doc["buckets"][-1] == "+Inf"
    # The admin "stats json" document, the same figures (its line, without the ".").
    admin = Peer(await trio.open_tcp_stream("127.0.0.1", port))
    await admin.send(b"stats json\r\n")
    reply = await admin.line_reply(b"\n.\n")
    from_admin = json.loads(reply[:-3])
    for d in (doc, from_admin):
        d.pop("uptime_seconds")
        for f in d["functions"].values():
            f.pop("oldest_queued_age_seconds")
    # Connections differ by the one asking (HTTP, then admin).
    assert from_admin.pop("connections") == doc.pop("connections")
    assert from_admin.pop("connections_total") == doc.pop("connections_total") + 1
    # So do the connection kinds and the Gear traffic (the admin query is Gear traffic).
    for key in ("connections_by_kind", "connections_total_by_front_end", "server"):
        assert key in from_admin and key in doc
        from_admin.pop(key)
        doc.pop(key)
    assert from_admin == doc
    for peer in (worker, client, admin):
        await peer.stream.aclose()
    srv.shutdown()


async def test_other_paths_and_methods(web: tuple[Server, int, int]) -> None:
    srv, _, mport = web
    for target in (b"/rev", b"/index.html", b"/stats", b"/stats.json/x", b"//", b"/web"):
        head, _ = await _http(mport, target)
        assert head.startswith(b"HTTP/1.1 404 "), target
    for target in (b"/", b"/stats.json", b"/metrics"):
        head, _ = await _http(mport, target, b"POST")
        assert head.startswith(b"HTTP/1.1 405 "), target
        assert _header(head, b"allow") == b"GET"
    # /metrics is still there, and no job was ever submitted here.
    head, body = await _http(mport, b"/metrics")
    assert head.startswith(b"HTTP/1.1 200 ") and b"gearman_uptime_seconds" in body
    assert b"rev" not in srv.manager.functions and not srv.manager.stats
    srv.shutdown()


async def test_http_port_keeps_function_paths(nursery: trio.Nursery) -> None:
    """On the ``-r http`` port ``/`` and ``/stats.json`` are not the monitor: there every
    path but ``/metrics`` is a function name (``stats.json`` is submitted as one)."""
    srv = Server(ServerConfig(listen=("127.0.0.1",), port=0, protocols=("http",),
                              http_port=0))
    await nursery.start(srv.serve)
    hport = srv.http_addresses[0][1]
    head, _ = await _http(hport, b"/")
    assert head.startswith(b"HTTP/1.1 404 ")
    stream = await trio.open_tcp_stream("127.0.0.1", hport)
    await stream.send_all(b"GET /stats.json HTTP/1.0\r\nX-Gearman-Background: true\r\n\r\n")
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") and b"X-Gearman-Job-Handle" in data
    assert srv.manager.functions[b"stats.json"].queued == 1
    await stream.aclose()
    srv.shutdown()


# ---------------------------------------------------------------- in a real browser


def _chromium() -> str:
    """The browser; missing, the test skips (on CI, fails)."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    msg = f"{CHROMIUM} not installed (Debian package chromium)"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


class _Table(html.parser.HTMLParser):
    """The rendered table: ``data-function`` -> {cell class: text}."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self._row: dict[str, str] | None = None
        self._cell: str | None = None
        self.polylines = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and "data-function" in a:
            self._row = self.rows.setdefault(a["data-function"] or "", {})
        elif tag == "td" and self._row is not None:
            self._cell = (a.get("class") or "").split(" ")[0]
            self._row[self._cell] = ""
        elif tag == "polyline":
            self.polylines += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._row is not None and self._cell is not None:
            self._row[self._cell] += data


def _reverse(job: Job) -> bytes:
    return job.data[::-1]


@pytest.fixture
def worker_for() -> Iterator[Callable[[RunningServer], Worker]]:
    """``worker_for(server)``: a blocking worker doing ``reverse`` in a thread."""
    started: list[tuple[Worker, threading.Thread]] = []

    def start(srv: RunningServer) -> Worker:
        worker = Worker(f"127.0.0.1:{srv.port}")
        worker.add_function("reverse", _reverse)
        thread = threading.Thread(target=worker.work_forever, daemon=True)
        thread.start()
        started.append((worker, thread))
        return worker

    yield start
    for worker, thread in started:
        worker.stop()
        thread.join(10)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_page_in_headless_chromium(start_server: Callable[..., RunningServer],
                                   worker_for: Callable[[RunningServer], Worker],
                                   tmp_path: Path) -> None:
    browser = _chromium()
    mport = free_port()
    srv = start_server("ours", "--metrics-port", str(mport))
    worker_for(srv)
    client = Client(f"127.0.0.1:{srv.port}")
    for i in range(7):
        assert client.do("reverse", b"job%d" % i) == (b"job%d" % i)[::-1]
    for i in range(3):
        client.do_background("nobody-does-this", b"%d" % i)
    profile = f"{tmp_path}/chromium-profile"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-extensions", "--disable-background-networking",
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom",
           f"http://127.0.0.1:{mport}/"]
    done = subprocess.run(cmd, capture_output=True, timeout=60, check=False,
                          env={**os.environ, "HOME": str(tmp_path)})
    dom = done.stdout.decode("utf-8", "replace")
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    table = _Table()
    table.feed(dom)
    rows = table.rows
    assert "reverse" in rows and "nobody-does-this" in rows, dom[-3000:]
    rev, queued = rows["reverse"], rows["nobody-does-this"]
    assert rev["function"] == "reverse"
    assert rev["completed"] == "7" and rev["workers"] == "1"
    assert rev["queued"] == "0" and rev["running"] == "0" and rev["failures"] == "0"
    assert re.fullmatch(r"[0-9.]+ (?:µs|ms|s)|0", rev["meanRun"]), rev
    assert queued["queued"] == "3" and queued["workers"] == "0" and queued["completed"] == "0"
    assert re.fullmatch(r"[0-9.]+ (?:µs|ms|s|min)", queued["oldest"]), queued
    # Several polls happened within the virtual time: rates are figures (no jobs since).
    assert rev["compRate"] == "0.00" and rev["subRate"] == "0.00", rev
    total = rows[""]
    assert total["completed"] == "7" and total["queued"] == "3"
    assert table.polylines + dom.count("<circle") >= 1  # the charts drew something
    assert 'id="version">?<' not in dom and "live, updated" in dom

"""``gearadmin --top``: a live view of one or several servers' per-function statistics.

Each refresh sends ``stats json`` to every server (one blocking admin connection each,
kept open) and turns two successive readings into rates (completed and submitted jobs
per second); the queue-wait and run-time percentiles are estimated from the histogram
buckets since the server started (linear inside a bucket, as Prometheus'
``histogram_quantile``). A server that does not know ``stats`` (the reference gearmand)
is shown from ``status``: queued, running and workers only.

On a terminal the view is a rich table redrawn every ``--interval`` seconds; keys: ``q``
quits, ``s`` cycles the sort column, ``r`` reverses the order. When stdout is not a
terminal one reading is printed as TAB-separated text and the command exits. rich is
imported only for the live view.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, NamedTuple

from ._admin_sync import Admin, AdminTimeout
from ._cli_options import ExitCode, TopOptions
from ._errors import ConnectionLostError
from ._servers import ServerAddress

#: The columns, in order: (key, title, numeric). ``--sort`` takes a key; numeric columns
#: sort largest first, text columns in alphabetical order.
COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("server", "Server", False),
    ("function", "Function", False),
    ("queued", "Queued", True),
    ("running", "Running", True),
    ("workers", "Workers", True),
    ("completed_rate", "Done/s", True),
    ("submitted_rate", "Subm/s", True),
    ("wait_p50", "Wait50", True),
    ("wait_p99", "Wait99", True),
    ("run_p50", "Run50", True),
    ("run_p99", "Run99", True),
    ("oldest", "Oldest", True),
    ("completed", "Done", True),
    ("failed", "Failed", True),
)
#: Left out of the live view, in this order, while the table is wider than the terminal
#: (the sort column stays).
OPTIONAL = ("completed", "wait_p50", "run_p50", "submitted_rate", "oldest", "run_p99",
            "wait_p99", "workers", "completed_rate", "running")
SORT_KEYS = tuple(key for key, _, _ in COLUMNS)
NUMERIC = {key for key, _, numeric in COLUMNS if numeric}
TITLES = {key: title for key, title, _ in COLUMNS}


def sort_key(text: str) -> str:
    """``--sort``'s value checked (a column key; ``-`` and case do not matter)."""
    key = text.strip().lower().replace("-", "_")
    aliases = {"done": "completed_rate", "done/s": "completed_rate",
               "subm": "submitted_rate", "subm/s": "submitted_rate", "oldest_age": "oldest",
               "name": "function", "failures": "failed"}
    key = aliases.get(key, key)
    if key not in SORT_KEYS:
        raise ValueError(f"unknown column {text!r} (one of: {', '.join(SORT_KEYS)})")
    return key


def quantile(q: float, counts: list[int], bounds: list[float]) -> float | None:
    """The ``q`` quantile of a histogram (per-bucket counts, upper ``bounds``, the last
    +Inf), interpolated inside its bucket; None when empty. In the +Inf bucket: the last
    finite bound."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    lower = 0.0
    for count, upper in zip(counts, bounds, strict=False):
        if count and seen + count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
        lower = upper
    return lower


class Reading(NamedTuple):
    """One server's answer at one time: per function, the fields of ``stats json`` (or
    of ``status``: ``queued``, ``running``, ``workers``)."""

    at: float
    functions: dict[str, dict[str, Any]]
    bounds: list[float]
    #: A cluster member's view of the jobs waiting in the cluster's shared table, per
    #: function (``stats json``: server.cluster.shared_queued); empty otherwise.
    shared: tuple[tuple[str, int], ...] = ()


def _bounds(raw: list[Any]) -> list[float]:
    return [float(b) for b in raw]  # "+Inf" -> inf


def _submitted(fields: dict[str, Any]) -> int | None:
    sub = fields.get("submitted")
    if not isinstance(sub, dict):
        return None
    return sum(int(v) for kinds in sub.values() for v in kinds.values())


def rows(reading: Reading, previous: Reading | None, server: str) -> list[dict[str, Any]]:
    """The table rows of one server: one per function, keyed as ``COLUMNS``; None where
    a figure is not known (a rate before the second reading, ``status`` only)."""
    out = []
    dt = reading.at - previous.at if previous is not None else 0.0
    for name, f in sorted(reading.functions.items()):
        row: dict[str, Any] = {
            "server": server, "function": name,
            "queued": f.get("queued"), "running": f.get("running"),
            "workers": f.get("workers"),
            "completed_rate": None, "submitted_rate": None,
            "wait_p50": None, "wait_p99": None, "run_p50": None, "run_p99": None,
            "oldest": f.get("oldest_queued_age_seconds"),
            "completed": f.get("completed"),
            "failed": None,
        }
        if "failed" in f:
            row["failed"] = int(f["failed"]) + int(f.get("exceptions", 0)) + int(
                f.get("timed_out", 0))
        for key, hist in (("wait", "queue_wait_seconds"), ("run", "run_seconds")):
            h = f.get(hist)
            if isinstance(h, dict) and reading.bounds:
                row[f"{key}_p50"] = quantile(0.5, h["counts"], reading.bounds)
                row[f"{key}_p99"] = quantile(0.99, h["counts"], reading.bounds)
        before = previous.functions.get(name) if previous is not None else None
        if before is not None and dt > 0:
            if f.get("completed") is not None and before.get("completed") is not None:
                row["completed_rate"] = max(0, f["completed"] - before["completed"]) / dt
            now_sub, then_sub = _submitted(f), _submitted(before)
            if now_sub is not None and then_sub is not None:
                row["submitted_rate"] = max(0, now_sub - then_sub) / dt
        elif previous is not None and dt > 0:  # new since the last reading
            if f.get("completed") is not None:
                row["completed_rate"] = f["completed"] / dt
            if (now_sub := _submitted(f)) is not None:
                row["submitted_rate"] = now_sub / dt
        out.append(row)
    for name, count in sorted(reading.shared):
        out.append({**dict.fromkeys(SORT_KEYS), "server": SHARED, "function": name,
                    "queued": count})
    return out


#: The "server" of the rows of jobs waiting in a cluster's shared table: every member
#: reports them, so they are shown once (``merge_shared``).
SHARED = "cluster (shared)"


def merge_shared(all_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with each shared-table function once (members of one cluster agree, up to a
    fallback poll; the largest count is kept)."""
    shared: dict[str, dict[str, Any]] = {}
    out = []
    for row in all_rows:
        if row["server"] != SHARED:
            out.append(row)
        elif row["function"] not in shared or row["queued"] > shared[row["function"]]["queued"]:
            shared[row["function"]] = row
    return out + list(shared.values())


def sorted_rows(all_rows: list[dict[str, Any]], key: str, reverse: bool = False) -> list[
        dict[str, Any]]:
    """Numeric columns largest first (unknown last), text columns A to Z; ties by
    server and function."""
    base = sorted(all_rows, key=lambda r: (r["server"], r["function"]))
    if key in NUMERIC:
        known = [r for r in base if r[key] is not None]
        unknown = [r for r in base if r[key] is None]
        known.sort(key=lambda r: r[key], reverse=not reverse)
        return known + unknown
    return sorted(base, key=lambda r: r[key], reverse=reverse)


def plain_cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in ("completed_rate", "submitted_rate"):
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def human_seconds(value: float) -> str:
    if value < 0.001:
        return f"{value * 1e6:.0f}µs"
    if value < 1:
        return f"{value * 1000:.1f}ms"
    if value < 120:
        return f"{value:.2f}s"
    if value < 7200:
        return f"{value / 60:.1f}m"
    return f"{value / 3600:.1f}h"


def human_cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in ("completed_rate", "submitted_rate"):
        return f"{value:.1f}"
    if key in ("wait_p50", "wait_p99", "run_p50", "run_p99", "oldest"):
        return human_seconds(float(value)) if value else "0"
    return str(value)


class Source:
    """One server: a kept admin connection, re-opened after an error."""

    def __init__(self, server: ServerAddress, timeout: float | None,
                 tls: Any = None) -> None:
        self.server = server
        self.name = str(server)
        self.admin = Admin(server, timeout=timeout if timeout is not None else 10.0,
                           ssl=tls or False)
        self.previous: Reading | None = None
        self.error: str | None = None
        self.stats_known = True

    def read(self) -> Reading:
        """A reading (``OSError``/``ConnectionLostError`` when the server cannot be read)."""
        self.admin.connect()
        try:
            if self.stats_known:
                reply = self.admin.raw("stats json", is_list=True)
                if reply.kind != "err":
                    import json

                    doc = json.loads(b"".join(reply.lines))
                    cluster = (doc.get("server") or {}).get("cluster") or {}
                    shared = cluster.get("shared_queued") if isinstance(cluster, dict) \
                        else None
                    return Reading(time.monotonic(), dict(doc.get("functions", {})),
                                   _bounds(doc.get("buckets", [])),
                                   tuple((str(k), int(v)) for k, v in (shared or {}).items()))
                self.stats_known = False  # not ours: fall back to status
            reply = self.admin.raw("status", is_list=True)
            functions: dict[str, dict[str, Any]] = {}
            for line in reply.lines:
                parts = line.decode("utf-8", "backslashreplace").split("\t")
                if len(parts) >= 4:
                    total, running, workers = (int(p) for p in parts[1:4])
                    functions[parts[0]] = {"queued": max(0, total - running),
                                           "running": running, "workers": workers}
            return Reading(time.monotonic(), functions, [])
        except BaseException:
            self.admin.close()
            raise

    def poll(self) -> list[dict[str, Any]]:
        """This server's rows now (none, and ``error`` set, when it cannot be read)."""
        try:
            reading = self.read()
        except (OSError, ConnectionLostError, ValueError) as exc:
            self.error = _why(self, exc)
            self.previous = None
            return []
        self.error = None
        out = rows(reading, self.previous, self.name)
        self.previous = reading
        return out

    def close(self) -> None:
        self.admin.close()


def _why(source: Source, exc: BaseException) -> str:
    if isinstance(exc, AdminTimeout | ConnectionLostError):
        return f"{source.name}: {exc}"
    if isinstance(exc, OSError):
        from ._servers import why

        return f"cannot connect to {source.name}: {why(exc)}"
    return f"{source.name}: unreadable stats reply: {exc}"


def snapshot(opts: TopOptions) -> int:
    """Not a terminal: one reading of every server, TAB-separated, header first."""
    sources = [Source(s, opts.timeout, opts.tls) for s in opts.servers]
    all_rows: list[dict[str, Any]] = []
    status = ExitCode.OK
    for source in sources:
        all_rows += source.poll()
        source.close()
        if source.error:
            sys.stderr.write(f"gearadmin: {source.error}\n")
            status = ExitCode.NO_SERVER
    out = ["\t".join(SORT_KEYS)]
    for row in sorted_rows(merge_shared(all_rows), opts.sort):
        out.append("\t".join(plain_cell(k, row[k]) for k in SORT_KEYS))
    sys.stdout.write("\n".join(out) + "\n")
    sys.stdout.flush()
    return int(status)


class Keys:
    """Single key presses from the terminal on stdin (cbreak mode while open; Ctrl-C
    still sends SIGINT). Without a terminal on stdin, no keys: wait only."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else -1
        self.saved: Any = None

    def __enter__(self) -> Keys:
        if self.fd >= 0:
            import termios
            import tty

            self.saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)

    def wait(self, timeout: float) -> str:
        """A key pressed within ``timeout`` seconds, or ``""``."""
        if timeout <= 0:
            return ""
        if self.fd < 0:
            time.sleep(timeout)
            return ""
        import select

        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return ""
        data = os.read(self.fd, 32)
        return data.decode("utf-8", "replace")[:1] if data else "q"


class Live:
    """The terminal view: poll, draw, wait for a key or the next refresh."""

    def __init__(self, opts: TopOptions) -> None:
        self.opts = opts
        self.sort = opts.sort
        self.reverse = False
        self.sources = [Source(s, opts.timeout, opts.tls) for s in opts.servers]

    def columns(self, cells: list[dict[str, str]], width: int) -> dict[str, int]:
        """The columns to show in ``width`` terminal columns: key -> content width."""
        keys = [k for k in SORT_KEYS if len(self.sources) > 1 or k != "server"]
        wide = {k: max([len(TITLES[k] + (" ▼" if k == self.sort else "")),
                        *(len(c[k]) for c in cells)]) for k in keys}
        for key in OPTIONAL:  # names may be cut to 12 characters
            need = sum(min(wide[k], 12) if k in ("server", "function") else wide[k]
                       for k in keys)
            if need + 2 * len(keys) <= width:
                break
            if key != self.sort:
                keys.remove(key)
        return {k: wide[k] for k in keys}

    def render(self, all_rows: list[dict[str, Any]], width: int) -> Any:
        from rich import box
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        order = " (reversed)" if self.reverse else ""
        title = (f"{time.strftime('%H:%M:%S')}  every {self.opts.interval:g}s  "
                 f"sort: {self.sort}{order}  [q]uit [s]ort [r]everse")
        cells = [{k: human_cell(k, row[k]) for k in SORT_KEYS}
                 for row in sorted_rows(merge_shared(all_rows), self.sort, self.reverse)]
        keys = self.columns(cells, width)
        table = Table(title=Text(title), title_justify="left", box=box.SIMPLE_HEAD,
                      show_edge=False, pad_edge=False, padding=(0, 0, 0, 1))
        for key, wide in keys.items():
            mark = " ▼" if key == self.sort else ""
            flexible = key in ("server", "function")
            table.add_column(TITLES[key] + mark, justify="left" if flexible else "right",
                             no_wrap=True, overflow="ellipsis",
                             min_width=None if flexible else wide)
        for row in cells:
            table.add_row(*(Text(row[k]) for k in keys))
        errors = [Text(s.error, style="red") for s in self.sources if s.error]
        if not all_rows and not errors:
            errors.append(Text("(no functions yet)"))
        return Group(table, *errors)

    def run(self) -> int:
        from rich.console import Console
        from rich.live import Live as RichLive

        console = Console(markup=False, highlight=False)
        with Keys() as keys, RichLive(console=console, screen=True, auto_refresh=False,
                                      transient=True) as live:
            try:
                while True:
                    started = time.monotonic()
                    all_rows: list[dict[str, Any]] = []
                    for source in self.sources:
                        all_rows += source.poll()
                    live.update(self.render(all_rows, console.width), refresh=True)
                    deadline = started + self.opts.interval
                    while (left := deadline - time.monotonic()) > 0:
                        key = keys.wait(left)
                        if key in ("q", "Q"):
                            return int(ExitCode.OK)
                        if key in ("s", "S", "r", "R"):
                            if key in ("s", "S"):
                                shown = [k for k in SORT_KEYS
                                         if len(self.sources) > 1 or k != "server"]
                                at = shown.index(self.sort) if self.sort in shown else -1
                                self.sort = shown[(at + 1) % len(shown)]
                            else:
                                self.reverse = not self.reverse
                            live.update(self.render(all_rows, console.width), refresh=True)
            finally:
                for source in self.sources:
                    source.close()


def run_top(opts: TopOptions, *, live: bool | None = None) -> int:
    """``--top``: the live view on a terminal, else one plain snapshot."""
    if live is None:
        live = sys.stdout.isatty()
    if not live:
        return snapshot(opts)
    return Live(opts).run()

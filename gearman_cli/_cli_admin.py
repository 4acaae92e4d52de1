"""Running ``gearadmin``: send each command, read its reply to its terminator, print it.

Rule: printing follows the reference byte for byte where a script reads it: ``OK`` ->
``OK``; ``OK x`` -> ``x``; a list verbatim with its ``.`` line; ``ERR rest`` ->
``Error: rest\\r\\n`` on stderr. A table only for a person (stdout is a terminal; rich is
imported only then), and ``--json`` for programs.
"""

from __future__ import annotations

import sys
from typing import Any

from ._admin_core import AdminReply
from ._admin_sync import Admin, AdminTimeout
from ._cli_options import AdminCommand, AdminOptions, ExitCode
from ._errors import ConnectionLostError

#: Title and columns of the list replies that have a table form (tab-separated fields).
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "status": ("Functions", ("Function", "Total", "Running", "Workers")),
    "prioritystatus": ("Queued jobs by priority",
                       ("Function", "High", "Normal", "Low", "Workers")),
    "workers": ("Workers (every connection)", ("FD", "Address", "Client ID", "Functions")),
    "show jobs": ("Jobs", ("Handle", "Retries", "Ignore", "Queued")),
    "show unique jobs": ("Unique keys of jobs", ("Unique key",)),
    "show dead": ("Dead letters", ("Function", "Handle", "Unique", "Attempts", "First failed",
                                   "Last failed", "Error")),
}

#: Shown for a job without a unique key (the reply has a blank line for it).
NO_UNIQUE = "(job without a unique key)"


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _fields(line: str, command: str) -> list[str]:
    if command == "workers":
        fd, _, rest = line.partition(" ")
        address, _, rest = rest.partition(" ")
        client_id, _, functions = rest.partition(" :")
        return [fd, address, client_id, " ".join(functions.split())]
    if command == "show unique jobs":
        return [line or NO_UNIQUE]
    return line.split("\t")


def _number(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def as_json(command: AdminCommand, reply: AdminReply) -> dict[str, Any]:
    """One reply as a JSON-ready object; numbers are JSON numbers."""
    out: dict[str, Any] = {"command": command.line, "ok": reply.ok}
    if reply.kind == "err":
        out["error"] = _text(reply.lines[0][4:] if reply.lines[0][:4] == b"ERR " else b"")
        return out
    if reply.kind == "ok":
        value = _text(reply.value)
        out["reply"] = _number(value) if command.line == "getpid" else value
        return out
    lines = [_text(line) for line in reply.lines]
    if command.line == "show unique jobs":
        out["reply"] = [line or None for line in lines]  # null: a job without a key
        return out
    table = TABLES.get(command.line)
    if table is None:
        out["reply"] = lines
        return out
    keys = [c.lower().replace(" ", "_") for c in table[1]]
    rows = []
    for line in lines:
        fields = _fields(line, command.line)
        if command.line == "workers":
            values: list[Any] = [_number(fields[0]), *fields[1:3],
                                 fields[3].split() if len(fields) > 3 else []]
        else:
            values = fields[:1] + [_number(f) for f in fields[1:]]
        rows.append(dict(zip(keys, values, strict=False)))
    out["reply"] = rows
    return out


def print_table(command: AdminCommand, reply: AdminReply) -> None:
    """A list reply as a rich table on stdout (markup off: names are never markup)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    title, columns = TABLES[command.line]
    rows = [_fields(_text(line), command.line)[: len(columns)] for line in reply.lines]
    table = Table(title=title)
    for i, name in enumerate(columns):
        numeric = bool(rows) and all(
            i < len(row) and row[i].lstrip("-").isdigit() for row in rows)
        table.add_column(name, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(Text(f) for f in row))
    Console(markup=False, highlight=False).print(table)


class AdminRun:
    def __init__(self, opts: AdminOptions) -> None:
        self.opts = opts
        self.out = sys.stdout.buffer
        self.err = sys.stderr.buffer
        table = opts.table
        self.table = sys.stdout.isatty() if table is None else table
        self.status = ExitCode.OK
        self.results: list[dict[str, Any]] = []

    def show(self, command: AdminCommand, reply: AdminReply) -> None:
        if reply.kind == "err":
            self.status = ExitCode.JOB_FAILED
        if self.opts.json:
            self.results.append(as_json(command, reply))
            return
        if reply.kind == "err":
            line = reply.lines[0]
            rest = line[4:] if line.startswith(b"ERR ") else line
            self.err.write(b"Error: " + rest + b"\r\n")
            self.err.flush()
        elif reply.kind == "ok":
            self.out.write((reply.value or b"OK") + b"\n")
        elif self.table and command.line in TABLES:
            self.out.flush()
            print_table(command, reply)
        else:
            self.out.write(b"".join(line + b"\n" for line in reply.lines) + b".\n")

    def main(self) -> int:
        opts = self.opts
        admin = Admin(opts.server, timeout=opts.timeout, ssl=opts.tls or False)
        try:
            with admin:
                for command in opts.commands:
                    if command.line.split(" ")[0] == "watch":
                        self.watch(admin, command)
                        continue
                    shutdown = command.line.startswith("shutdown")
                    try:
                        reply = admin.raw(command.line)
                    except AdminTimeout:
                        raise
                    except ConnectionLostError:
                        if shutdown:  # the server may close instead of answering OK
                            reply = AdminReply("ok", (b"OK",))
                        else:
                            raise
                    self.show(command, reply)
        except AdminTimeout as exc:
            return self.fail(str(exc), ExitCode.TIMEOUT)
        except ConnectionLostError as exc:
            return self.fail(f"{opts.server}: {exc}")
        except OSError as exc:
            from ._servers import why

            return self.fail(f"cannot connect to {opts.server}: {why(exc)}")
        if self.opts.json:
            self.out.write(_dumps(self.results) + b"\n")
        self.out.flush()
        return int(self.status)

    def watch(self, admin: Admin, command: AdminCommand) -> None:
        """``--watch``: print each event line as it comes, until the connection ends
        (or Ctrl-C)."""
        from ._errors import AdminError

        try:
            for line in admin.watch_lines(command.line):
                self.out.write(line + b"\n")
                self.out.flush()
        except AdminError as exc:
            self.show(command, AdminReply("err", (b"ERR " + exc.reply.encode(),)))

    def fail(self, message: str, code: ExitCode = ExitCode.NO_SERVER) -> int:
        # Replies already printed stay; with --json nothing goes to stdout on an error.
        self.out.flush()
        self.err.write(f"gearadmin: {message}\n".encode())
        self.err.flush()
        return int(code)


def _dumps(value: object) -> bytes:
    import json

    return json.dumps(value, indent=2).encode()


def run_admin(opts: AdminOptions) -> int:
    return AdminRun(opts).main()

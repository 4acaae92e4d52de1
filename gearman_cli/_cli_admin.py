"""Running ``gearadmin``: send each command, read its reply to its terminator, print it.

Rule: printing follows the reference byte for byte where a script reads it (spec §7):
``OK`` -> ``OK``; ``OK x`` -> ``x``; a list verbatim with its ``.`` line; ``ERR rest`` ->
``Error: rest\\r\\n`` on stderr. A rich table only for a person (stdout is a terminal), and
``--json`` for programs.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import trio

from ._cli_options import AdminCommand, AdminOptions, ExitCode
from ._errors import ConnectionLostError
from .admin import AdminReply, AsyncAdmin

#: Columns of the list replies that have a table form (tab-separated fields).
TABLES: dict[str, tuple[str, ...]] = {
    "status": ("Function", "Total", "Running", "Workers"),
    "prioritystatus": ("Function", "High", "Normal", "Low", "Workers"),
    "workers": ("FD", "Address", "Client ID", "Functions"),
    "show jobs": ("Handle", "Retries", "Ignore", "Queued"),
}


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _fields(line: str, command: str) -> list[str]:
    if command == "workers":
        fd, _, rest = line.partition(" ")
        address, _, rest = rest.partition(" ")
        client_id, _, functions = rest.partition(" :")
        return [fd, address, client_id, " ".join(functions.split())]
    return line.split("\t")


def _number(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def as_json(command: AdminCommand, reply: AdminReply) -> dict[str, Any]:
    """One reply as a JSON-ready object."""
    out: dict[str, Any] = {"command": command.line, "ok": reply.ok}
    if reply.kind == "err":
        out["error"] = _text(reply.lines[0][4:] if reply.lines[0][:4] == b"ERR " else b"")
        return out
    if reply.kind == "ok":
        value = _text(reply.value)
        out["reply"] = _number(value) if command.line == "getpid" else value
        return out
    lines = [_text(line) for line in reply.lines]
    columns = TABLES.get(command.line)
    if columns is None:
        out["reply"] = lines
        return out
    keys = [c.lower().replace(" ", "_") for c in columns]
    rows = []
    for line in lines:
        fields = _fields(line, command.line)
        values: list[Any] = fields[:1] + [
            f.split() if command.line == "workers" and i == 3
            else f if command.line == "workers" else _number(f)
            for i, f in enumerate(fields[1:], 1)
        ]
        rows.append(dict(zip(keys, values, strict=False)))
    out["reply"] = rows
    return out


def print_table(command: AdminCommand, reply: AdminReply) -> None:
    """A list reply as a rich table on stdout (markup off: names are never markup)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    columns = TABLES[command.line]
    table = Table(*columns, title=command.line)
    for line in reply.lines:
        fields = _fields(_text(line), command.line)
        table.add_row(*(Text(f) for f in fields[: len(columns)]))
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

    async def main(self) -> int:
        opts = self.opts
        try:
            async with AsyncAdmin(opts.server) as admin:
                for command in opts.commands:
                    shutdown = command.line.startswith("shutdown")
                    try:
                        reply = await admin.raw(command.line)
                    except ConnectionLostError:
                        if shutdown:  # the server may close instead of answering OK
                            reply = AdminReply("ok", (b"OK",))
                        else:
                            raise
                    self.show(command, reply)
        except OSError as exc:
            return self.fail(f"cannot connect to {opts.server}: {exc.strerror or exc}")
        except ConnectionLostError as exc:
            return self.fail(f"{opts.server}: {exc}")
        finally:
            if self.opts.json:
                self.out.write(json.dumps(self.results, indent=2).encode() + b"\n")
            self.out.flush()
        return int(self.status)

    def fail(self, message: str) -> int:
        self.out.flush()
        self.err.write(f"gearadmin: {message}\n".encode())
        self.err.flush()
        return int(ExitCode.NO_SERVER)


def run_admin(opts: AdminOptions) -> int:
    return trio.run(AdminRun(opts).main)

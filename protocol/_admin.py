"""Admin text protocol: parse command lines, format replies (spec §3). Sans-IO."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


class AdminCommand(NamedTuple):
    """One admin text line: ``words`` split on runs of spaces, ``name`` lower-cased.

    ``line`` keeps the raw bytes (without the line end). Words stay bytes: they
    may name functions and handles, which are bytes on the wire.
    """

    line: bytes
    words: tuple[bytes, ...]

    @property
    def name(self) -> str:
        """The command word, lower-cased (commands are case-insensitive)."""
        return self.words[0].decode("latin-1").lower() if self.words else ""

    @property
    def arguments(self) -> tuple[bytes, ...]:
        return self.words[1:]


def parse_admin_line(line: bytes) -> AdminCommand:
    """Parse one line (without ``\\n``); one trailing ``\\r`` is stripped.

    Only spaces separate words (tabs do not, as in the reference).
    """
    if line.endswith(b"\r"):
        line = line[:-1]
    return AdminCommand(line, tuple(w for w in line.split(b" ") if w))


def ok(value: bytes | str | None = None, *, crlf: bool = True) -> bytes:
    """``OK\\r\\n`` or ``OK <value>`` (``getpid``/``version``/``verbose`` end in ``\\n``)."""
    end = b"\r\n" if crlf else b"\n"
    if value is None:
        return b"OK" + end
    if isinstance(value, str):
        value = value.encode()
    return b"OK " + value + end


def err(code: bytes | str, text: bytes | str | None = None) -> bytes:
    """``ERR <code>[ <text>]\\r\\n``; spaces in ``text`` become ``+`` as the reference does."""
    if isinstance(code, str):
        code = code.encode()
    if text is None:
        return b"ERR " + code + b"\r\n"
    if isinstance(text, str):
        text = text.encode()
    return b"ERR " + code + b" " + text.replace(b" ", b"+") + b"\r\n"


def err_raw(text: bytes | str) -> bytes:
    """``ERR <text>\\r\\n`` verbatim (replies such as ``ERR function not found``)."""
    if isinstance(text, str):
        text = text.encode()
    return b"ERR " + text + b"\r\n"


#: The line that ends a list reply.
END = b".\n"


def row(cells: Iterable[bytes | str | int]) -> bytes:
    """One row of a list reply: TAB-separated cells and ``\\n``."""
    return b"\t".join(_b(cell) for cell in cells) + b"\n"


def table(rows: Iterable[Iterable[bytes | str | int]]) -> bytes:
    """A list reply: TAB-separated rows, each ending ``\\n``, then ``.\\n``."""
    out = bytearray()
    for cells in rows:
        out += row(cells)
    out += END
    return bytes(out)


def lines(items: Iterable[bytes]) -> bytes:
    """A list reply of whole lines, then ``.\\n``."""
    out = bytearray()
    for item in items:
        out += item
        out += b"\n"
    out += b".\n"
    return bytes(out)


def _b(cell: bytes | str | int) -> bytes:
    if isinstance(cell, bytes):
        return cell
    return str(cell).encode()


def unknown_command(word: bytes) -> bytes:
    """The reference's reply to an unknown command (no space before the word)."""
    return b"ERR UNKNOWN_COMMAND Unknown+server+command" + word + b"\r\n"


def invalid_arguments(word: bytes) -> bytes:
    """The reference's reply to a command with the wrong number of arguments."""
    return (
        b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+"
        + word
        + b"\r\n"
    )

"""Admin reply formatting gives the reference's exact bytes (reference.md §3)."""

from __future__ import annotations

import pytest

from protocol import AdminCommand, admin, parse_admin_line


def test_ok() -> None:
    assert admin.ok() == b"OK\r\n"
    # getpid / verbose / version answer "OK <value>\n" (no CR).
    assert admin.ok(b"13265", crlf=False) == b"OK 13265\n"
    assert admin.ok("1.1.20+ds", crlf=False) == b"OK 1.1.20+ds\n"
    assert admin.ok("INFO", crlf=False) == b"OK INFO\n"


@pytest.mark.parametrize("code", ["UNKNOWN_SHOW_ARGUMENTS", "UNKNOWN_JOB", "UNKNOWN_ERROR"])
def test_err_code_only(code: str) -> None:
    assert admin.err(code) == b"ERR " + code.encode() + b"\r\n"
    assert admin.err(code.encode()) == b"ERR " + code.encode() + b"\r\n"


def test_err_text_spaces_become_plus() -> None:
    assert admin.err("UNKNOWN_COMMAND", "Unknown server command") == (
        b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n"
    )
    assert admin.err(b"INVALID_ARGUMENTS", b"An incomplete set") == (
        b"ERR INVALID_ARGUMENTS An+incomplete+set\r\n"
    )


@pytest.mark.parametrize(
    "text",
    [
        "function not found",
        "there are still connected workers or executing clients",
        "there are still queued jobs",  # ours (decisions.md, Admin)
    ],
)
def test_err_raw_keeps_spaces(text: str) -> None:
    assert admin.err_raw(text) == b"ERR " + text.encode() + b"\r\n"
    assert admin.err_raw(text.encode()) == b"ERR " + text.encode() + b"\r\n"


def test_unknown_command() -> None:
    assert admin.unknown_command(b"shutdown") == (
        b"ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n"
    )
    # An empty line names no word.
    assert admin.unknown_command(b"") == b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n"


@pytest.mark.parametrize("word", [b"create", b"drop", b"maxqueue"])
def test_invalid_arguments(word: bytes) -> None:
    assert admin.invalid_arguments(word) == (
        b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+"
        + word
        + b"\r\n"
    )


def test_table_status_example() -> None:
    assert admin.table([(b"rev", 1, 0, 1)]) == b"rev\t1\t0\t1\n.\n"
    assert admin.table([("rev", "1", 0, b"1")]) == b"rev\t1\t0\t1\n.\n"


def test_table_prioritystatus_and_show_jobs_examples() -> None:
    assert admin.table([(b"prio", 2, 2, 2, 0)]) == b"prio\t2\t2\t2\t0\n.\n"
    assert admin.table([(b"H:vm:16", 2, 1, 0)]) == b"H:vm:16\t2\t1\t0\n.\n"


def test_empty_table() -> None:
    assert admin.table([]) == b".\n"
    assert admin.lines([]) == b".\n"


def test_table_rows_in_order() -> None:
    rows = [(b"a", 0, 0, 0), (b"b", 10, 2, 3)]
    assert admin.table(iter(rows)) == b"a\t0\t0\t0\nb\t10\t2\t3\n.\n"


def test_lines_workers_example() -> None:
    assert admin.lines([b"38 127.0.0.1 worker-1 : other rev", b"39 127.0.0.1 - :"]) == (
        b"38 127.0.0.1 worker-1 : other rev\n39 127.0.0.1 - :\n.\n"
    )


def test_lines_show_unique_jobs_keeps_empty_uniques() -> None:
    assert admin.lines([b"", b"-", b"u1"]) == b"\n-\nu1\n.\n"


def test_parse_admin_line() -> None:
    assert parse_admin_line(b"cancel job H:vm:1\r") == AdminCommand(
        b"cancel job H:vm:1", (b"cancel", b"job", b"H:vm:1")
    )
    cmd = parse_admin_line(b"MaxQueue  fn 1 2 3")
    assert cmd.name == "maxqueue"
    assert cmd.arguments == (b"fn", b"1", b"2", b"3")
    assert parse_admin_line(b"a\tb c").words == (b"a\tb", b"c")
    assert parse_admin_line(b"").name == ""

"""protocol/_pidfile.py: a pid file is replaced whole, or written in place where a new file
cannot be made beside it (``gearmand -P``, ``gearman -i``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from protocol import _pidfile
from protocol._pidfile import write_pid


def test_replaced_whole_and_nothing_left_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "g.pid"
    path.write_text("999\n")
    inode = path.stat().st_ino
    write_pid(str(path), 1234)
    assert path.read_text() == "1234\n"
    assert path.stat().st_ino != inode  # a new file, renamed over the old one
    assert os.listdir(tmp_path) == ["g.pid"]


def test_a_temporary_file_left_by_a_process_of_the_same_pid_is_replaced(
        tmp_path: Path) -> None:
    stale = tmp_path / ".g.pid.1234.tmp"
    stale.write_text("garbage")
    write_pid(str(tmp_path / "g.pid"), 1234)
    assert (tmp_path / "g.pid").read_text() == "1234\n" and not stale.exists()


def test_a_symlink_is_written_through(tmp_path: Path) -> None:
    target = tmp_path / "real.pid"
    target.write_text("")
    link = tmp_path / "g.pid"
    link.symlink_to(target)
    write_pid(str(link), 1234)
    assert link.is_symlink() and target.read_text() == "1234\n"


def test_in_place_where_no_file_can_be_made_beside_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pid file made for the service in a directory of root's (tests run as root, who
    may create files anywhere: the refusal is simulated)."""
    path = tmp_path / "g.pid"
    path.write_text("")
    real_open = os.open

    def refusing(name: str, flags: int, mode: int = 0o777) -> int:
        if name.endswith(".tmp"):
            raise PermissionError(13, "Permission denied", name)
        return real_open(name, flags, mode)

    monkeypatch.setattr(_pidfile.os, "open", refusing)
    write_pid(str(path), 1234)
    assert path.read_text() == "1234\n" and os.listdir(tmp_path) == ["g.pid"]


def test_an_unwritable_place_raises(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        write_pid(str(tmp_path / "missing" / "g.pid"), 1234)

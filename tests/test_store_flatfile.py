"""The flat-file journal: torn tails, corruption in the middle, compaction, fsync policy."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from server.store import StoredJob, StoreError, open_store
from server.store.flatfile import FRAME, MAGIC, FlatfileStore


def job(n: int) -> StoredJob:
    return StoredJob(key=f"k{n}", function=b"f", unique=b"", priority=1,
                     data=f"data {n}".encode() * 3)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "queue.journal"


def record_offsets(path: Path) -> list[int]:
    raw = path.read_bytes()
    pos, offsets = len(MAGIC), []
    while pos < len(raw):
        offsets.append(pos)
        length, _ = FRAME.unpack_from(raw, pos)
        pos += FRAME.size + length
    return offsets


def test_torn_final_record_is_skipped_with_a_warning(
        path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = FlatfileStore(str(path))
    for n in range(3):
        store.commit([job(n)], [])
    store.close()
    whole = path.read_bytes()
    last = record_offsets(path)[-1]
    path.write_bytes(whole + whole[last:last + 11])  # a crash half-way through a 4th write
    with caplog.at_level(logging.WARNING, logger="server.store.flatfile"):
        store = FlatfileStore(str(path))
    assert store.replay() == [job(0), job(1), job(2)]
    assert "torn final record" in caplog.text
    store.commit([job(3)], [])  # appended after the cut, not after the garbage
    store.close()
    assert FlatfileStore(str(path)).replay() == [job(0), job(1), job(2), job(3)]


def test_final_record_with_bad_crc_is_torn(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = FlatfileStore(str(path))
    store.commit([job(0), job(1)], [])
    store.close()
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING):
        assert FlatfileStore(str(path)).replay() == [job(0)]
    assert "torn final record" in caplog.text


def test_corruption_in_the_middle_keeps_what_was_read_and_saves_the_file(
        path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = FlatfileStore(str(path))
    for n in range(4):
        store.commit([job(n)], [])
    store.close()
    raw = bytearray(path.read_bytes())
    raw[record_offsets(path)[2] + FRAME.size + 3] ^= 0x55  # inside the 3rd record
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING):
        store = FlatfileStore(str(path))
    assert store.replay() == [job(0), job(1)]
    assert "corrupt record" in caplog.text and "NOT replayed" in caplog.text
    saved = list(path.parent.glob("queue.journal.corrupt-*"))
    assert len(saved) == 1 and saved[0].read_bytes() == bytes(raw)
    store.commit([job(9)], [])
    store.close()
    assert FlatfileStore(str(path)).replay() == [job(0), job(1), job(9)]


def test_compaction_keeps_live_jobs_in_order(path: Path) -> None:
    store = FlatfileStore(str(path), compact_min_bytes=2000, compact_ratio=0.25)
    jobs = [job(n) for n in range(200)]
    for start in range(0, 200, 20):
        store.commit(jobs[start:start + 20], [])
    size_before = path.stat().st_size
    live = jobs[5::17]
    store.commit([], [j.key for j in jobs if j not in live])
    assert store.compactions >= 1
    assert path.stat().st_size < size_before / 4
    assert not os.path.exists(str(path) + ".compact")
    assert store.replay() == live
    store.commit([job(500)], [live[0].key])
    store.close()
    assert FlatfileStore(str(path)).replay() == [*live[1:], job(500)]


def test_no_compaction_while_mostly_live(path: Path) -> None:
    store = FlatfileStore(str(path), compact_min_bytes=2000)
    store.commit([job(n) for n in range(100)], [])
    store.commit([], ["k1", "k2"])
    assert store.compactions == 0


@pytest.mark.parametrize(("policy", "expected"), [("always", 5), ("batch", 1), ("never", 0)])
def test_fsync_policy(path: Path, monkeypatch: pytest.MonkeyPatch,
                      policy: str, expected: int) -> None:
    store = open_store("flatfile", {"flatfile-file": str(path), "flatfile-fsync": policy})
    assert store is not None
    calls: list[int] = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append(fd))
    store.commit([job(n) for n in range(4)], ["k0"])
    assert len(calls) == expected
    store.close()


def test_bad_fsync_policy_is_one_clear_error(path: Path) -> None:
    with pytest.raises(StoreError, match=r"flatfile-fsync.*always, batch, never"):
        open_store("flatfile", {"flatfile-file": str(path), "flatfile-fsync": "sometimes"})


def test_a_file_that_is_not_a_journal_is_refused_untouched(path: Path) -> None:
    path.write_bytes(b"hello, I am someone's data\n")
    with pytest.raises(StoreError, match="not a gearman journal"):
        FlatfileStore(str(path))
    assert path.read_bytes() == b"hello, I am someone's data\n"


def test_one_journal_one_server(path: Path) -> None:
    first = FlatfileStore(str(path))
    with pytest.raises(StoreError, match="in use"):
        FlatfileStore(str(path))
    first.close()
    FlatfileStore(str(path)).close()

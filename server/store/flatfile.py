"""``-q flatfile``: an append-only journal with length + CRC32 framing, compacted when
mostly dead.

File: ``GEARJNL\\x01`` then records ``>II`` (payload length, CRC32 of payload) + payload;
payload ``A`` + ``encode_job(job)`` adds a job, ``D`` + utf-8 key removes one. A commit is
one write plus (policy ``batch``) one fdatasync. On open a torn final record (a crash
mid-write) is cut off with a warning; a bad record in the middle stops the scan there:
the file is saved aside as ``<file>.corrupt-<time>`` and rewritten with what was read.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Mapping, Sequence

from server.store.base import StoredJob, StoreError, decode_job, encode_job, peek_key

log = logging.getLogger(__name__)

MAGIC = b"GEARJNL\x01"
FRAME = struct.Struct(">II")
FSYNC_POLICIES = ("always", "batch", "never")
#: A record longer than this is taken for garbage (the protocol caps packets far below).
MAX_RECORD = 1 << 31


def frame(payload: bytes) -> bytes:
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _lock(fd: int, path: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"journal {path} is in use by another process") from None


class FlatfileStore:
    """Journal file + an in-memory index (key -> record offset and length), in add order."""

    def __init__(self, path: str, fsync: str = "batch", *,
                 compact_min_bytes: int = 1 << 20, compact_ratio: float = 0.25) -> None:
        if fsync not in FSYNC_POLICIES:
            raise StoreError(f"--flatfile-fsync: {fsync!r} is not one of "
                             + ", ".join(FSYNC_POLICIES))
        self.path = path
        self.fsync = fsync
        self.compact_min_bytes = compact_min_bytes
        self.compact_ratio = compact_ratio
        #: How many times the journal was rewritten (tests and stats).
        self.compactions = 0
        self._guard = threading.Lock()
        self._live: dict[str, tuple[int, int]] = {}
        self._live_bytes = 0
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open journal {path}: {exc.strerror}") from exc
        _lock(self._fd, path)
        try:
            self._load()
        except OSError as exc:
            os.close(self._fd)
            raise StoreError(f"cannot read journal {path}: {exc}") from exc
        except StoreError:
            os.close(self._fd)
            raise

    # --- open ---

    def _load(self) -> None:
        size = os.fstat(self._fd).st_size
        head = os.pread(self._fd, len(MAGIC), 0)
        if size < len(MAGIC) and MAGIC.startswith(head):  # new, or torn while creating
            os.ftruncate(self._fd, 0)
            _pwrite_all(self._fd, MAGIC, 0)
            os.fsync(self._fd)
            _fsync_dir(self.path)
            self._end = len(MAGIC)
            return
        if head != MAGIC:
            raise StoreError(f"{self.path} is not a gearman journal (bad magic); "
                             "use another --flatfile-file")
        end, problem, corrupt = self._scan(size)
        self._end = end
        if problem is None:
            return
        if not corrupt:
            log.warning("journal %s: torn final record at offset %d skipped (%s); "
                        "%d stored jobs kept", self.path, end, problem, len(self._live))
            os.ftruncate(self._fd, end)
            os.fsync(self._fd)
            return
        saved = f"{self.path}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.copyfile(self.path, saved)
        log.error("journal %s: corrupt record at offset %d (%s); the %d jobs before it are "
                  "kept, anything after it is NOT replayed; the damaged file is saved as %s",
                  self.path, end, problem, len(self._live), saved)
        self._compact()

    def _scan(self, size: int) -> tuple[int, str | None, bool]:
        """Index every good record. Returns (end of the last good record, problem, whether
        the problem is corruption in the middle rather than a torn tail)."""
        pos = len(MAGIC)
        with open(self.path, "rb", buffering=1 << 20) as f:
            f.seek(pos)
            while pos < size:
                head = f.read(FRAME.size)
                if len(head) < FRAME.size:
                    return pos, "incomplete record header", False
                length, crc = FRAME.unpack(head)
                rec_end = pos + FRAME.size + length
                if rec_end > size or length > MAX_RECORD:
                    return pos, f"record of {length} bytes runs past the end", False
                payload = f.read(length)
                if zlib.crc32(payload) != crc:
                    return pos, "CRC mismatch", rec_end < size
                try:
                    kind, body = payload[:1], memoryview(payload)[1:]
                    if kind == b"A":
                        self._index_add(peek_key(body), pos, rec_end - pos)
                    elif kind == b"D":
                        self._index_done(bytes(body).decode("utf-8"))
                    else:
                        raise ValueError(f"unknown record type {kind!r}")
                except (ValueError, UnicodeDecodeError) as exc:
                    return pos, f"bad record: {exc}", True
                pos = rec_end
        return pos, None, False

    def _index_add(self, key: str, offset: int, length: int) -> None:
        old = self._live.pop(key, None)  # a re-added key replaces, at the end
        if old is not None:
            self._live_bytes -= old[1]
        self._live[key] = (offset, length)
        self._live_bytes += length

    def _index_done(self, key: str) -> None:
        old = self._live.pop(key, None)
        if old is not None:
            self._live_bytes -= old[1]

    # --- Store ---

    def commit(self, added: Sequence[StoredJob], done: Sequence[str]) -> None:
        with self._guard:
            records: list[tuple[bytes, str | None]] = []
            for job in added:
                records.append((frame(b"A" + encode_job(job)), job.key))
            for key in done:
                records.append((frame(b"D" + key.encode("utf-8")), None))
            start = self._end
            try:
                if self.fsync == "always":
                    pos = start
                    for rec, _ in records:
                        _pwrite_all(self._fd, rec, pos)
                        os.fdatasync(self._fd)
                        pos += len(rec)
                else:
                    _pwrite_all(self._fd, b"".join(rec for rec, _ in records), start)
                    if self.fsync == "batch":
                        os.fdatasync(self._fd)
            except OSError as exc:
                try:  # leave no torn tail behind for the next commit to follow
                    os.ftruncate(self._fd, start)
                except OSError:
                    log.exception("journal %s: cannot truncate after a failed write",
                                  self.path)
                raise StoreError(f"journal {self.path}: write failed: {exc.strerror}") from exc
            pos = start
            for rec, added_key in records:
                if added_key is not None:
                    self._index_add(added_key, pos, len(rec))
                else:
                    self._index_done(rec[FRAME.size + 1:].decode("utf-8"))
                pos += len(rec)
            self._end = pos
            if (self._end >= self.compact_min_bytes
                    and self._live_bytes < self._end * self.compact_ratio):
                try:
                    self._compact()
                except OSError:
                    # The commit is durable already; the next commit tries again.
                    log.exception("journal %s: compaction failed", self.path)

    def replay(self) -> list[StoredJob]:
        with self._guard:
            jobs = []
            try:
                for offset, length in self._live.values():
                    rec = os.pread(self._fd, length, offset)
                    jobs.append(decode_job(memoryview(rec)[FRAME.size + 1:]))
            except (OSError, ValueError) as exc:
                raise StoreError(f"journal {self.path}: replay failed: {exc}") from exc
            return jobs

    def close(self) -> None:
        with self._guard:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    # --- compaction ---

    def _compact(self) -> None:
        """Rewrite the live records to ``<file>.compact``, fsync, rename over the journal."""
        tmp = self.path + ".compact"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            _lock(fd, tmp)
        except StoreError as exc:
            raise OSError(str(exc)) from exc
        try:
            live: dict[str, tuple[int, int]] = {}
            chunk: list[bytes] = [MAGIC]
            chunk_bytes = len(MAGIC)
            written = 0
            for key, (offset, length) in self._live.items():
                rec = os.pread(self._fd, length, offset)
                live[key] = (written + chunk_bytes, length)
                chunk.append(rec)
                chunk_bytes += length
                if chunk_bytes >= 1 << 20:
                    _pwrite_all(fd, b"".join(chunk), written)
                    written += chunk_bytes
                    chunk, chunk_bytes = [], 0
            _pwrite_all(fd, b"".join(chunk), written)
            written += chunk_bytes
            os.fsync(fd)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            raise
        os.close(self._fd)
        self._fd = fd
        self._live = live
        self._end = written
        self.compactions += 1
        _fsync_dir(self.path)
        log.info("journal %s compacted: %d live jobs, %d bytes", self.path, len(live), written)


def open_store(options: Mapping[str, str]) -> FlatfileStore:
    return FlatfileStore(options["flatfile-file"], options["flatfile-fsync"].lower())

"""The store plug-in interface: a job record, the blocking ``Store`` protocol, its error.

Blocking and thread-confined: a store is called from one worker thread at a time
(``writer.StoreWriter`` guarantees it), never from the trio thread.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol


class StoreError(Exception):
    """A store could not be opened, or a commit or replay failed. ``str()`` is one line."""


class StoredJob(NamedTuple):
    """One background job as a store keeps it (spec §5, decisions.md "Persistence").

    A NamedTuple: built once per stored job, where a frozen dataclass's ``__init__`` (a
    ``object.__setattr__`` per field) was a quarter of the server's time with a store."""

    #: The store key, unique per job, assigned by the manager. Never (unique, function):
    #: two jobs with an empty or ``-`` unique must not overwrite each other.
    key: str
    function: bytes
    unique: bytes
    #: 0 HIGH, 1 NORMAL, 2 LOW.
    priority: int
    data: bytes
    #: Epoch seconds; 0 = run now.
    when: int = 0
    reducer: bytes = b""


class Store(Protocol):
    """A persistent queue. Blocking; called only from one worker thread at a time."""

    def commit(self, added: Sequence[StoredJob], done: Sequence[str]) -> None:
        """Durably apply a batch: store every job in ``added``, then remove every key in
        ``done`` (a key in both ends up absent). Adding a key that is already stored
        replaces that job. Returns only when the batch is durable (one transaction or
        one fsync per batch); raises ``StoreError`` and applies nothing on failure where
        the backend allows it."""

    def replay(self) -> list[StoredJob]:
        """Every stored job, in the order they were first added."""

    def close(self) -> None:
        """Release connections and files. Idempotent."""


# --- a compact binary record, shared by the stores that keep one opaque value per job ---

_RECORD_VERSION = 1
_HEADER = struct.Struct(">BbqIIIII")  # version, priority, when, len(key, function, unique,
#                                       reducer, data)


def encode_job(job: StoredJob) -> bytes:
    """The job as one self-describing byte string (flatfile, memcached)."""
    key = job.key.encode("utf-8")
    return b"".join((
        _HEADER.pack(_RECORD_VERSION, job.priority, job.when, len(key), len(job.function),
                     len(job.unique), len(job.reducer), len(job.data)),
        key, job.function, job.unique, job.reducer, job.data,
    ))


def decode_job(record: bytes | memoryview) -> StoredJob:
    """The inverse of ``encode_job``; ``ValueError`` if ``record`` is not one."""
    view = memoryview(record)
    if len(view) < _HEADER.size:
        raise ValueError("job record too short")
    version, priority, when, *lengths = _HEADER.unpack_from(view)
    if version != _RECORD_VERSION:
        raise ValueError(f"unknown job record version {version}")
    if _HEADER.size + sum(lengths) != len(view):
        raise ValueError("job record length mismatch")
    parts: list[bytes] = []
    pos = _HEADER.size
    for n in lengths:
        parts.append(bytes(view[pos:pos + n]))
        pos += n
    key, function, unique, reducer, data = parts
    return StoredJob(key=key.decode("utf-8"), function=function, unique=unique,
                     priority=priority, data=data, when=when, reducer=reducer)


# --- option helpers ---

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")


def table_name(value: str, option: str) -> str:
    """A SQL table name we can splice into statements safely (no quoting games)."""
    if not _IDENTIFIER.match(value):
        raise StoreError(f"--{option}: {value!r} is not a plain table name "
                         "(letters, digits and _, not starting with a digit)")
    return value


def int_option(options: Mapping[str, str], name: str, default: int) -> int:
    raw = options.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise StoreError(f"--{name}: {raw!r} is not a number") from None


def peek_key(record: bytes | memoryview) -> str:
    """The key of an ``encode_job`` record, without copying the rest."""
    view = memoryview(record)
    if len(view) < _HEADER.size:
        raise ValueError("job record too short")
    version, _, _, *lengths = _HEADER.unpack_from(view)
    if version != _RECORD_VERSION or _HEADER.size + sum(lengths) != len(view):
        raise ValueError("not a job record")
    return bytes(view[_HEADER.size:_HEADER.size + lengths[0]]).decode("utf-8")

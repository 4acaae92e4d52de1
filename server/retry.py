"""Retry policies with back-off, and dead letters: what becomes of a job that failed.

Sans-IO, no clock: every call is given ``now``. ``RetryPolicies`` holds the per-function
policies (``--retry-policy``) and computes the exponential back-off with jitter;
``DeadLetters`` holds, per function, the jobs that used up their attempts (with their
last error, attempt count and times) until the admin retries or drops them. Dead letters
reach persistence only through ``DeadLetterStore`` (``server.persistence`` implements it).
"""

from __future__ import annotations

import itertools
import json
import random
import re
import struct
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Protocol

from .jobs import RetryState

__all__ = ["DeadLetter", "DeadLetters", "RetryPolicies", "RetryPolicy", "RetryState"]

#: Dead letters kept per function; past it the oldest is dropped (logged).
MAX_DEAD_PER_FUNCTION: Final = 10_000
#: Characters of an error text kept in a dead letter.
MAX_ERROR: Final = 1024

_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|)\Z")


class PolicyError(ValueError):
    """A retry policy text that is not understood; ``str()`` is one line."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a function's failed jobs are retried."""

    #: Attempts in all (the first run included); the last failure makes a dead letter.
    attempts: int
    #: The first back-off (seconds); doubled at each failure up to ``backoff_max``.
    backoff_min: float = 1.0
    backoff_max: float = 600.0
    #: Foreground jobs are retried too (their clients hear only the final outcome).
    foreground: bool = False


def duration(text: str) -> float:
    """``250ms``, ``2s``, ``10m``, ``1h`` or a plain number of seconds."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise PolicyError(f"{text!r} is not a duration (like 500ms, 2s, 10m, 1h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_policy(text: str) -> tuple[bytes | None, RetryPolicy]:
    """``NAME=N[,backoff=MIN..MAX][,foreground]``; NAME ``*`` is the default for every
    function without its own. Returns (name or None for the default, policy)."""
    head, *options = [part.strip() for part in text.split(",")]
    name, eq, count = head.rpartition("=")
    if not eq or not name:
        raise PolicyError(f"{text!r}: expected NAME=ATTEMPTS[,backoff=MIN..MAX][,foreground]")
    if not count.isdigit() or int(count) < 1:
        raise PolicyError(f"{text!r}: the number of attempts must be a whole number >= 1")
    low, high, foreground = 1.0, 600.0, False
    for option in options:
        if option == "foreground":
            foreground = True
        elif option.startswith("backoff="):
            lo, sep, hi = option[len("backoff="):].partition("..")
            low = duration(lo)
            high = duration(hi) if sep else low
            if high < low:
                raise PolicyError(f"{text!r}: the back-off's maximum is below its minimum")
        else:
            raise PolicyError(f"{text!r}: unknown option {option!r} "
                              "(backoff=MIN..MAX or foreground)")
    key = None if name == "*" else name.encode()
    return key, RetryPolicy(int(count), low, high, foreground)


class RetryPolicies:
    """The policies by function name, the default, and the back-off's random source."""

    def __init__(self, policies: dict[bytes | None, RetryPolicy] | None = None,
                 rng: random.Random | None = None) -> None:
        self.by_function = dict(policies or {})
        self.default = self.by_function.pop(None, None)
        self.rng = rng or random.Random()

    def __bool__(self) -> bool:
        return self.default is not None or bool(self.by_function)

    def get(self, function: bytes) -> RetryPolicy | None:
        return self.by_function.get(function, self.default)

    def delay(self, policy: RetryPolicy, failures: int) -> float:
        """The back-off after the ``failures``-th failure: doubled each time from the
        minimum, capped at the maximum, then jittered to between half and all of it (so
        jobs that failed together do not all come back at the same instant)."""
        base = min(policy.backoff_max, policy.backoff_min * 2.0 ** min(failures - 1, 60))
        return base / 2 + self.rng.random() * base / 2


@dataclass(slots=True)
class DeadLetter:
    """A job that used up its attempts."""

    function: bytes
    handle: bytes
    unique: bytes
    data: bytes
    priority: int
    reducer: bytes
    attempts: int
    error: str
    first_failed: float
    last_failed: float
    #: The persistent copy's key, or None (memory only).
    store_key: str | None = None


class DeadLetterStore(Protocol):
    """Persistence of dead letters (``server.persistence``): never blocks."""

    def keep(self, letter: DeadLetter) -> None: ...

    def drop(self, key: str) -> None: ...


class DeadLetters:
    """Every function's dead letters, oldest first; each function's list bounded.

    Handles are not unique across restarts (each run counts from 1), so letters are kept
    by an id of their own and found by handle with a scan (admin commands only)."""

    def __init__(self, limit: int = MAX_DEAD_PER_FUNCTION) -> None:
        self.limit = limit
        self.by_function: dict[bytes, OrderedDict[int, DeadLetter]] = {}
        self.store: DeadLetterStore | None = None
        #: Letters dropped because a function's list was full.
        self.overflowed = 0
        self._ids = itertools.count()

    def __len__(self) -> int:
        return sum(len(d) for d in self.by_function.values())

    def add(self, letter: DeadLetter, persist: bool = True) -> DeadLetter | None:
        """Keep ``letter`` (and store it); the oldest letter it pushed out, if any."""
        letters = self.by_function.setdefault(letter.function, OrderedDict())
        letters[next(self._ids)] = letter
        if persist and self.store is not None and letter.store_key is not None:
            self.store.keep(letter)
        if len(letters) > self.limit:
            _, oldest = letters.popitem(last=False)
            self._unstore(oldest)
            self.overflowed += 1
            return oldest
        return None

    def take(self, function: bytes, handle: bytes | None) -> list[DeadLetter]:
        """Remove and return a function's letters with that handle (after a restart,
        several may have it), or all of them (None)."""
        letters = self.by_function.get(function)
        if not letters:
            return []
        ids = [i for i, d in letters.items() if handle is None or d.handle == handle]
        taken = [letters.pop(i) for i in ids]
        if not letters:
            del self.by_function[function]
        for letter in taken:
            self._unstore(letter)
        return taken

    def remove(self, letter: DeadLetter) -> None:
        """Remove this one letter (and its stored copy)."""
        letters = self.by_function.get(letter.function, OrderedDict())
        for i, d in letters.items():
            if d is letter:
                del letters[i]
                self._unstore(letter)
                break
        if not letters:
            self.by_function.pop(letter.function, None)

    def _unstore(self, letter: DeadLetter) -> None:
        if letter.store_key is not None and self.store is not None:
            self.store.drop(letter.store_key)
        letter.store_key = None

    def rows(self, function: bytes | None = None) -> Iterator[DeadLetter]:
        """Every letter (of one function, or all in name order), oldest first."""
        names = [function] if function is not None else sorted(self.by_function)
        for name in names:
            yield from list(self.by_function.get(name, {}).values())


# --- how a dead letter is kept by a job store: a StoredJob with ``when`` DEAD_WHEN ---

#: A stored record with this ``when`` is a dead letter, not a job (jobs keep when >= 0).
DEAD_WHEN: Final = -1
_MAGIC: Final = b"GDL1"
_LEN = struct.Struct(">I")


def encode_envelope(letter: DeadLetter) -> bytes:
    """The letter's data with its history in front (a store record's ``data``)."""
    meta = json.dumps({"handle": letter.handle.decode("latin-1"), "attempts": letter.attempts,
                       "error": letter.error, "first_failed": letter.first_failed,
                       "last_failed": letter.last_failed}).encode()
    return _MAGIC + _LEN.pack(len(meta)) + meta + letter.data


def decode_envelope(function: bytes, unique: bytes, priority: int, reducer: bytes,
                    record: bytes, key: str) -> DeadLetter:
    """The inverse of ``encode_envelope``; ``ValueError`` when ``record`` is not one."""
    if record[:4] != _MAGIC or len(record) < 8:
        raise ValueError("not a dead-letter record")
    (size,) = _LEN.unpack_from(record, 4)
    meta = json.loads(record[8:8 + size])
    return DeadLetter(function=function, handle=str(meta["handle"]).encode("latin-1"),
                      unique=unique, data=record[8 + size:], priority=priority,
                      reducer=reducer, attempts=int(meta["attempts"]),
                      error=str(meta["error"]), first_failed=float(meta["first_failed"]),
                      last_failed=float(meta["last_failed"]), store_key=key)

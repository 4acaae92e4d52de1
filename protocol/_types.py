"""Packet types, their numbers and argument names: one declarative table (spec §1.2).

Pure data. Nothing here performs I/O.
"""

from __future__ import annotations

import enum
from typing import Final, NamedTuple


class Magic(bytes, enum.Enum):
    """The four magic bytes that open every binary packet."""

    REQ = b"\0REQ"
    RES = b"\0RES"


class PacketType(enum.IntEnum):
    """Every packet type of the spec, with its wire number."""

    CAN_DO = 1
    CANT_DO = 2
    RESET_ABILITIES = 3
    PRE_SLEEP = 4
    UNUSED_5 = 5
    NOOP = 6
    SUBMIT_JOB = 7
    JOB_CREATED = 8
    GRAB_JOB = 9
    NO_JOB = 10
    JOB_ASSIGN = 11
    WORK_STATUS = 12
    WORK_COMPLETE = 13
    WORK_FAIL = 14
    GET_STATUS = 15
    ECHO_REQ = 16
    ECHO_RES = 17
    SUBMIT_JOB_BG = 18
    ERROR = 19
    STATUS_RES = 20
    SUBMIT_JOB_HIGH = 21
    SET_CLIENT_ID = 22
    CAN_DO_TIMEOUT = 23
    ALL_YOURS = 24
    WORK_EXCEPTION = 25
    OPTION_REQ = 26
    OPTION_RES = 27
    WORK_DATA = 28
    WORK_WARNING = 29
    GRAB_JOB_UNIQ = 30
    JOB_ASSIGN_UNIQ = 31
    SUBMIT_JOB_HIGH_BG = 32
    SUBMIT_JOB_LOW = 33
    SUBMIT_JOB_LOW_BG = 34
    SUBMIT_JOB_SCHED = 35
    SUBMIT_JOB_EPOCH = 36
    SUBMIT_REDUCE_JOB = 37
    SUBMIT_REDUCE_JOB_BACKGROUND = 38
    GRAB_JOB_ALL = 39
    JOB_ASSIGN_ALL = 40
    GET_STATUS_UNIQUE = 41
    STATUS_RES_UNIQUE = 42


class PacketSpec(NamedTuple):
    """Argument names of one packet type (the last one is the opaque tail)."""

    args: tuple[str, ...]


_SUBMIT_ARGS: Final = ("function", "unique", "data")

#: The one table: argument names per packet type (spec §1.2).
#: SUBMIT_REDUCE_JOB has four NUL-terminated arguments before the data, as
#: libgearman sends it (the aggregator is always empty).
PACKET_SPECS: Final[dict[PacketType, PacketSpec]] = {
    PacketType.CAN_DO: PacketSpec(("function",)),
    PacketType.CANT_DO: PacketSpec(("function",)),
    PacketType.RESET_ABILITIES: PacketSpec(()),
    PacketType.PRE_SLEEP: PacketSpec(()),
    PacketType.UNUSED_5: PacketSpec(()),
    PacketType.NOOP: PacketSpec(()),
    PacketType.SUBMIT_JOB: PacketSpec(_SUBMIT_ARGS),
    PacketType.JOB_CREATED: PacketSpec(("handle",)),
    PacketType.GRAB_JOB: PacketSpec(()),
    PacketType.NO_JOB: PacketSpec(()),
    PacketType.JOB_ASSIGN: PacketSpec(("handle", "function", "data")),
    PacketType.WORK_STATUS: PacketSpec(("handle", "numerator", "denominator")),
    PacketType.WORK_COMPLETE: PacketSpec(("handle", "data")),
    PacketType.WORK_FAIL: PacketSpec(("handle",)),
    PacketType.GET_STATUS: PacketSpec(("handle",)),
    PacketType.ECHO_REQ: PacketSpec(("data",)),
    PacketType.ECHO_RES: PacketSpec(("data",)),
    PacketType.SUBMIT_JOB_BG: PacketSpec(_SUBMIT_ARGS),
    PacketType.ERROR: PacketSpec(("code", "text")),
    PacketType.STATUS_RES: PacketSpec(
        ("handle", "known", "running", "numerator", "denominator")
    ),
    PacketType.SUBMIT_JOB_HIGH: PacketSpec(_SUBMIT_ARGS),
    PacketType.SET_CLIENT_ID: PacketSpec(("id",)),
    PacketType.CAN_DO_TIMEOUT: PacketSpec(("function", "timeout")),
    PacketType.ALL_YOURS: PacketSpec(()),
    PacketType.WORK_EXCEPTION: PacketSpec(("handle", "data")),
    PacketType.OPTION_REQ: PacketSpec(("option",)),
    PacketType.OPTION_RES: PacketSpec(("option",)),
    PacketType.WORK_DATA: PacketSpec(("handle", "data")),
    PacketType.WORK_WARNING: PacketSpec(("handle", "data")),
    PacketType.GRAB_JOB_UNIQ: PacketSpec(()),
    PacketType.JOB_ASSIGN_UNIQ: PacketSpec(("handle", "function", "unique", "data")),
    PacketType.SUBMIT_JOB_HIGH_BG: PacketSpec(_SUBMIT_ARGS),
    PacketType.SUBMIT_JOB_LOW: PacketSpec(_SUBMIT_ARGS),
    PacketType.SUBMIT_JOB_LOW_BG: PacketSpec(_SUBMIT_ARGS),
    PacketType.SUBMIT_JOB_SCHED: PacketSpec(
        ("function", "unique", "minute", "hour", "mday", "month", "wday", "data")
    ),
    PacketType.SUBMIT_JOB_EPOCH: PacketSpec(("function", "unique", "epoch", "data")),
    PacketType.SUBMIT_REDUCE_JOB: PacketSpec(
        ("function", "unique", "reducer", "aggregator", "data")
    ),
    PacketType.SUBMIT_REDUCE_JOB_BACKGROUND: PacketSpec(
        ("function", "unique", "reducer", "aggregator", "data")
    ),
    PacketType.GRAB_JOB_ALL: PacketSpec(()),
    PacketType.JOB_ASSIGN_ALL: PacketSpec(
        ("handle", "function", "unique", "reducer", "data")
    ),
    PacketType.GET_STATUS_UNIQUE: PacketSpec(("unique",)),
    PacketType.STATUS_RES_UNIQUE: PacketSpec(
        ("unique", "known", "running", "numerator", "denominator", "waiting")
    ),
}

#: Argument count per wire number, a flat tuple for the parser's hot path
#: (index = type number; None = not a packet type).
ARITY: Final[tuple[int | None, ...]] = tuple(
    len(PACKET_SPECS[PacketType(n)].args) if n in PacketType._value2member_map_ else None
    for n in range(max(PacketType) + 1)
)


class Priority(enum.IntEnum):
    """Job priority; the numbers are the ones persistent stores use (spec §5)."""

    HIGH = 0
    NORMAL = 1
    LOW = 2


class SubmitKind(NamedTuple):
    """What a SUBMIT_* packet asks for, so the server has one submit path."""

    priority: Priority
    background: bool
    epoch: bool = False
    sched: bool = False
    reduce: bool = False


#: The SUBMIT family as a table (spec §1.3).
SUBMIT_KINDS: Final[dict[PacketType, SubmitKind]] = {
    PacketType.SUBMIT_JOB: SubmitKind(Priority.NORMAL, False),
    PacketType.SUBMIT_JOB_BG: SubmitKind(Priority.NORMAL, True),
    PacketType.SUBMIT_JOB_HIGH: SubmitKind(Priority.HIGH, False),
    PacketType.SUBMIT_JOB_HIGH_BG: SubmitKind(Priority.HIGH, True),
    PacketType.SUBMIT_JOB_LOW: SubmitKind(Priority.LOW, False),
    PacketType.SUBMIT_JOB_LOW_BG: SubmitKind(Priority.LOW, True),
    PacketType.SUBMIT_JOB_EPOCH: SubmitKind(Priority.NORMAL, True, epoch=True),
    PacketType.SUBMIT_JOB_SCHED: SubmitKind(Priority.NORMAL, True, sched=True),
    PacketType.SUBMIT_REDUCE_JOB: SubmitKind(Priority.NORMAL, False, reduce=True),
    PacketType.SUBMIT_REDUCE_JOB_BACKGROUND: SubmitKind(Priority.NORMAL, True, reduce=True),
}

#: Which submit packet to send for a (priority, background) pair (client side).
SUBMIT_TYPE_FOR: Final[dict[tuple[Priority, bool], PacketType]] = {
    (kind.priority, kind.background): ptype
    for ptype, kind in SUBMIT_KINDS.items()
    if not (kind.epoch or kind.sched or kind.reduce)
}

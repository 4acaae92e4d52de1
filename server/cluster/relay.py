"""Foreground jobs across servers: the peers at both ends of a relayed job.

A foreground job submitted to A that no worker on A can do is assigned, on A, to the
member's ``cluster`` connection (a ``StandInPeer``) and inserted into the shared table
with A as its origin. B claims it and queues it with a ``relay`` connection of origin A
as its client (a ``RelayPeer``): what B's core delivers to that client (WORK_DATA,
WORK_WARNING, WORK_STATUS, WORK_COMPLETE, WORK_FAIL, WORK_EXCEPTION) is queued for A's
channel, in order. A replays each packet it hears as if the stand-in worker had sent it,
so its clients get them through the ordinary paths.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from protocol import PacketType

log = logging.getLogger(__name__)

PT = PacketType

#: The packets relayed, with their argument counts.
RELAYED: Final = {PT.WORK_DATA: 2, PT.WORK_WARNING: 2, PT.WORK_STATUS: 3,
                  PT.WORK_COMPLETE: 2, PT.WORK_FAIL: 1, PT.WORK_EXCEPTION: 2}


class RelayPeer:
    """The client, on the server running a job, that stands for the origin's clients."""

    def __init__(self, origin: str, send: Callable[[str, PacketType, tuple[bytes, ...]], None]
                 ) -> None:
        self.origin = origin
        self._send = send

    def deliver(self, ptype: PacketType, *args: bytes) -> None:
        if ptype in RELAYED:
            self._send(self.origin, ptype, args)

    def hold(self) -> object:
        return None

    def release(self, hold: object, ptype: PacketType, *args: bytes) -> None:
        self.deliver(ptype, *args)


class StandInPeer:
    """The worker, on the origin, that stands for the servers running its jobs. What the
    core sends it is dropped (an ERROR means a relayed packet came for a job that is
    gone here: cancelled, or relayed twice after a takeover)."""

    def deliver(self, ptype: PacketType, *args: bytes) -> None:
        if ptype is PT.ERROR:
            log.debug("cluster: relayed packet refused: %r", args)

    def hold(self) -> object:
        return None

    def release(self, hold: object, ptype: PacketType, *args: bytes) -> None:
        self.deliver(ptype, *args)


def valid(ptype: int, args: tuple[bytes, ...]) -> PacketType | None:
    """The packet type of a relayed record, if it is one we relay with the right
    number of arguments."""
    try:
        kind = PT(ptype)
    except ValueError:
        return None
    return kind if RELAYED.get(kind) == len(args) else None

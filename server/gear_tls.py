"""The Gear peer of a TLS connection (``--ssl``).

A plaintext ``GearPeer`` writes its buffer straight to the socket (``os.write``) at the
end of each batch. Over TLS the bytes must be encrypted by the connection's
``trio.SSLStream``, whose ``send_all`` is asynchronous: so this peer's ``flush`` only
wakes its writer task, which sends the buffer in chunks. Everything else (holds, the
output bound, pausing, dropping) is ``GearPeer``'s: the buffer keeps what is not yet sent,
so back-pressure counts it the same way.
"""

from __future__ import annotations

import logging
import math
from typing import Final

import trio

from .gear import GearPeer

log = logging.getLogger(__name__)

#: Bytes handed to one ``send_all``: a few TLS records; the buffer is trimmed after each.
_CHUNK: Final = 256 * 1024


class TlsGearPeer(GearPeer):
    """A ``GearPeer`` whose output goes through its TLS stream, from its writer task."""

    __slots__ = ()

    def flush(self) -> None:
        """The writer task encrypts and sends (it is woken, nothing is written here)."""
        if self.out and not self.broken:
            self._wake.set()

    async def writer(self) -> None:
        """Send the buffer as it fills; end when closing (and sent) or broken. A chunk the
        peer takes none of within ``write_timeout`` drops the peer."""
        out = self.out
        stream = self.stream
        timeout = self.write_timeout if self.write_timeout > 0 else math.inf
        with trio.CancelScope() as self._write_scope:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                while out and not self.broken:
                    chunk = bytes(out[:_CHUNK])
                    failed = False
                    with trio.move_on_after(timeout) as waited:
                        try:
                            await stream.send_all(chunk)
                        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                            log.info("connection %d: write failed: %s", self.cid,
                                     exc.__cause__ or exc)
                            failed = True
                    if failed:  # (no break inside the with: mypyc cannot compile one)
                        self.broken = True
                        break
                    if waited.cancelled_caught:
                        log.warning("connection %d: peer took no data for %.0f s "
                                    "(%d bytes pending); dropping", self.cid,
                                    self.write_timeout, len(out))
                        self.broken = True
                        break
                    del out[:len(chunk)]
                    self.traffic[3] += len(chunk)
                    self._check_drained()
                if self.broken or (self.closing and not self._holds):
                    return

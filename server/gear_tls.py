"""The Gear front-end over TLS (``--ssl``).

On the epoll transport (Linux, the default) a TLS connection is served by the same
reactor as a plaintext one. Its handshake runs in the connection's task, over an
``ssl.SSLObject`` and two ``MemoryBIO``s on the raw socket (``tls.memory_handshake``),
before the fd joins the epoll set. Then the reactor reads ciphertext with ``os.read``;
``TlsGearFrontEnd._receive`` decrypts it and hands the plaintext to the parser. A
``TlsEpollPeer`` encrypts its output in ``flush`` and writes the ciphertext with
``os.write``; what the kernel does not take waits for its writer task, as plaintext does.

Back-pressure: ``out`` (plaintext) is what the bounds of ``GearPeer`` count. It is
encrypted only when no ciphertext is pending, at most ``_CHUNK`` bytes at a time, so the
ciphertext not counted is at most one chunk (and its records' overhead) per peer.

On the streams transport (by config) a ``TlsGearPeer`` sends through the connection's
``trio.SSLStream`` from its writer task (server/tls.py: ``TlsStream``).
"""

from __future__ import annotations

import logging
import math
import os
import select
import ssl
import time
from typing import Final

import trio

from protocol import Parser

from .gear import GearFrontEnd, transport_for
from .gear_peer import Batch, GearPeer
from .host import Address, Host, Stream, bind, serve_listeners
from .tls import MemoryTls, memory_handshake

log = logging.getLogger(__name__)

#: Bytes handed to one ``send_all`` (streams), or encrypted at once (epoll): a few TLS
#: records; the buffer is trimmed after each.
_CHUNK: Final = 256 * 1024
#: Plaintext asked of the ``SSLObject`` per call (one record gives at most 16 KiB).
_READ_SIZE: Final = 64 * 1024


class TlsEpollPeer(GearPeer):
    """A ``GearPeer`` of the epoll reactor whose socket carries TLS: ``cipher`` holds
    the encrypted output the kernel has not taken yet (shared with its ``MemoryTls``,
    which sends close_notify only when it is empty)."""

    __slots__ = ("cipher", "incoming", "outgoing", "sslobj")

    def __init__(self, stream: Stream, limit: int, dirty: list[GearPeer],
                 parser: Parser, batch: Batch | None = None,
                 write_timeout: float = 0, traffic: list[int] | None = None) -> None:
        super().__init__(stream, limit, dirty, parser, batch, write_timeout, traffic)
        assert isinstance(stream, MemoryTls)
        self.sslobj: ssl.SSLObject = stream.sslobj
        self.incoming: ssl.MemoryBIO = stream.incoming
        self.outgoing: ssl.MemoryBIO = stream.outgoing
        self.cipher: bytearray = stream.pending

    def decrypt(self, data: bytes) -> tuple[bytes, bool]:
        """The plaintext in ``data`` and what came before it (b"" when the records held
        none: a partial record, a key update); and whether the TLS stream ended
        (close_notify, or an error: logged). Anything the reading produced for the peer
        (a key update of our own) is queued as ciphertext."""
        incoming = self.incoming
        if data:
            incoming.write(data)
        sslobj = self.sslobj
        chunks: list[bytes] = []
        ended = False
        more = True
        try:
            while more:
                chunk = sslobj.read(_READ_SIZE)
                if not chunk:  # close_notify (the ssl module returns b"" for it)
                    ended = True
                    more = False
                else:
                    chunks.append(chunk)
                    # Nothing left to decrypt without more input: skip the exception.
                    more = incoming.pending > 0 or sslobj.pending() > 0
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            ended = True
        except ssl.SSLError as exc:
            log.info("connection %d: read failed: %s", self.cid, exc.reason or exc)
            ended = True
        if self.outgoing.pending:
            if not self.out and not self.cipher:
                self.dirty.append(self)
            self.cipher += self.outgoing.read()
        if len(chunks) == 1:
            return chunks[0], ended
        return b"".join(chunks), ended

    def _encrypt(self) -> None:
        """Move up to ``_CHUNK`` bytes of ``out`` into ``cipher``, encrypted."""
        out = self.out
        size = min(len(out), _CHUNK)
        try:
            if size == len(out):
                self.sslobj.write(out)
                out.clear()
            else:
                self.sslobj.write(bytes(out[:size]))
                del out[:size]
        except ssl.SSLError as exc:
            log.info("connection %d: write failed: %s", self.cid, exc.reason or exc)
            self.broken = True
            out.clear()
            return
        self.traffic[3] += size
        self.cipher += self.outgoing.read()

    def flush(self) -> None:
        """Encrypt and write what the kernel takes now; leave the rest to the writer."""
        out = self.out
        cipher = self.cipher
        # (A loop on a flag set by ``_send`` made mypyc 1.x emit C that does not compile.)
        while not self.broken and (out or cipher):
            if not cipher:
                self._encrypt()
            elif not self._send():
                break
        if self.broken:
            self._wake.set()
        else:
            self._check_drained()

    def _send(self) -> bool:
        """Write the ciphertext; True when the kernel took all of it (else the writer is
        woken for the rest, or the peer is broken)."""
        cipher = self.cipher
        try:
            written = os.write(self.fd, cipher)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            log.info("connection %d: write failed: %s", self.cid, exc)
            self.broken = True
            self.out.clear()
            cipher.clear()
            return False
        if written == len(cipher):
            cipher.clear()
            return True
        del cipher[:written]
        self._wake.set()
        return False

    async def writer(self) -> None:
        """Finish what ``flush`` could not write; end when closing (and sent) or broken.
        A peer that takes no byte within ``write_timeout`` is dropped."""
        out = self.out
        cipher = self.cipher
        fd = self.fd
        timeout = self.write_timeout if self.write_timeout > 0 else math.inf
        with trio.CancelScope() as self._write_scope:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                while (out or cipher) and not self.broken:
                    if not cipher:
                        self._encrypt()
                        self._check_drained()
                        continue
                    with trio.move_on_after(timeout) as waited:
                        await trio.lowlevel.wait_writable(fd)
                    if waited.cancelled_caught:
                        log.warning("connection %d: peer took no data for %.0f s "
                                    "(%d bytes pending); dropping", self.cid,
                                    self.write_timeout, len(out) + len(cipher))
                        self.broken = True
                        continue
                    try:
                        written = os.write(fd, cipher)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        log.info("connection %d: write failed: %s", self.cid, exc)
                        self.broken = True
                        continue
                    del cipher[:written]
                if self.broken or (self.closing and not self._holds):
                    return


class TlsGearFrontEnd(GearFrontEnd):
    """The Gear front-end under ``--ssl``: the epoll reactor with ``TlsEpollPeer``s, or
    (``transport = streams``) a task per connection with ``TlsGearPeer``s."""

    def __init__(self, host: Host, port: int) -> None:
        epoll = transport_for(host.config.transport) == "epoll"
        super().__init__(host, port, TlsEpollPeer if epoll else TlsGearPeer)
        if epoll:
            self.transport = "epoll"
            self._epoll = select.epoll()

    async def serve(self, *, task_status: trio.TaskStatus[list[Address]]
                    = trio.TASK_STATUS_IGNORED) -> None:
        if self._epoll is None:
            await super().serve(task_status=task_status)
            return
        listeners, self.addresses = await bind(self.config, self.port)
        for address in self.addresses:
            log.debug("listening on %s:%d (epoll transport, TLS)", *address)
        self.host.spawn(self._run_reactor)
        if self.config.idle_timeout > 0:
            self.host.spawn(self._close_idle, self.config.idle_timeout)
        task_status.started(list(self.addresses))
        await serve_listeners(self.host, listeners, self._connection,
                              tls_accept=self._accept)

    async def _accept(self, stream: trio.SocketStream, address: str, port: int) -> None:
        """The handshake, then the connection's life (``GearFrontEnd._connection``)."""
        context = self.host.tls_context
        tls = self.config.tls
        assert context is not None and tls is not None
        host = f"[{address}]" if ":" in address else address
        where = f"{self.name}: connection from {host}:{port}"
        memory = await memory_handshake(stream, context, tls.handshake_timeout, where)
        if memory is None:
            return
        if memory.incoming.pending:  # the client's first records came with its Finished
            self.host.spawn(self._early_records, memory)
        await self._connection(memory, address, port)

    async def _early_records(self, memory: MemoryTls) -> None:
        """Read what the handshake left in the incoming BIO; this runs once the peer is
        registered (its connection task has started waiting in its writer)."""
        peer = self._readers.get(memory.socket.fileno())
        if peer is not None and peer.stream is memory:
            self._decrypted(peer, b"", time.time())
            self.flush()
            self.host.deadlines_changed()

    def _receive(self, peer: GearPeer, data: bytes, now: float) -> None:
        """Ciphertext from the reactor (b"": the peer closed the TCP connection); the
        streams transport's ``TlsStream`` gives plaintext."""
        if self._epoll is None:
            super()._receive(peer, data, now)
        elif data:
            self._decrypted(peer, data, now)
        else:
            # First what the handshake left in the incoming BIO: the reactor may see a
            # half-close before ``_early_records`` has run.
            self._decrypted(peer, b"", now)
            if self._readers.get(peer.fd) is peer:
                super()._receive(peer, b"", now)

    def _decrypted(self, peer: GearPeer, data: bytes, now: float) -> None:
        assert isinstance(peer, TlsEpollPeer)
        plain, ended = peer.decrypt(data)
        if plain:
            super()._receive(peer, plain, now)
        if ended and self._readers.get(peer.fd) is peer:
            super()._receive(peer, b"", now)


class TlsGearPeer(GearPeer):
    """The streams transport's TLS peer: its output goes through its ``trio.SSLStream``,
    from its writer task (``flush`` only wakes it; ``send_all`` is asynchronous)."""

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

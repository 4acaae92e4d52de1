"""The memcached front-end (``-r memcached``): the memcached text protocol onto the job core.

The 2009 tutorial's "pluggable protocol ... coming soon: memcached", so that any memcached
client can queue and run jobs:

- ``set FN FLAGS EXPTIME LEN [noreply]`` + data: a background job of function FN with the
  data as its payload; ``STORED`` once it is queued (and committed, with a store).
  ``add`` is the same. FLAGS and EXPTIME are read and ignored.
- ``get KEY [KEY ...]`` (and ``gets``): each KEY is ``FN`` or ``FN/ARG``; runs FN in the
  foreground with ARG (the rest of the key after the first ``/``) as its payload and
  returns the result (its WORK_DATA then its WORK_COMPLETE data) as the value, flags 0.
  The jobs of one ``get`` run at the same time; a job that fails (or that the server
  refuses) is a miss, logged with the reason.
- ``version``, ``stats`` (the server's counters as ``STAT`` lines), ``quit``.
- Errors are one line: ``CLIENT_ERROR <text>`` (the client's mistake; the connection goes
  on where memcached's would) or ``SERVER_ERROR <text>``. A command line longer than
  2,048 bytes closes the connection, as memcached does.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Final

import trio

from protocol import PacketType, Priority

from .host import Host, PacketPeer, Stream, TaskFrontEnd

log = logging.getLogger(__name__)

PT = PacketType
_RECEIVE_SIZE: Final = 64 * 1024
#: memcached's limits: a key, and a command line.
MAX_KEY: Final = 250
MAX_LINE: Final = 2048
#: Bytes of pipelined commands taken while a ``get`` waits for its jobs.
_PIPELINE_LIMIT: Final = 64 * 1024
_STORE_COMMANDS: Final = (b"set", b"add")
_GET_COMMANDS: Final = (b"get", b"gets")


class _Closed(Exception):
    """The client left, or the connection must close (the message says why)."""


class MemcachedConnection:
    """One memcached client: commands read from its stream, answered in order."""

    def __init__(self, host: Host, stream: Stream, address: str, port: int,
                 started: float) -> None:
        config = host.config
        self.host = host
        self.manager = host.manager
        self.stream = stream
        self.max_value = config.max_packet_size
        self.peer = PacketPeer(config.max_packet_size + 4 * config.max_outgoing_buffer)
        self.conn = self.manager.connect(self.peer, address, port, "memcached")
        # A failed job's reason (WORK_EXCEPTION text) is logged with the miss.
        self.conn.exceptions = True
        self.cid = self.peer.cid = self.conn.id
        self.buf = bytearray()
        self.eof = False
        self.started = started

    async def run(self) -> None:
        try:
            with self.peer.scope:
                while await self._one_command():
                    pass
            if self.peer.overflowed:
                log.warning("connection %d: dropped: too much output pending", self.cid)
        except OverflowError as exc:
            log.warning("connection %d: dropped: %s", self.cid, exc)
        except _Closed as exc:
            log.info("connection %d: %s", self.cid, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("connection %d: %s", self.cid, exc or "closed by peer")
        except Exception:
            log.exception("connection %d: dropped after an unexpected error", self.cid)
        finally:
            self.manager.disconnect(self.conn, time.time())
            self.host.changed()
            with trio.CancelScope(shield=True):
                await self.stream.aclose()
            log.info("connection %d: closed", self.cid)

    # ------------------------------------------------------------------ reading

    async def _fill(self) -> None:
        if self.eof:
            raise _Closed("closed by peer")
        data = await self.stream.receive_some(_RECEIVE_SIZE)
        if not data:
            self.eof = True
            raise _Closed("closed by peer")
        self.buf += data

    async def _line(self) -> bytes:
        """The next command line, without its line end ("\\r\\n", or "\\n" as memcached
        also takes)."""
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line = bytes(self.buf[:nl])
                del self.buf[:nl + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self.buf) > MAX_LINE:
                await self._send(b"CLIENT_ERROR line too long\r\n")
                raise _Closed("command line too long")
            await self._fill()

    async def _block(self, size: int) -> bytes | None:
        """A data block of ``size`` bytes and its "\\r\\n"; None when the two bytes after
        it are not "\\r\\n" (they are consumed all the same, as memcached does)."""
        while len(self.buf) < size + 2:
            await self._fill()
        block = bytes(self.buf[:size])
        end = bytes(self.buf[size:size + 2])
        del self.buf[:size + 2]
        return block if end == b"\r\n" else None

    async def _skip(self, size: int) -> None:
        """Swallow a data block we refuse (too large), without holding it in memory."""
        left = size + 2
        while left > 0:
            if not self.buf:
                await self._fill()
            taken = min(left, len(self.buf))
            del self.buf[:taken]
            left -= taken

    async def _send(self, data: bytes) -> None:
        # Bounded like a Gear peer's output (--write-timeout).
        timeout = self.host.config.write_timeout or math.inf
        with trio.move_on_after(timeout) as scope:
            await self.stream.send_all(data)
        if scope.cancelled_caught:
            raise _Closed(f"took no data for {timeout:.0f} s; dropped")

    # ------------------------------------------------------------------ commands

    async def _one_command(self) -> bool:
        try:
            idle = self.host.config.idle_timeout
            with trio.move_on_after(idle if idle > 0 and not self.buf else math.inf) as wait:
                line = await self._line()
            if wait.cancelled_caught:
                log.info("connection %d: idle for %.0f s; closing", self.cid, idle)
                return False
        except _Closed:
            if self.eof and not self.buf:
                return False  # the client closed between commands
            raise
        words = line.split()
        if not words:
            await self._send(b"ERROR\r\n")
            return True
        command = words[0]
        if command in _STORE_COMMANDS:
            await self._store(words)
        elif command in _GET_COMMANDS:
            await self._get(words[1:])
        elif command == b"version":
            await self._send(b"VERSION %s\r\n" % self.host.config.version.encode())
        elif command == b"stats":
            await self._stats(words[1:])
        elif command == b"quit":
            return False
        else:
            name = command[:64].decode("latin-1")
            log.info("connection %d: unknown memcached command %r", self.cid, name)
            await self._send(b"CLIENT_ERROR unknown command: %s\r\n" % command[:64])
        return True

    async def _store(self, words: list[bytes]) -> None:
        noreply = len(words) == 6 and words[5] == b"noreply"
        if len(words) not in (5, 6) or (len(words) == 6 and not noreply):
            await self._send(b"CLIENT_ERROR bad command line format\r\n")
            return
        key, size_text = words[1], words[4]
        if not (size_text.isdigit() and words[2].isdigit()
                and words[3].lstrip(b"-").isdigit()):
            # memcached cannot tell how much data follows either: what does is read as
            # the next command line.
            await self._send(b"CLIENT_ERROR bad command line format\r\n")
            return
        size = int(size_text)
        if size > self.max_value:
            await self._skip(size)
            await self._send(b"SERVER_ERROR object too large for cache\r\n")
            return
        data = await self._block(size)
        if data is None:
            await self._send(b"CLIENT_ERROR bad data chunk\r\n")
            return
        if len(key) > MAX_KEY:
            await self._send(b"CLIENT_ERROR key too long\r\n")
            return
        problem = self._key_problem(key)
        if problem is not None:
            if not noreply:
                await self._send(b"CLIENT_ERROR %s\r\n" % problem)
            return
        reply = await self._submit_background(key, data)
        if not noreply:
            await self._send(reply)

    def _key_problem(self, function: bytes) -> bytes | None:
        """Why a key's function name is the client's mistake, or None."""
        if not function:
            return b"empty function name"
        problem = self.manager.name_problem(function)
        return problem[1] if problem is not None else None

    async def _submit_background(self, function: bytes, data: bytes) -> bytes:
        self.manager.submit_checked(self.conn, function, b"", data, int(Priority.NORMAL),
                                    True, time.time())
        self.host.changed()
        ptype, args = await self.peer.next_packet()
        if ptype is PT.JOB_CREATED:
            return b"STORED\r\n"
        text = args[1] if ptype is PT.ERROR else b"unexpected reply"
        log.info("connection %d: set %r refused: %s", self.cid, function,
                 text.decode("latin-1"))
        return b"SERVER_ERROR %s\r\n" % text

    async def _get(self, keys: list[bytes]) -> None:
        if not keys:
            await self._send(b"ERROR\r\n")
            return
        if any(len(k) > MAX_KEY for k in keys):
            await self._send(b"CLIENT_ERROR bad command line format\r\n")
            return
        for key in keys:
            problem = self._key_problem(key.partition(b"/")[0])
            if problem is not None:
                await self._send(b"CLIENT_ERROR %s\r\n" % problem)
                return
        results = await self._run_jobs(keys)
        out = bytearray()
        for key, value in zip(keys, results, strict=True):
            if value is not None:
                out += b"VALUE %s 0 %d\r\n" % (key, len(value))
                out += value
                out += b"\r\n"
        out += b"END\r\n"
        await self._send(bytes(out))

    async def _run_jobs(self, keys: list[bytes]) -> list[bytes | None]:
        """Submit one foreground job per key, all at once; each one's result or None."""
        now = time.time()
        for key in keys:
            function, _, arg = key.partition(b"/")
            self.manager.submit_checked(self.conn, function, b"", arg,
                                        int(Priority.NORMAL), False, now)
        self.host.changed()
        results: list[bytes | None] = [None] * len(keys)
        bodies: dict[bytes, tuple[int, bytearray]] = {}
        created = 0
        waiting = len(keys)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._give_up_later if self.eof else self._watch)
            while waiting:
                ptype, args = await self.peer.next_packet()
                if ptype is PT.JOB_CREATED or ptype is PT.ERROR:
                    index = created
                    created += 1
                    if ptype is PT.JOB_CREATED:
                        bodies[args[0]] = (index, bytearray())
                    else:
                        self._miss(keys[index], args[1])
                        waiting -= 1
                    continue
                entry = bodies.get(args[0])
                if entry is None:
                    continue
                index, body = entry
                if ptype is PT.WORK_DATA:
                    body += args[1]
                elif ptype is PT.WORK_COMPLETE:
                    results[index] = bytes(body) + args[1]
                    waiting -= 1
                elif ptype is PT.WORK_FAIL or ptype is PT.WORK_EXCEPTION:
                    reason = args[1] if ptype is PT.WORK_EXCEPTION else b"WORK_FAIL"
                    self._miss(keys[index], reason)
                    waiting -= 1
            nursery.cancel_scope.cancel()
        return results

    def _miss(self, key: bytes, reason: bytes) -> None:
        log.info("connection %d: get %r is a miss: %s", self.cid, key,
                 reason[:256].decode("latin-1"))

    async def _give_up_later(self) -> None:
        """After the client's close, answers still wanted after --write-timeout are not
        waited for: the client counts as gone and its jobs lose it."""
        timeout = self.host.config.write_timeout
        if timeout > 0:
            await trio.sleep(timeout)
            log.info("connection %d: no answer within %.0f s of the client's close; "
                     "dropped", self.cid, timeout)
            self.peer.scope.cancel()

    async def _watch(self) -> None:
        """While jobs run, notice the client leaving (and keep what it pipelined)."""
        while len(self.buf) < _PIPELINE_LIMIT:
            try:
                data = await self.stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                # The client has finished sending: it may still read (a half-close, as
                # ``nc -N`` does), so it is answered, as memcached answers what it read,
                # if the answer comes within --write-timeout; past that it counts as
                # gone (a client that left for good must not hold its jobs, a task and
                # a descriptor for ever).
                self.eof = True
                log.info("connection %d: memcached client closed its side; answering "
                         "what it sent", self.cid)
                await self._give_up_later()
                return
            self.buf += data

    async def _stats(self, words: list[bytes]) -> None:
        if words:
            await self._send(b"CLIENT_ERROR only plain stats are supported\r\n")
            return
        manager = self.manager
        admin = self.host.admin
        if admin.acl is not None:
            refused = admin.refusal(self.conn, "stats")  # admin-read
            if refused is not None:
                await self._send(b"SERVER_ERROR " + refused[4:])
                return
        view = admin.view(self.conn)  # with tenants, the asker's own functions only
        functions = [fn for fn in manager.functions.values() if view.sees(fn.name)]
        now = time.time()
        stats = {
            b"pid": os.getpid(),
            b"uptime": int(now - self.started),
            b"time": int(now),
            b"version": self.host.config.version,
            b"curr_connections": len(manager.conns),
            b"functions": len(functions),
            b"jobs": len(manager.jobs) if view.prefix is None
            else sum(fn.total for fn in functions),
            b"jobs_queued": sum(fn.queued for fn in functions),
            b"jobs_running": sum(fn.running for fn in functions),
            b"workers": sum(1 for c in manager.conns.values()
                            if c.abilities and view.sees_conn(c)),
        }
        out = b"".join(b"STAT %s %s\r\n" % (name, str(value).encode())
                       for name, value in stats.items())
        await self._send(out + b"END\r\n")


class MemcachedFrontEnd(TaskFrontEnd):
    """``-r memcached``: the memcached text protocol on ``--memcached-port``."""

    name = "memcached"

    def __init__(self, host: Host, port: int) -> None:
        super().__init__(host, port)
        self.started = time.time()

    def open(self, stream: Stream, address: str,
             port: int) -> MemcachedConnection:
        return MemcachedConnection(self.host, stream, address, port, self.started)

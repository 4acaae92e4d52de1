"""Helpers shared by the tests/test_lib_* modules (no tests here).

Each test module defines its own ``server`` fixture on ``any_server`` (ours and the
reference); point it at ``reference_server`` to run a module against the reference alone.
"""

from __future__ import annotations

import functools
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from gearman_cli import AsyncAdmin, AsyncWorker
from protocol import NEED_DATA, Packet, Parser


def addr(srv: Any) -> str:
    """``127.0.0.1:PORT`` of a conftest RunningServer."""
    return f"127.0.0.1:{srv.port}"


@asynccontextmanager
async def running_worker(
    servers: str, functions: dict[str, Any], **options: Any
) -> AsyncIterator[AsyncWorker]:
    """An AsyncWorker running ``work_forever`` for the duration of the block."""
    worker = AsyncWorker(servers, **options)
    for name, callback in functions.items():
        worker.add_function(name, callback)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.work_forever)
        try:
            yield worker
        finally:
            nursery.cancel_scope.cancel()


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 5.0, interval: float = 0.02
) -> None:
    """Poll ``predicate`` until it is true (TooSlowError after ``timeout``)."""
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(interval)


async def wait_for_workers(servers: str, function: str, count: int = 1) -> None:
    """Wait until the server lists ``count`` workers for ``function`` (admin ``status``)."""

    async def ready() -> bool:
        async with AsyncAdmin(servers) as admin:
            for row in await admin.status():
                if row.function == function.encode() and row.workers >= count:
                    return True
        return False

    await wait_until(ready)


class FakeServer:
    """A scripted Gearman server on 127.0.0.1:0 for protocol-level tests.

    ``handler(peer)`` runs per connection; ``peer.packets()`` and ``peer.send()`` use the
    sans-IO parser.
    """

    def __init__(self, handler: Callable[[FakePeer], Awaitable[None]]) -> None:
        self.handler = handler
        self.port = 0
        self.connections = 0

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[FakeServer]:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, self._serve, 0, host="127.0.0.1")
            )
            self.port = listeners[0].socket.getsockname()[1]
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        peer = FakePeer(stream)
        try:
            await self.handler(peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, EOFError):
            pass
        finally:
            await stream.aclose()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class FakePeer:
    """One connection of a FakeServer."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.parser = Parser()
        self.received: list[Packet] = []

    async def next(self, timeout: float = math.inf) -> Packet:
        """The next packet from the client (EOFError when it closed)."""
        with trio.fail_after(timeout):
            while True:
                event = self.parser.next_event()
                if isinstance(event, Packet):
                    self.received.append(event)
                    return event
                if event is not NEED_DATA:
                    raise EOFError(repr(event))
                self.parser.receive_data(await self.stream.receive_some(65536))

    async def send(self, *packets: Packet | bytes) -> None:
        await self.stream.send_all(
            b"".join(p if isinstance(p, bytes) else p.encode() for p in packets)
        )

"""Issue 13: a library worker whose function raises logs the traceback on its own side
(the client only gets WORK_EXCEPTION's one line)."""

from __future__ import annotations

import logging

import pytest
import trio

from gearman_cli import AsyncWorker, Job
from protocol import Packet
from protocol import PacketType as PT
from tests.lib_support import FakePeer, FakeServer


def _boom(job: Job) -> bytes:
    raise ValueError("bad input " + job.data.decode())


async def test_raising_function_logs_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    got: list[Packet] = []

    async def handler(peer: FakePeer) -> None:
        while True:
            packet = await peer.next()
            if packet.type is PT.GRAB_JOB_UNIQ and not got:
                await peer.send(Packet.res(PT.JOB_ASSIGN_UNIQ, b"H:1", b"f", b"", b"x"))
            elif packet.type is PT.GRAB_JOB_UNIQ:
                await peer.send(Packet.res(PT.NO_JOB))
            elif packet.type is PT.WORK_EXCEPTION:
                got.append(packet)

    worker = AsyncWorker(reconnect_delay=0.01)
    worker.add_function("f", _boom, inline=True)
    with caplog.at_level(logging.ERROR, logger="gearman_cli.worker"), trio.fail_after(10):
        async with FakeServer(handler).serving() as fake, trio.open_nursery() as nursery:
            worker.add_servers(fake.address)
            nursery.start_soon(worker.work_forever)
            while not got:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert got[0].args == (b"H:1", b"ValueError: bad input x")
    records = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert records and records[0].exc_info is not None
    assert "ValueError" in caplog.text and "Traceback" in caplog.text

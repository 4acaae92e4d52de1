"""Issue 12 item 9: after a client failover, WORK_DATA already shown is not shown again.

Two scripted servers: the first one to get the job sends WORK_DATA ``ab`` and drops the
connection; the other runs the job from the start (``ab``, then ``cd``) and completes it.
The client must show ``ab`` once, then ``cd`` (async and blocking clients alike)."""

from __future__ import annotations

import trio

from gearman_cli import AsyncClient, Client, Task
from protocol import Packet
from protocol import PacketType as PT
from tests.lib_support import FakePeer, FakeServer


def _servers() -> tuple[FakeServer, FakeServer]:
    state = {"first": True}

    async def handler(peer: FakePeer) -> None:
        while True:
            packet = await peer.next()
            if packet.type is PT.OPTION_REQ:
                await peer.send(Packet.res(PT.OPTION_RES, packet.args[0]))
                continue
            assert packet.type is PT.SUBMIT_JOB, packet
            first, state["first"] = state["first"], False
            await peer.send(Packet.res(PT.JOB_CREATED, b"H:x:1"),
                            Packet.res(PT.WORK_DATA, b"H:x:1", b"ab"))
            if first:
                return  # the connection drops mid-job
            await peer.send(Packet.res(PT.WORK_DATA, b"H:x:1", b"cd"),
                            Packet.res(PT.WORK_COMPLETE, b"H:x:1", b"done"))

    return FakeServer(handler), FakeServer(handler)


async def test_async_client_failover_does_not_replay_work_data() -> None:
    one, two = _servers()
    shown: list[bytes] = []
    with trio.fail_after(10):
        async with one.serving(), two.serving(), AsyncClient(
                f"{one.address},{two.address}") as client:
            task = client.add_task("f", b"x")
            await client.run_tasks(on_data=lambda t: shown.append(t.data_chunks[-1]))
    assert task.result == b"done" and task.attempts == 2
    assert shown == [b"ab", b"cd"]
    assert task.data_chunks == [b"ab", b"cd"]


async def test_blocking_client_failover_does_not_replay_work_data() -> None:
    one, two = _servers()
    shown: list[bytes] = []
    with trio.fail_after(10):
        async with one.serving(), two.serving():
            client = Client(f"{one.address},{two.address}")
            task = Task("f", b"x")

            def run() -> None:
                client.run_tasks([task], on_data=lambda t: shown.append(t.data_chunks[-1]))

            await trio.to_thread.run_sync(run)
    assert task.result == b"done" and task.attempts == 2
    assert shown == [b"ab", b"cd"]


async def test_replay_cut_inside_a_chunk() -> None:
    """The rerun's chunks need not match the first run's: bytes are counted, not chunks."""
    task = Task("f", b"x")
    task._data(b"abc")
    task._reset()
    for chunk in (b"a", b"bcde", b"f"):
        task._data(chunk)
    assert task.data_chunks == [b"abc", b"de", b"f"]

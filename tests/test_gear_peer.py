"""server/gear_peer.py: the hard bound of a Gear peer's output drops a peer that does not
read its own replies, never one that other peers' batches filled (those senders are paused
instead, one batch each)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import trio

from protocol import PacketType as PT
from protocol import Parser
from server.gear_peer import Batch, GearPeer

LIMIT = 1024


@pytest.fixture
def peers() -> Iterator[tuple[GearPeer, GearPeer, Batch]]:
    batch = Batch()
    sockets = [socket.socketpair() for _ in range(2)]
    made = [GearPeer(trio.SocketStream(trio.socket.from_stdlib_socket(a)), LIMIT, [],
                     Parser(), batch) for a, _ in sockets]
    yield made[0], made[1], batch
    for pair in sockets:
        for s in pair:
            s.close()


def fill(peer: GearPeer, packets: int) -> None:
    for _ in range(packets):
        peer.deliver(PT.WORK_DATA, b"H:1", b"d" * 500)


def test_filled_by_another_peers_batch_it_is_over_not_dropped(
        peers: tuple[GearPeer, GearPeer, Batch]) -> None:
    client, worker, batch = peers
    batch.sender = worker
    fill(client, 20)  # 10 KiB, past the hard bound (4 KiB)
    assert len(client.out) > client.hard_limit
    assert client.over and not client.broken
    assert batch.overfull == [client]


@pytest.mark.parametrize("sender", ["itself", "no batch"])
def test_its_own_replies_or_output_outside_a_batch_past_the_hard_bound_drop_it(
        peers: tuple[GearPeer, GearPeer, Batch], sender: str) -> None:
    client, _, batch = peers
    batch.sender = client if sender == "itself" else None
    fill(client, 20)
    assert client.broken and not client.out

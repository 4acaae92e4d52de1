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


def test_what_others_brought_does_not_count_against_its_own_hard_bound(
        peers: tuple[GearPeer, GearPeer, Batch]) -> None:
    """A client filled by a worker past the hard bound: a timer's WORK_FAIL, or replies
    of its own, do not drop it until they alone pass the hard bound."""
    client, worker, batch = peers
    batch.sender = worker
    fill(client, 20)  # 2 packets under the bound, 18 lent past it
    assert client.lent == 18 * 516 and len(client.out) == 20 * 516
    batch.sender = None
    client.deliver(PT.WORK_FAIL, b"H:1")
    fill(client, 5)  # its own share: 2 * 516 + 15 + 5 * 516, under 4 KiB
    assert not client.broken
    fill(client, 3)
    assert client.broken


def test_draining_forgets_what_was_lent(peers: tuple[GearPeer, GearPeer, Batch]) -> None:
    client, worker, batch = peers
    drained: list[GearPeer] = []
    client.on_drained = drained.append
    batch.sender = worker
    fill(client, 20)
    client.out.clear()  # as if written
    client._check_drained()
    assert drained == [client] and client.lent == 0

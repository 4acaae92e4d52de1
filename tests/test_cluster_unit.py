"""The cluster's pieces that need no database: the relay record, the shared unique
column, option checks, and the manager's cluster hooks (docs/cluster.md). The cluster on
a live PostgreSQL is tested in ``test_cluster.py``."""

from __future__ import annotations

import hashlib

import pytest
from fake_peer import FakePeer

from protocol import PacketType
from server.cluster import ops
from server.cluster.db import (
    channel_name,
    decode_relay,
    encode_relay,
    relay_channel,
    unique_column,
)
from server.cluster.member import cluster_options
from server.cluster.relay import RelayPeer, valid
from server.manager import Job, Manager
from server.store import StoreError

PT = PacketType
NOW = 1_000_000.0


@pytest.mark.parametrize("args", [(), (b"",), (b"H:x:1", b"data\0with NULs" * 100),
                                  (b"h", b"1", b"2")])
def test_relay_records_round_trip(args: tuple[bytes, ...]) -> None:
    record = encode_relay(int(PT.WORK_DATA), args)
    assert decode_relay(record) == (int(PT.WORK_DATA), args)


@pytest.mark.parametrize("record", [b"", b"\x1c", b"\x1c\x01\x00\x00\x00\x05ab",
                                    encode_relay(28, (b"a",)) + b"extra"])
def test_bad_relay_records_are_refused(record: bytes) -> None:
    with pytest.raises(ValueError):
        decode_relay(record)


def test_only_results_with_their_argument_counts_are_relayed() -> None:
    assert valid(int(PT.WORK_COMPLETE), (b"h", b"r")) is PT.WORK_COMPLETE
    assert valid(int(PT.WORK_FAIL), (b"h",)) is PT.WORK_FAIL
    assert valid(int(PT.WORK_FAIL), (b"h", b"x")) is None
    assert valid(int(PT.JOB_ASSIGN), (b"h", b"f", b"d")) is None
    assert valid(255, ()) is None


def test_relay_peer_forwards_results_only() -> None:
    sent: list[tuple[str, PacketType, tuple[bytes, ...]]] = []
    peer = RelayPeer("origin", lambda o, t, a: sent.append((o, t, a)))
    peer.deliver(PT.NOOP)
    peer.deliver(PT.WORK_STATUS, b"h", b"1", b"2")
    peer.release(peer.hold(), PT.WORK_COMPLETE, b"h", b"r")
    assert sent == [("origin", PT.WORK_STATUS, (b"h", b"1", b"2")),
                    ("origin", PT.WORK_COMPLETE, (b"h", b"r"))]


def test_unique_column() -> None:
    assert unique_column(b"f", b"", b"data") is None
    assert unique_column(b"f", b"u", b"data") == b"u"
    assert unique_column(b"f", b"-", b"") is None
    assert unique_column(b"f", b"-", b"data") == b"\0" + hashlib.sha256(b"data").digest()


def test_channels_are_identifiers_per_cluster_and_member() -> None:
    a, b = channel_name("queue_cluster", "a"), channel_name("queue_cluster", "b")
    assert a != b and a.isidentifier() and len(a) <= 63
    r = relay_channel("queue_cluster", "a", "host:1:abcd")
    assert r.isidentifier() and len(r) <= 63
    assert r != relay_channel("queue_cluster", "a", "host:2:abcd")


@pytest.mark.parametrize(("options", "message"), [
    ({"cluster": ""}, "--cluster"),
    ({"cluster": "two words"}, "--cluster"),
    ({"cluster": "x" * 65}, "--cluster"),
    ({"cluster": "c", "cluster-lease": "0.5"}, "--cluster-lease"),
    ({"cluster": "c", "cluster-lease": "nan"}, "--cluster-lease"),
    ({"cluster": "c", "cluster-lease": "soon"}, "--cluster-lease"),
])
def test_cluster_options_are_checked(options: dict[str, str], message: str) -> None:
    with pytest.raises(StoreError, match=message):
        cluster_options(options)


def test_cluster_options_defaults() -> None:
    assert cluster_options({"cluster": "prod"}) == ("prod", 30.0)
    assert cluster_options({"cluster": "prod", "cluster-lease": "2"}) == ("prod", 2.0)


class Store:
    """A JobStore that records and lets the test commit."""

    def __init__(self) -> None:
        self.persisted: list[Job] = []
        self.forgotten: list[str] = []

    def persist(self, job: Job) -> None:
        self.persisted.append(job)

    def forget(self, key: str) -> None:
        self.forgotten.append(key)


def test_a_shared_submit_is_answered_with_the_clusters_handle_and_forgotten() -> None:
    m = Manager(handle_prefix="H:a")
    store = Store()
    m.attach_store(store)
    peer = FakePeer()
    conn = m.connect(peer)
    job = m.submit(conn, b"f", b"u", b"x", 1, True, NOW)
    assert job is not None and store.persisted == [job]
    ops.share(m, job)
    assert m.unique_index == {}  # the shared table coalesces from now on
    ops.handed_off(m, job, b"H:b:7", NOW)
    assert [(p.type, p.args) for p in peer.packets] == [(PT.JOB_CREATED, (b"H:b:7",))]
    assert m.jobs == {} and b"f" not in m.functions
    assert m.stats[b"f"].coalesced == 1
    assert store.forgotten == []  # the row is the cluster's now


def test_an_adopted_job_runs_under_its_cluster_handle_once() -> None:
    m = Manager(handle_prefix="H:c")
    store = Store()
    m.attach_store(store)
    worker = m.connect(FakePeer())
    m.handle_packet(worker, PT.CAN_DO, (b"f",), NOW)
    job = ops.adopt(m, b"H:a:1", b"f", b"u", b"data", 0, b"", "key-1", NOW)
    assert job is not None and job.background
    assert ops.adopt(m, b"H:a:1", b"f", b"u", b"data", 0, b"", "key-1", NOW) is None
    m.handle_packet(worker, PT.GRAB_JOB, (), NOW)
    assert worker.peer.packets[-1].args == (b"H:a:1", b"f", b"data")
    m.handle_packet(worker, PT.WORK_COMPLETE, (b"H:a:1", b""), NOW)
    assert store.forgotten == ["key-1"] and m.jobs == {}


def test_a_relayed_job_reaches_its_clients_through_the_stand_in() -> None:
    m = Manager(handle_prefix="H:a")
    client_peer = FakePeer()
    client = m.connect(client_peer)
    relayed: list[Job] = []
    m.relay_hook = lambda job, now: relayed.append(job)
    job = m.submit(client, b"f", b"", b"x", 1, False, NOW)
    assert job is not None and relayed == [job]
    stand_in = m.connect(FakePeer(), "cluster", 0, "cluster")
    ops.hand_over(m, job, stand_in, NOW)
    assert not job.queued and job.worker is stand_in and job.function.running == 1
    m.handle_packet(stand_in, PT.WORK_STATUS, (job.handle, b"1", b"2"), NOW)
    m.handle_packet(stand_in, PT.WORK_COMPLETE, (job.handle, b"r"), NOW)
    assert [p.type for p in client_peer.packets] == [PT.JOB_CREATED, PT.WORK_STATUS,
                                                     PT.WORK_COMPLETE]
    assert m.jobs == {}
    # A function with a worker here keeps its foreground jobs here.
    worker = m.connect(FakePeer())
    m.handle_packet(worker, PT.CAN_DO, (b"g",), NOW)
    assert m.submit(client, b"g", b"", b"x", 1, False, NOW) is not None
    assert len(relayed) == 1


def test_an_adopted_foreground_job_has_the_relay_as_its_client() -> None:
    m = Manager(handle_prefix="H:c")
    sent: list[tuple[str, PacketType, tuple[bytes, ...]]] = []
    relay = m.connect(RelayPeer("a", lambda o, t, a: sent.append((o, t, a))), "relay", 0,
                      "relay")
    worker = m.connect(FakePeer())
    m.handle_packet(worker, PT.CAN_DO, (b"f",), NOW)
    job = ops.adopt(m, b"H:a:3", b"f", b"", b"x", 1, b"", "k", NOW, relay)
    assert job is not None and not job.background and job.clients == (relay,)
    m.handle_packet(worker, PT.GRAB_JOB, (), NOW)
    m.handle_packet(worker, PT.WORK_DATA, (b"H:a:3", b"chunk"), NOW)
    m.handle_packet(worker, PT.WORK_FAIL, (b"H:a:3",), NOW)
    assert sent == [("a", PT.WORK_DATA, (b"H:a:3", b"chunk")),
                    ("a", PT.WORK_FAIL, (b"H:a:3",))]


def test_a_lost_claim_drops_a_queued_job_but_not_a_running_one() -> None:
    m = Manager(handle_prefix="H:c")
    store = Store()
    m.attach_store(store)
    queued = ops.adopt(m, b"H:a:1", b"f", b"", b"x", 1, b"", "k1", NOW)
    assert queued is not None
    ops.drop_claim(m, queued)
    assert m.jobs == {} and store.forgotten == []
    worker = m.connect(FakePeer())
    m.handle_packet(worker, PT.CAN_DO, (b"f",), NOW)
    running = ops.adopt(m, b"H:a:2", b"f", b"", b"x", 1, b"", "k2", NOW)
    assert running is not None
    m.handle_packet(worker, PT.GRAB_JOB, (), NOW)
    ops.drop_claim(m, running)
    assert m.jobs == {b"H:a:2": running} and running.store_key is None
    m.handle_packet(worker, PT.WORK_COMPLETE, (b"H:a:2", b""), NOW)
    assert m.jobs == {} and store.forgotten == []


def test_cluster_flags_on_the_command_line() -> None:
    from server.cli import parse_args
    inv = parse_args(["-q", "postgres", "--cluster", "prod", "--cluster-lease", "5"], {})
    assert dict(inv.config.queue_options) == {"cluster": "prod", "cluster-lease": "5"}
    lone = parse_args(["-q", "postgres", "--cluster-lease", "5"], {})
    assert "--cluster-lease has no effect without --cluster" in lone.notes


def _node(m: Manager) -> object:
    from server.cluster.db import ClusterDB, Listener, RelaySender
    from server.cluster.node import ClusterNode
    conninfo, table = "host=127.0.0.1 port=1", "t_cluster"  # never connected here
    return ClusterNode(m, ClusterDB(conninfo, table, "c", "me", 30.0),
                       Listener(conninfo, table, "c", "me"),
                       RelaySender(conninfo, table, "c"), 30.0, lambda: None)


def test_a_claimed_row_whose_handle_is_held_here() -> None:
    from server.cluster.node import ClusterNode
    m = Manager(handle_prefix="H:a")
    store = Store()
    m.attach_store(store)
    node = _node(m)
    assert isinstance(node, ClusterNode)
    client = m.connect(FakePeer())
    # Our own submit, claimed before its hand-off ran: given back.
    pending = m.submit(client, b"f", b"", b"x", 1, True, NOW)
    assert pending is not None and not pending.stored
    assert not node._known(pending.handle, pending.store_key or "", NOW)
    # Our own relayed foreground job, and now a worker here: it runs here.
    relayed = m.submit(client, b"g", b"", b"y", 1, False, NOW)
    assert relayed is not None
    ops.hand_over(m, relayed, node.stand_in, NOW)
    assert node._known(relayed.handle, "row-g", NOW)
    assert relayed.queued and relayed.store_key == "row-g" and node.held["row-g"] is relayed
    assert relayed.function.running == 0 and not node.stand_in.assigned
    # A job running here whose claim was lost, claimed again: ours again.
    worker = m.connect(FakePeer())
    m.handle_packet(worker, PT.CAN_DO, (b"h",), NOW)
    job = ops.adopt(m, b"H:b:1", b"h", b"", b"z", 1, b"", "row-h", NOW)
    assert job is not None
    m.handle_packet(worker, PT.GRAB_JOB, (), NOW)
    ops.drop_claim(m, job)
    assert node._known(b"H:b:1", "row-h", NOW) and job.store_key == "row-h"
    assert node._known(b"H:b:1", "row-h", NOW)  # held: nothing more to do
    assert not node._known(b"H:b:1", "another-row", NOW)

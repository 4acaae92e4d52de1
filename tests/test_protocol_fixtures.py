"""Byte streams captured from the reference C tools parse to the expected packets.

The fixtures (tests/fixtures/, see its README) were recorded by
benchmarks/capture_reference.py through a loopback proxy; the reference tools are not
needed at test time. libgearman sends a time-based UUID as the unique and gearmand
names handles after its host, so those are checked by shape and by consistency
between the two ends of a job.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from protocol import (
    NEED_DATA,
    AdminCommand,
    ConnectionClosed,
    Magic,
    Packet,
    PacketType,
    Parser,
    admin,
)

FIXTURES = Path(__file__).parent / "fixtures"
UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
HANDLE = re.compile(rb"H:[^:\0]+:[0-9]+")

T = PacketType


class Var:
    """A placeholder argument: matches ``pattern`` and must be the same everywhere."""

    def __init__(self, name: str, pattern: re.Pattern[bytes]) -> None:
        self.name = name
        self.pattern = pattern


Arg = bytes | Var
Expected = list[tuple[PacketType, tuple[Arg, ...]]]

H1, U1 = Var("handle", HANDLE), Var("unique", UUID)

#: Per fixture stem: the packets the tool sent (c2s), then those it received (s2c).
SCENARIOS: dict[str, tuple[Expected, Expected]] = {
    "fg_worker": (
        [(T.CAN_DO, (b"x",)), (T.GRAB_JOB_ALL, ()), (T.PRE_SLEEP, ()), (T.GRAB_JOB_ALL, ()),
         (T.WORK_COMPLETE, (H1, b""))],
        [(T.NO_JOB, ()), (T.NOOP, ()), (T.JOB_ASSIGN_UNIQ, (H1, b"x", U1, b"data"))],
    ),
    "fg_client": (
        [(T.SUBMIT_JOB, (b"x", U1, b"data"))],
        [(T.JOB_CREATED, (H1,)), (T.WORK_COMPLETE, (H1, b""))],
    ),
    "bg_client": (
        [(T.SUBMIT_JOB_BG, (b"bg", U1, b"payload"))],
        [(T.JOB_CREATED, (H1,))],
    ),
    "fail_worker": (
        [(T.CAN_DO, (b"fail",)), (T.GRAB_JOB_ALL, ()), (T.PRE_SLEEP, ()),
         (T.GRAB_JOB_ALL, ()), (T.WORK_DATA, (H1, b"oops")), (T.WORK_FAIL, (H1,))],
        [(T.NO_JOB, ()), (T.NOOP, ()), (T.JOB_ASSIGN_UNIQ, (H1, b"fail", U1, b"oops"))],
    ),
    "fail_client": (
        [(T.SUBMIT_JOB, (b"fail", U1, b"oops"))],
        [(T.JOB_CREATED, (H1,)), (T.WORK_DATA, (H1, b"oops")), (T.WORK_FAIL, (H1,))],
    ),
}


def read(stem: str, direction: str) -> bytes:
    return (FIXTURES / f"{stem}.{direction}.bin").read_bytes()


def parse(data: bytes, *, bytewise: bool = False) -> list[object]:
    parser = Parser()
    events: list[object] = []
    chunks = [data[i:i + 1] for i in range(len(data))] if bytewise else [data]
    for chunk in [*chunks, b""]:
        parser.receive_data(chunk)
        while (event := parser.next_event()) is not NEED_DATA:
            events.append(event)
            if isinstance(event, ConnectionClosed):
                break
    assert events[-1] == ConnectionClosed()
    return events[:-1]


def packets_of(stem: str, direction: str) -> list[Packet]:
    events = parse(read(stem, direction))
    assert all(isinstance(e, Packet) for e in events)
    return [e for e in events if isinstance(e, Packet)]


def match(packets: list[object], expected: Expected, magic: Magic,
          bound: dict[str, bytes]) -> None:
    assert [p.type for p in packets if isinstance(p, Packet)] == [t for t, _ in expected]
    for packet, (ptype, want) in zip(packets, expected, strict=True):
        assert isinstance(packet, Packet)
        assert packet.magic is magic
        assert packet.type is ptype
        assert len(packet.args) == len(want)
        for got, arg in zip(packet.args, want, strict=True):
            if isinstance(arg, Var):
                assert arg.pattern.fullmatch(got), (arg.name, got)
                assert bound.setdefault(arg.name, got) == got, (arg.name, got)
            else:
                assert got == arg


def test_every_fixture_is_covered() -> None:
    stems = {p.name.split(".")[0] for p in FIXTURES.glob("*.bin")}
    assert stems == {*SCENARIOS, "admin_status"}
    for stem in stems:
        assert (FIXTURES / f"{stem}.c2s.bin").is_file()
        assert (FIXTURES / f"{stem}.s2c.bin").is_file()


@pytest.mark.parametrize("stem", list(SCENARIOS))
def test_fixture_packets(stem: str) -> None:
    c2s_expected, s2c_expected = SCENARIOS[stem]
    bound: dict[str, bytes] = {}
    for direction, expected, magic in (("c2s", c2s_expected, Magic.REQ),
                                       ("s2c", s2c_expected, Magic.RES)):
        data = read(stem, direction)
        packets = parse(data)
        match(packets, expected, magic, bound)
        # Re-encoding gives the captured bytes, and byte-at-a-time parsing agrees.
        assert b"".join(p.encode() for p in packets if isinstance(p, Packet)) == data
        assert parse(data, bytewise=True) == packets


@pytest.mark.parametrize("scenario", ["fg", "fail"])
def test_both_ends_of_a_job_agree(scenario: str) -> None:
    """The worker is assigned the handle and unique the client submitted and was given."""
    (submit,) = packets_of(f"{scenario}_client", "c2s")
    created = packets_of(f"{scenario}_client", "s2c")[0]
    assign = packets_of(f"{scenario}_worker", "s2c")[-1]
    assert assign.type is T.JOB_ASSIGN_UNIQ
    assert assign.arg("handle") == created.arg("handle")
    assert assign.arg("unique") == submit.arg("unique")
    assert assign.arg("function") == submit.arg("function")
    assert assign.arg("data") == submit.arg("data")


def test_handles_count_up_across_the_capture() -> None:
    numbers = [int(packets_of(stem, "s2c")[0].arg("handle").rsplit(b":", 1)[1])
               for stem in ("fg_client", "bg_client", "fail_client")]
    assert numbers == sorted(numbers) and len(set(numbers)) == 3


def test_empty_work_complete_ends_in_a_nul() -> None:
    """A worker with no command completes with empty data: the payload is 'handle\\0'."""
    data = read("fg_client", "s2c")
    handle = packets_of("fg_client", "s2c")[0].arg("handle")
    assert data.endswith(handle + b"\0")


def test_admin_status() -> None:
    request = read("admin_status", "c2s")
    assert request == b"status\r\n"  # gearadmin ends its lines with CRLF
    assert parse(request) == [AdminCommand(b"status", (b"status",))]
    # Our table formatter gives the reference's reply byte for byte (hash order kept).
    reply = read("admin_status", "s2c")
    assert reply == admin.table([(b"bg", 1, 0, 0), (b"x", 0, 0, 0)])

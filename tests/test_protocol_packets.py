"""Packets: the type table, arity and NUL rules, encoding, and the SUBMIT family table."""

from __future__ import annotations

import struct

import pytest

from protocol import (
    ARITY,
    HEADER_SIZE,
    PACKET_SPECS,
    SUBMIT_KINDS,
    SUBMIT_TYPE_FOR,
    LocalProtocolError,
    Magic,
    Packet,
    PacketType,
    Parser,
    Priority,
    SubmitKind,
    encode,
    encode_req,
    encode_res,
)

#: Argument count per type, written out from reference.md §1.2 ("parse" column:
#: N NUL-terminated args + a tail is N + 1 arguments; "0" is no arguments).
EXPECTED_ARITY: dict[int, int] = {
    1: 1, 2: 1, 3: 0, 4: 0, 5: 0, 6: 0, 7: 3, 8: 1, 9: 0, 10: 0,
    11: 3, 12: 3, 13: 2, 14: 1, 15: 1, 16: 1, 17: 1, 18: 3, 19: 2, 20: 5,
    21: 3, 22: 1, 23: 2, 24: 0, 25: 2, 26: 1, 27: 1, 28: 2, 29: 2, 30: 0,
    31: 4, 32: 3, 33: 3, 34: 3, 35: 8, 36: 4, 37: 5, 38: 5, 39: 0, 40: 5,
    41: 1, 42: 6,
}  # fmt: skip

ALL_TYPES = list(PacketType)
MAGICS = [Magic.REQ, Magic.RES]


def sample_args(ptype: PacketType) -> tuple[bytes, ...]:
    """Distinct arguments for ``ptype``; the last one carries NULs and high bytes."""
    n = EXPECTED_ARITY[int(ptype)]
    if n == 0:
        return ()
    return (*(f"a{i}-{ptype.name}".encode() for i in range(n - 1)), b"\0tail\0\xff\0")


def parse_all(data: bytes) -> list[object]:
    parser = Parser()
    parser.receive_data(data)
    return list(parser.events())


def test_every_wire_number_is_a_type() -> None:
    assert sorted(int(t) for t in PacketType) == list(range(1, 43))
    assert PacketType.CAN_DO == 1
    assert PacketType.SUBMIT_JOB == 7
    assert PacketType.JOB_ASSIGN_UNIQ == 31
    assert PacketType.STATUS_RES_UNIQUE == 42


@pytest.mark.parametrize("ptype", ALL_TYPES, ids=lambda t: t.name)
def test_arity_table_matches_the_spec(ptype: PacketType) -> None:
    assert len(PACKET_SPECS[ptype].args) == EXPECTED_ARITY[int(ptype)]
    assert ARITY[int(ptype)] == EXPECTED_ARITY[int(ptype)]


def test_flat_arity_has_no_type_zero() -> None:
    assert ARITY[0] is None
    assert len(ARITY) == 43


@pytest.mark.parametrize("magic", MAGICS, ids=lambda m: m.name)
@pytest.mark.parametrize("ptype", ALL_TYPES, ids=lambda t: t.name)
def test_round_trip(ptype: PacketType, magic: Magic) -> None:
    args = sample_args(ptype)
    packet = Packet(ptype, args, magic)
    wire = packet.encode()
    magic_raw, number, size = struct.unpack(">4sII", wire[:HEADER_SIZE])
    assert magic_raw == magic.value
    assert number == int(ptype)
    assert size == len(wire) - HEADER_SIZE == len(b"\0".join(args))
    assert parse_all(wire) == [packet]
    (parsed,) = parse_all(wire)
    assert isinstance(parsed, Packet)
    assert parsed.type is ptype
    assert parsed.magic is magic
    assert parsed.args == args
    # The flat encoders agree byte for byte.
    assert encode(ptype, args, magic.value) == wire
    flat = encode_req if magic is Magic.REQ else encode_res
    assert flat(ptype, *args) == wire


@pytest.mark.parametrize("ptype", ALL_TYPES, ids=lambda t: t.name)
def test_named_arguments(ptype: PacketType) -> None:
    args = sample_args(ptype)
    packet = Packet(ptype, args)
    for name, value in zip(PACKET_SPECS[ptype].args, args, strict=True):
        assert packet.arg(name) == value


def test_req_and_res_constructors() -> None:
    assert Packet.req(PacketType.CAN_DO, b"f") == Packet(PacketType.CAN_DO, (b"f",), Magic.REQ)
    assert Packet.res(PacketType.NOOP).magic is Magic.RES
    assert Packet(PacketType.GRAB_JOB).magic is Magic.REQ


def test_packet_accepts_numbers_lists_and_bytearrays() -> None:
    packet = Packet(13, [bytearray(b"H:x:1"), memoryview(b"done")], Magic.RES)
    assert packet.type is PacketType.WORK_COMPLETE
    assert packet.args == (b"H:x:1", b"done")
    assert all(type(a) is bytes for a in packet.args)
    assert hash(packet) == hash(Packet.res(PacketType.WORK_COMPLETE, b"H:x:1", b"done"))


def test_packets_are_immutable() -> None:
    packet = Packet.req(PacketType.CAN_DO, b"f")
    with pytest.raises(AttributeError):
        packet.type = PacketType.CANT_DO  # type: ignore[misc]
    with pytest.raises(AttributeError):
        packet.extra = 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("ptype", ALL_TYPES, ids=lambda t: t.name)
def test_wrong_arity_is_refused(ptype: PacketType) -> None:
    n = EXPECTED_ARITY[int(ptype)]
    too_many = (b"x",) * (n + 1)
    with pytest.raises(LocalProtocolError):
        Packet(ptype, too_many)
    with pytest.raises(LocalProtocolError):
        encode(ptype, too_many)
    with pytest.raises(LocalProtocolError):
        encode_res(ptype, *too_many)
    if n > 0:
        too_few = (b"x",) * (n - 1)
        with pytest.raises(LocalProtocolError):
            Packet(ptype, too_few)
        with pytest.raises(LocalProtocolError):
            encode_req(ptype, *too_few)


@pytest.mark.parametrize(
    "ptype", [t for t in ALL_TYPES if EXPECTED_ARITY[int(t)] >= 2], ids=lambda t: t.name
)
def test_nul_only_in_the_last_argument(ptype: PacketType) -> None:
    n = EXPECTED_ARITY[int(ptype)]
    for bad in range(n - 1):
        args = [b"ok"] * n
        args[bad] = b"b\0d"
        with pytest.raises(LocalProtocolError, match="NUL"):
            Packet(ptype, args)
        with pytest.raises(LocalProtocolError):
            encode(ptype, args)
        with pytest.raises(LocalProtocolError):
            encode_req(ptype, *args)
    args = [b"ok"] * (n - 1) + [b"\0"]
    assert Packet(ptype, args).args[-1] == b"\0"


@pytest.mark.parametrize("number", [0, 43, 99, -1, 2**32])
def test_unknown_type_is_refused(number: int) -> None:
    with pytest.raises(LocalProtocolError):
        Packet(number, ())
    with pytest.raises(LocalProtocolError):
        encode(number, ())


def test_non_bytes_argument_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        Packet(PacketType.CAN_DO, ("reverse",))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        Packet(PacketType.WORK_STATUS, (b"H:x:1", 1, b"2"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "tail", [b"", b"\0", b"\0\0\0", b"a\0b\0c", b"ends\0", bytes(range(256))]
)
def test_nul_bearing_last_argument_survives(tail: bytes) -> None:
    for ptype in (PacketType.SUBMIT_JOB, PacketType.ECHO_REQ, PacketType.JOB_ASSIGN_ALL):
        n = EXPECTED_ARITY[int(ptype)]
        packet = Packet(ptype, (*(b"f%d" % i for i in range(n - 1)), tail))
        assert parse_all(packet.encode()) == [packet]


def test_empty_arguments_round_trip() -> None:
    packet = Packet.req(PacketType.SUBMIT_JOB_EPOCH, b"", b"", b"", b"")
    wire = packet.encode()
    assert wire[HEADER_SIZE:] == b"\0\0\0"
    assert parse_all(wire) == [packet]


def test_reference_byte_example() -> None:
    """reference.md §1.1: CAN_DO reverse; SUBMIT_JOB reverse/''/test; JOB_CREATED H:lap:1."""
    can_do = bytes.fromhex("00524551 00000001 00000007 72657665727365")
    assert Packet.req(PacketType.CAN_DO, b"reverse").encode() == can_do
    assert encode_req(PacketType.CAN_DO, b"reverse") == can_do

    submit = b"\0REQ" + b"\0\0\0\x07" + b"\0\0\0\x0d" + b"reverse\0\0test"
    assert Packet.req(PacketType.SUBMIT_JOB, b"reverse", b"", b"test").encode() == submit
    assert encode_req(PacketType.SUBMIT_JOB, b"reverse", b"", b"test") == submit

    created = b"\0RES" + b"\0\0\0\x08" + b"\0\0\0\x07" + b"H:lap:1"
    assert Packet.res(PacketType.JOB_CREATED, b"H:lap:1").encode() == created
    assert encode_res(PacketType.JOB_CREATED, b"H:lap:1") == created

    assert parse_all(can_do + submit + created) == [
        Packet.req(PacketType.CAN_DO, b"reverse"),
        Packet.req(PacketType.SUBMIT_JOB, b"reverse", b"", b"test"),
        Packet.res(PacketType.JOB_CREATED, b"H:lap:1"),
    ]


def test_default_encode_magic_is_res() -> None:
    assert encode(PacketType.NOOP, ()) == b"\0RES\0\0\0\x06\0\0\0\0"


H, N, L = Priority.HIGH, Priority.NORMAL, Priority.LOW
#: (priority, background, epoch, sched, reduce) per submit type, from spec §1.3.
EXPECTED_SUBMIT: dict[PacketType, tuple[Priority, bool, bool, bool, bool]] = {
    PacketType.SUBMIT_JOB: (N, False, False, False, False),
    PacketType.SUBMIT_JOB_BG: (N, True, False, False, False),
    PacketType.SUBMIT_JOB_HIGH: (H, False, False, False, False),
    PacketType.SUBMIT_JOB_HIGH_BG: (H, True, False, False, False),
    PacketType.SUBMIT_JOB_LOW: (L, False, False, False, False),
    PacketType.SUBMIT_JOB_LOW_BG: (L, True, False, False, False),
    PacketType.SUBMIT_JOB_EPOCH: (N, True, True, False, False),
    PacketType.SUBMIT_JOB_SCHED: (N, True, False, True, False),
    PacketType.SUBMIT_REDUCE_JOB: (N, False, False, False, True),
    PacketType.SUBMIT_REDUCE_JOB_BACKGROUND: (N, True, False, False, True),
}


def test_submit_kinds_cover_exactly_the_submit_types() -> None:
    submit_types = {t for t in PacketType if t.name.startswith("SUBMIT_")}
    assert len(submit_types) == 10
    assert set(SUBMIT_KINDS) == submit_types == set(EXPECTED_SUBMIT)


@pytest.mark.parametrize("ptype", list(EXPECTED_SUBMIT), ids=lambda t: t.name)
def test_submit_kind(ptype: PacketType) -> None:
    kind = SUBMIT_KINDS[ptype]
    assert isinstance(kind, SubmitKind)
    assert tuple(kind) == EXPECTED_SUBMIT[ptype]
    # Every submit packet starts with function and unique.
    assert PACKET_SPECS[ptype].args[:2] == ("function", "unique")
    assert PACKET_SPECS[ptype].args[-1] == "data"


def test_submit_type_for_is_the_inverse_of_the_plain_six() -> None:
    assert SUBMIT_TYPE_FOR == {
        (N, False): PacketType.SUBMIT_JOB,
        (N, True): PacketType.SUBMIT_JOB_BG,
        (H, False): PacketType.SUBMIT_JOB_HIGH,
        (H, True): PacketType.SUBMIT_JOB_HIGH_BG,
        (L, False): PacketType.SUBMIT_JOB_LOW,
        (L, True): PacketType.SUBMIT_JOB_LOW_BG,
    }


def test_priority_numbers() -> None:
    assert (int(H), int(N), int(L)) == (0, 1, 2)

"""The Packet value and its encoding (spec §1.1). Pure functions, no I/O."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

from ._errors import LocalProtocolError
from ._types import ARITY, PACKET_SPECS, Magic, PacketType

_HEADER: Final = struct.Struct(">4sII")
HEADER_SIZE: Final = 12


class Packet(tuple[Magic, PacketType, tuple[bytes, ...]]):
    """One binary packet: ``magic``, ``type`` and ``args`` (bytes, last may hold NUL).

    A tuple subclass: immutable, slotted, cheap to build. The constructor checks
    the arity of the type and that only the last argument contains NUL.
    """

    __slots__ = ()

    def __new__(
        cls,
        type: PacketType | int,
        args: tuple[bytes, ...] | list[bytes] = (),
        magic: Magic = Magic.REQ,
    ) -> Packet:
        try:
            ptype = PacketType(type)
        except ValueError:
            raise LocalProtocolError(f"unknown packet type {type!r}") from None
        args = tuple(args)
        want = len(PACKET_SPECS[ptype].args)
        if len(args) != want:
            raise LocalProtocolError(
                f"{ptype.name} takes {want} argument(s), got {len(args)}"
            )
        for arg in args:
            if not isinstance(arg, (bytes, bytearray, memoryview)):
                raise LocalProtocolError(f"{ptype.name} arguments must be bytes, got {arg!r}")
        for arg in args[:-1]:
            if b"\0" in arg:
                raise LocalProtocolError(
                    f"{ptype.name}: only the last argument may contain NUL"
                )
        return tuple.__new__(cls, (Magic(magic), ptype, tuple(bytes(a) for a in args)))

    @classmethod
    def res(cls, type: PacketType | int, *args: bytes) -> Packet:
        """A server-to-peer packet."""
        return cls(type, args, Magic.RES)

    @classmethod
    def req(cls, type: PacketType | int, *args: bytes) -> Packet:
        """A peer-to-server packet."""
        return cls(type, args, Magic.REQ)

    @property
    def magic(self) -> Magic:
        return self[0]

    @property
    def type(self) -> PacketType:
        return self[1]

    @property
    def args(self) -> tuple[bytes, ...]:
        return self[2]

    def arg(self, name: str) -> bytes:
        """The argument called ``name`` in the spec's table."""
        return self[2][PACKET_SPECS[self[1]].args.index(name)]

    def encode(self) -> bytes:
        """The packet's bytes on the wire."""
        payload = b"\0".join(self[2])
        return _HEADER.pack(self[0].value, self[1], len(payload)) + payload

    def __repr__(self) -> str:
        return f"Packet({self[1].name}, {self[2]!r}, {self[0].name})"


def encode(ptype: int, args: tuple[bytes, ...] | list[bytes], magic: bytes = b"\0RES") -> bytes:
    """Encode a packet straight to bytes, without building a Packet (hot path).

    Checks arity and NUL placement, like the Packet constructor.
    """
    want = ARITY[ptype] if 0 <= ptype < len(ARITY) else None
    if want is None or len(args) != want:
        raise LocalProtocolError(f"bad arity {len(args)} for packet type {ptype}")
    for arg in args[:-1]:
        if b"\0" in arg:
            raise LocalProtocolError("only the last argument may contain NUL")
    payload = b"\0".join(args)
    return _HEADER.pack(magic, ptype, len(payload)) + payload


def res_encoder(ptype: PacketType) -> Callable[..., bytes]:
    """A fast encoder of one server-to-peer packet type, for hot paths.

    It does not check arity or NUL placement: the caller guarantees them (the checked
    ``encode_res`` is for everything else).
    """
    prefix = b"\0RES" + struct.pack(">I", ptype)
    pack = struct.Struct(">I").pack
    join = b"\0".join

    def encode_one(*args: bytes) -> bytes:
        payload = join(args)
        return prefix + pack(len(payload)) + payload

    return encode_one


def encode_res(ptype: int, *args: bytes) -> bytes:
    """Encode a server-to-peer packet (``\\0RES``)."""
    return encode(ptype, args, b"\0RES")


def encode_req(ptype: int, *args: bytes) -> bytes:
    """Encode a peer-to-server packet (``\\0REQ``)."""
    return encode(ptype, args, b"\0REQ")


def req_encoder(
    ptype: PacketType | int, *, checked: bool = False, fixed: tuple[bytes, ...] = ()
) -> Callable[..., bytes]:
    """An encoder of one peer-to-server packet type (``\\0REQ``), header prebuilt.

    The fast form (default) does not check arity or NUL placement: the caller guarantees
    them, as for ``res_encoder``. ``checked=True`` gives the same bytes with the checks of
    ``encode_req`` (for input from outside: names, handles, unique keys). ``fixed`` are
    leading arguments shared by every packet (say function and unique of a batch of
    submits): encoded once, and the encoder takes only the rest.
    """
    try:
        number = PacketType(ptype)
    except ValueError:
        raise LocalProtocolError(f"unknown packet type {ptype!r}") from None
    prefix = b"\0REQ" + struct.pack(">I", number)
    pack = struct.Struct(">I").pack
    join = b"\0".join
    arity = ARITY[number]
    if arity is None:
        raise LocalProtocolError(f"{number.name} is not a request")
    if fixed:
        checked_all = req_encoder(number, checked=True)
        if checked:
            checked_all(*fixed, *([b""] * (arity - len(fixed))))
        mid = join(fixed) + b"\0"

        def encode_rest(*rest: bytes) -> bytes:
            payload = mid + join(rest)
            return prefix + pack(len(payload)) + payload

        def encode_last(last: bytes) -> bytes:
            payload = mid + last
            return prefix + pack(len(payload)) + payload

        def encode_rest_checked(*rest: bytes) -> bytes:
            return checked_all(*fixed, *rest)

        if checked:
            return encode_rest_checked
        return encode_last if arity - len(fixed) == 1 else encode_rest
    if checked:
        want = arity
        name = number.name

        def encode_checked(*args: bytes) -> bytes:
            if len(args) != want:
                raise LocalProtocolError(f"{name} takes {want} argument(s), got {len(args)}")
            for arg in args[:-1]:
                if b"\0" in arg:
                    raise LocalProtocolError(f"{name}: only the last argument may contain NUL")
            payload = join(args)
            return prefix + pack(len(payload)) + payload

        return encode_checked

    def encode_fast(*args: bytes) -> bytes:
        payload = join(args)
        return prefix + pack(len(payload)) + payload

    return encode_fast

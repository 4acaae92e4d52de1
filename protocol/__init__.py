"""The Gearman wire format, sans-IO: bytes to events and events to bytes.

No sockets, no trio, no clock, no logging. See docs/differences.md for where the wire
behaviour differs from the reference.
"""

from __future__ import annotations

from . import _admin as admin

# First: it installs the finder of the optional compiled build before any module of it.
from . import _native  # noqa: F401
from ._admin import AdminCommand, parse_admin_line
from ._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from ._packet import (
    HEADER_SIZE,
    Packet,
    encode,
    encode_req,
    encode_res,
    req_encoder,
    res_encoder,
)
from ._parser import (
    DEFAULT_MAX_LINE_LENGTH,
    DEFAULT_MAX_PACKET_SIZE,
    NEED_DATA,
    ConnectionClosed,
    Event,
    Parser,
)
from ._types import (
    ARITY,
    PACKET_SPECS,
    SUBMIT_KINDS,
    SUBMIT_TYPE_FOR,
    Magic,
    PacketSpec,
    PacketType,
    Priority,
    SubmitKind,
)

__all__ = [
    "ARITY",
    "DEFAULT_MAX_LINE_LENGTH",
    "DEFAULT_MAX_PACKET_SIZE",
    "HEADER_SIZE",
    "NEED_DATA",
    "PACKET_SPECS",
    "SUBMIT_KINDS",
    "SUBMIT_TYPE_FOR",
    "AdminCommand",
    "ConnectionClosed",
    "Event",
    "LocalProtocolError",
    "Magic",
    "Packet",
    "PacketSpec",
    "PacketType",
    "Parser",
    "Priority",
    "ProtocolError",
    "RemoteProtocolError",
    "SubmitKind",
    "admin",
    "encode",
    "encode_req",
    "encode_res",
    "parse_admin_line",
    "req_encoder",
    "res_encoder",
]

__version__ = "0.1.0"

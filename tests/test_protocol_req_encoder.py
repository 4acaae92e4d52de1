"""protocol.req_encoder: the fast and checked request encoders give encode_req's bytes;
the checked form (and the fixed-argument form) refuses what encode_req refuses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import (
    ARITY,
    LocalProtocolError,
    PacketType,
    Parser,
    encode_req,
    req_encoder,
)

REQUESTS = [t for t in PacketType if ARITY[t] is not None]
no_nul = st.binary(max_size=20).filter(lambda b: b"\0" not in b)


@given(st.sampled_from(REQUESTS), st.data())
def test_every_form_gives_encode_reqs_bytes(ptype: PacketType, data: st.DataObject) -> None:
    arity = ARITY[ptype]
    assert arity is not None
    args = [data.draw(no_nul) for _ in range(max(arity - 1, 0))]
    if arity:
        args.append(data.draw(st.binary(max_size=40)))
    want = encode_req(ptype, *args)
    assert req_encoder(ptype)(*args) == want
    assert req_encoder(ptype, checked=True)(*args) == want
    if arity >= 2:
        cut = data.draw(st.integers(1, arity - 1))
        assert req_encoder(ptype, fixed=tuple(args[:cut]))(*args[cut:]) == want
        assert req_encoder(ptype, fixed=tuple(args[:cut]), checked=True)(*args[cut:]) == want
    parser = Parser()
    parser.receive_data(want)
    (packet,) = parser.events()
    assert packet.type is ptype and list(packet.args) == args


def test_checked_form_refuses_what_encode_req_refuses() -> None:
    submit = req_encoder(PacketType.SUBMIT_JOB, checked=True)
    with pytest.raises(LocalProtocolError, match="takes 3"):
        submit(b"f", b"")
    with pytest.raises(LocalProtocolError, match="only the last"):
        submit(b"f\0", b"", b"x")
    with pytest.raises(LocalProtocolError, match="only the last"):
        req_encoder(PacketType.SUBMIT_JOB_BG, fixed=(b"f", b"u\0"), checked=True)
    with pytest.raises(LocalProtocolError):
        req_encoder(99)

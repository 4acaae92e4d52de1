"""The incremental parser: framing, chunking, limits, EOF, admin lines, and garbage."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    ARITY,
    DEFAULT_MAX_PACKET_SIZE,
    NEED_DATA,
    AdminCommand,
    ConnectionClosed,
    Magic,
    Packet,
    PacketType,
    Parser,
    RemoteProtocolError,
    encode_req,
)

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def header(ptype: int, size: int, magic: bytes = b"\0REQ") -> bytes:
    return magic + struct.pack(">II", ptype, size)


def drain(parser: Parser, limit: int) -> list[object]:
    """Every event ready now; fails instead of looping more than ``limit`` times."""
    out: list[object] = []
    for _ in range(limit + 1):
        event = parser.next_event()
        if event is NEED_DATA:
            return out
        out.append(event)
        if isinstance(event, ConnectionClosed):
            return out
    raise AssertionError(f"parser produced more than {limit} events from {limit} bytes")


def feed(data: bytes, cuts: list[int] | None = None, *, eof: bool = True,
         parser: Parser | None = None) -> list[object]:
    """Feed ``data`` split at ``cuts``, draining after each chunk; then EOF."""
    parser = parser or Parser()
    bounds = sorted({0, len(data), *(c for c in (cuts or []) if 0 <= c <= len(data))})
    out: list[object] = []
    for start, end in itertools.pairwise(bounds):
        parser.receive_data(data[start:end])
        out += drain(parser, len(data) + 1)
    if eof:
        parser.receive_data(b"")
        out += drain(parser, len(data) + 1)
    return out


def expect_error(data: bytes, parser: Parser | None = None) -> RemoteProtocolError:
    parser = parser or Parser()
    parser.receive_data(data)
    with pytest.raises(RemoteProtocolError) as info:
        drain(parser, len(data) + 1)
    # Once broken, the parser stays broken.
    with pytest.raises(RemoteProtocolError) as again:
        parser.next_event()
    assert again.value is info.value
    return info.value


# -- strategies ------------------------------------------------------------------

no_nul = st.binary(max_size=12).filter(lambda b: b"\0" not in b)


@st.composite
def packets(draw: st.DrawFn) -> Packet:
    ptype = draw(st.sampled_from(list(PacketType)))
    n = ARITY[ptype]
    assert n is not None
    args = [draw(no_nul) for _ in range(max(n - 1, 0))]
    if n:
        args.append(draw(st.binary(max_size=40)))
    return Packet(ptype, args, draw(st.sampled_from([Magic.REQ, Magic.RES])))


# Admin text: never starts with NUL (that would be binary); no line breaks inside.
admin_text = st.binary(max_size=40).map(
    lambda b: b.replace(b"\n", b"").replace(b"\r", b"")
).filter(lambda b: not b.startswith(b"\0"))


@st.composite
def admin_lines(draw: st.DrawFn) -> tuple[bytes, AdminCommand]:
    words = draw(st.lists(st.sampled_from([b"status", b"STATUS", b"show", b"jobs", b"a\tb",
                                           b"x", b"\xff"]), max_size=5))
    seps = [b" " * draw(st.integers(1, 3)) for _ in words]
    text = b"".join(s + w for s, w in zip(seps, words, strict=True))
    if draw(st.booleans()):
        text = draw(admin_text)
    end = draw(st.sampled_from([b"\n", b"\r\n"]))
    expected_words = tuple(w for w in text.split(b" ") if w)
    return text + end, AdminCommand(text, expected_words)


items = st.lists(st.one_of(packets(), admin_lines()), max_size=25)


def to_stream(things: list[Packet | tuple[bytes, AdminCommand]]) -> tuple[bytes, list[object]]:
    data = bytearray()
    expected: list[object] = []
    for thing in things:
        if isinstance(thing, Packet):
            data += thing.encode()
            expected.append(thing)
        else:
            data += thing[0]
            expected.append(thing[1])
    return bytes(data), expected


# -- properties ------------------------------------------------------------------


@SETTINGS
@given(things=items, cuts=st.lists(st.integers(0, 2000), max_size=30))
def test_any_chunking_gives_the_same_events(
    things: list[Packet | tuple[bytes, AdminCommand]], cuts: list[int]
) -> None:
    data, expected = to_stream(things)
    whole = feed(data)
    assert whole == [*expected, ConnectionClosed()]
    assert feed(data, cuts) == whole
    assert feed(data, list(range(len(data)))) == whole  # one byte at a time


@SETTINGS
@given(
    chunks=st.lists(
        st.one_of(
            st.binary(max_size=64),
            packets().map(Packet.encode),
            admin_lines().map(lambda pair: pair[0]),
            st.sampled_from([b"\0", b"\0REQ", b"\0RES", b"\0RES\0\0\0", b"\n", b"\r"]),
        ),
        max_size=12,
    ),
    cuts=st.lists(st.integers(0, 1000), max_size=10),
    max_packet_size=st.sampled_from([0, 8, 64, DEFAULT_MAX_PACKET_SIZE]),
    max_line_length=st.sampled_from([0, 4, 64, 8192]),
)
def test_garbage_raises_only_remote_protocol_error(
    chunks: list[bytes], cuts: list[int], max_packet_size: int, max_line_length: int
) -> None:
    data = b"".join(chunks)
    parser = Parser(max_packet_size=max_packet_size, max_line_length=max_line_length)
    try:
        events = feed(data, cuts, parser=parser)
    except RemoteProtocolError as exc:
        assert exc.code and exc.text
        with pytest.raises(RemoteProtocolError):
            parser.next_event()
    else:
        assert events[-1] == ConnectionClosed()
        assert all(isinstance(e, Packet | AdminCommand) for e in events[:-1])
        assert parser.buffered == 0


# -- framing errors --------------------------------------------------------------


@pytest.mark.parametrize(
    ("ptype", "payload"),
    [
        (PacketType.SUBMIT_JOB, b"reverse\0test"),  # one NUL, needs two
        (PacketType.SUBMIT_JOB, b"reverse"),
        (PacketType.SUBMIT_JOB, b""),
        (PacketType.WORK_COMPLETE, b"H:x:1"),
        (PacketType.SUBMIT_REDUCE_JOB, b"f\0u\0reducer\0data"),  # the 3-NUL form of the docs
        (PacketType.STATUS_RES_UNIQUE, b"u\x001\x001\x000\x000"),
    ],
)
def test_missing_nul_is_invalid_packet(ptype: PacketType, payload: bytes) -> None:
    exc = expect_error(header(ptype, len(payload)) + payload)
    assert exc.code == "INVALID_PACKET"
    assert not exc.admin  # a binary packet error: answered with an ERROR packet


def test_nuls_are_looked_for_only_inside_the_declared_size() -> None:
    # The reference searches its whole buffer; we frame strictly (decisions.md "Protocol").
    payload = b"reverse"
    follow = encode_req(PacketType.SUBMIT_JOB, b"f", b"", b"data")
    exc = expect_error(header(PacketType.SUBMIT_JOB, len(payload)) + payload + follow)
    assert exc.code == "INVALID_PACKET"


@pytest.mark.parametrize("magic", [b"\0REX", b"\0req", b"\0RE\0", b"\0\0\0\0", b"\0RSE"])
def test_bad_magic(magic: bytes) -> None:
    exc = expect_error(header(PacketType.ECHO_REQ, 1, magic) + b"x")
    assert exc.code == "INVALID_MAGIC"
    assert not exc.admin  # a binary packet error: answered with an ERROR packet


def test_bad_magic_is_seen_from_the_header_alone() -> None:
    exc = expect_error(header(PacketType.ECHO_REQ, 1000, b"\0XYZ"))
    assert exc.code == "INVALID_MAGIC"


@pytest.mark.parametrize("number", [0, 43, 99, 2**31, 2**32 - 1])
def test_unknown_type(number: int) -> None:
    exc = expect_error(header(number, 0))
    assert not exc.admin  # a binary packet error: answered with an ERROR packet
    assert exc.code == "INVALID_COMMAND"
    assert str(number) in exc.text


def test_res_magic_and_response_types_are_parsed() -> None:
    # Direction is the server's business, not the parser's (it answers INVALID_MAGIC
    # or INVALID_COMMAND with an ERROR packet and keeps the connection).
    data = header(PacketType.NOOP, 0, b"\0RES") + header(PacketType.NOOP, 0)
    assert feed(data) == [Packet.res(PacketType.NOOP), Packet.req(PacketType.NOOP),
                          ConnectionClosed()]


# -- limits ----------------------------------------------------------------------


def test_oversized_packet_refused_from_the_header_alone() -> None:
    parser = Parser(max_packet_size=100)
    parser.receive_data(header(PacketType.ECHO_REQ, 101))
    with pytest.raises(RemoteProtocolError) as info:
        parser.next_event()
    assert info.value.code == "ARGUMENT_TOO_LARGE"
    assert not info.value.admin


def test_huge_declared_size_does_not_wait_for_the_payload() -> None:
    parser = Parser()
    parser.receive_data(header(PacketType.SUBMIT_JOB, 2**32 - 1) + b"f\0u\0")
    with pytest.raises(RemoteProtocolError) as info:
        parser.next_event()
    assert info.value.code == "ARGUMENT_TOO_LARGE"
    assert parser.buffered < 100


def test_packet_at_the_size_limit_is_accepted() -> None:
    parser = Parser(max_packet_size=100)
    packet = Packet.req(PacketType.ECHO_REQ, b"e" * 100)
    assert feed(packet.encode(), parser=parser) == [packet, ConnectionClosed()]


def test_admin_line_at_the_limit_is_accepted() -> None:
    for end in (b"\n", b"\r\n"):
        parser = Parser(max_line_length=10)
        assert feed(b"status abc" + end, parser=parser) == [
            AdminCommand(b"status abc", (b"status", b"abc")), ConnectionClosed()]


def test_admin_line_too_long() -> None:
    exc = expect_error(b"status abcd\n", Parser(max_line_length=10))
    assert exc.code == "ARGUMENT_TOO_LARGE"
    assert exc.admin  # answered with an ERR line, not an ERROR packet


def test_admin_line_too_long_without_a_newline_yet() -> None:
    parser = Parser(max_line_length=10)
    parser.receive_data(b"0123456789")
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"0")
    with pytest.raises(RemoteProtocolError) as info:
        parser.next_event()
    assert info.value.code == "ARGUMENT_TOO_LARGE"
    assert info.value.admin


def test_cr_before_the_newline_does_not_count_towards_the_limit() -> None:
    parser = Parser(max_line_length=10)
    parser.receive_data(b"0123456789\r")
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"\n")
    assert parser.next_event() == AdminCommand(b"0123456789", (b"0123456789",))
    parser.receive_data(b"0123456789\rx")
    with pytest.raises(RemoteProtocolError):
        parser.next_event()


def test_default_admin_limit_refuses_an_endless_line() -> None:
    parser = Parser()
    for _ in range(8):
        parser.receive_data(b"x" * 1024)
        assert parser.next_event() is NEED_DATA
    parser.receive_data(b"x" * 1025)
    with pytest.raises(RemoteProtocolError):
        parser.next_event()


# -- EOF -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "partial",
    [
        b"\0",
        b"\0REQ\0\0",
        header(PacketType.CAN_DO, 7),
        header(PacketType.CAN_DO, 7) + b"revers",
        b"status",
        b"status\r",
    ],
)
def test_eof_mid_event_is_an_error(partial: bytes) -> None:
    parser = Parser()
    parser.receive_data(partial)
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        parser.next_event()


def test_eof_at_a_boundary_is_connection_closed() -> None:
    parser = Parser()
    parser.receive_data(b"")
    assert parser.next_event() == ConnectionClosed()
    assert parser.next_event() == ConnectionClosed()
    with pytest.raises(RuntimeError):
        parser.receive_data(b"more")

    parser = Parser()
    parser.receive_data(encode_req(PacketType.GRAB_JOB) + b"status\n")
    parser.receive_data(b"")
    assert parser.events() == [Packet.req(PacketType.GRAB_JOB),
                               AdminCommand(b"status", (b"status",)), ConnectionClosed()]


def test_need_data_and_buffered() -> None:
    parser = Parser()
    assert parser.next_event() is NEED_DATA
    wire = encode_req(PacketType.CAN_DO, b"reverse")
    parser.receive_data(wire[:5])
    assert parser.next_event() is NEED_DATA
    assert parser.buffered == 5
    parser.receive_data(wire[5:-1])
    assert parser.next_event() is NEED_DATA
    parser.receive_data(wire[-1:])
    assert parser.next_event() == Packet.req(PacketType.CAN_DO, b"reverse")
    assert parser.buffered == 0
    assert parser.next_event() is NEED_DATA


def test_long_stream_in_64k_chunks() -> None:
    """Many packets across chunk boundaries, so the buffer is compacted on the way."""
    packets_ = [Packet.req(PacketType.SUBMIT_JOB, b"fn", b"u%d" % i, b"d" * (i % 300))
                for i in range(5000)]
    data = b"".join(p.encode() for p in packets_)
    assert len(data) > 4 * 65536
    parser = Parser()
    out: list[object] = []
    for start in range(0, len(data), 65536 - 7):
        parser.receive_data(data[start:start + 65536 - 7])
        out += parser.events()
        assert parser.buffered < 65536
    assert out == packets_


# -- admin lines -----------------------------------------------------------------


def test_crlf_and_lf_lines_are_the_same() -> None:
    events = feed(b"status\r\nstatus\nworkers \r\n")
    assert events[0] == events[1] == AdminCommand(b"status", (b"status",))
    assert events[2] == AdminCommand(b"workers ", (b"workers",))


def test_only_one_cr_is_stripped() -> None:
    (cmd, _) = feed(b"status\r\r\n")
    assert isinstance(cmd, AdminCommand)
    assert cmd.line == b"status\r"
    assert cmd.words == (b"status\r",)


def test_tab_is_not_a_separator() -> None:
    (cmd, _) = feed(b"cancel\tjob H:x:1\n")
    assert isinstance(cmd, AdminCommand)
    assert cmd.words == (b"cancel\tjob", b"H:x:1")
    assert cmd.name == "cancel\tjob"


def test_runs_of_spaces_separate_words() -> None:
    (cmd, _) = feed(b"  show   unique  jobs  \n")
    assert isinstance(cmd, AdminCommand)
    assert cmd.words == (b"show", b"unique", b"jobs")
    assert cmd.arguments == (b"unique", b"jobs")


@pytest.mark.parametrize("word", [b"status", b"STATUS", b"Status", b"sTaTuS"])
def test_command_name_is_case_insensitive(word: bytes) -> None:
    (cmd, _) = feed(word + b" Fn\r\n")
    assert isinstance(cmd, AdminCommand)
    assert cmd.name == "status"
    assert cmd.words[0] == word  # the raw word is kept
    assert cmd.arguments == (b"Fn",)  # arguments keep their case


def test_empty_line() -> None:
    (cmd, _) = feed(b"\r\n")
    assert isinstance(cmd, AdminCommand)
    assert cmd.words == ()
    assert cmd.name == ""


def test_text_and_binary_interleave() -> None:
    echo = Packet.req(PacketType.ECHO_REQ, b"\0hi\0")
    data = b"version\n" + echo.encode() + b"status\r\n" + echo.encode()
    assert feed(data) == [AdminCommand(b"version", (b"version",)), echo,
                          AdminCommand(b"status", (b"status",)), echo, ConnectionClosed()]


def test_a_long_admin_line_is_whole_as_soon_as_its_newline_comes() -> None:
    """A line longer than the gathering threshold (64 KiB) was held back until twice its
    length had arrived, and an EOF then made it an error (review finding)."""
    parser = Parser(max_line_length=1 << 20)
    parser.receive_data(b"x" * 70_000)
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"y" * 10 + b"\n")
    event = parser.next_event()
    assert isinstance(event, AdminCommand) and event.line == b"x" * 70_000 + b"y" * 10
    parser.receive_data(b"")
    assert parser.next_event() == ConnectionClosed()

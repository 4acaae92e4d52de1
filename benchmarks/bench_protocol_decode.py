"""Micro-benchmark of the sans-IO codec: decode and encode packets per second.

Decodes COUNT small packets (a mix of SUBMIT_JOB, WORK_COMPLETE, GRAB_JOB, JOB_ASSIGN_UNIQ
and an admin line now and then) fed to one Parser in CHUNK-byte reads, the way a server
connection receives them; then encodes the same packets with Packet.encode and with the
flat encode_req/encode_res helpers.

    .venv/bin/python benchmarks/bench_protocol_decode.py [--count N] [--chunk BYTES] [--repeat R]
"""

from __future__ import annotations

import argparse
import time

import protocol
from protocol import NEED_DATA, Magic, Packet, PacketType, Parser, encode

T = PacketType


def sample_packets(count: int) -> list[Packet]:
    """A realistic mix: clients submitting, workers grabbing and completing."""
    cycle = [
        Packet.req(T.SUBMIT_JOB, b"reverse", b"60b6658c-ea8c-11f1-93ca-02fc00000001",
                   b"hello world, this is a small job"),
        Packet.req(T.GRAB_JOB),
        Packet.res(T.JOB_ASSIGN_UNIQ, b"H:vm:123456", b"reverse",
                   b"60b6658c-ea8c-11f1-93ca-02fc00000001", b"hello world"),
        Packet.req(T.WORK_COMPLETE, b"H:vm:123456", b"dlrow olleh, siht si a llams boj"),
        Packet.res(T.JOB_CREATED, b"H:vm:123456"),
        Packet.req(T.PRE_SLEEP),
    ]
    return [cycle[i % len(cycle)] for i in range(count)]


def bench_decode(data: bytes, chunk: int, expected: int) -> float:
    parser = Parser()
    mv = memoryview(data)
    n = 0
    start = time.perf_counter()
    for offset in range(0, len(data), chunk):
        parser.receive_data(mv[offset:offset + chunk])
        next_event = parser.next_event
        while next_event() is not NEED_DATA:
            n += 1
    elapsed = time.perf_counter() - start
    assert n == expected, (n, expected)
    return elapsed


def bench_decode_events(data: bytes, chunk: int, expected: int) -> float:
    parser = Parser()
    mv = memoryview(data)
    n = 0
    start = time.perf_counter()
    for offset in range(0, len(data), chunk):
        parser.receive_data(mv[offset:offset + chunk])
        n += len(parser.events())
    elapsed = time.perf_counter() - start
    assert n == expected, (n, expected)
    return elapsed


def bench_encode(packets: list[Packet]) -> float:
    start = time.perf_counter()
    for p in packets:
        p.encode()
    return time.perf_counter() - start


def bench_encode_flat(packets: list[Packet]) -> float:
    triples = [(int(p.type), p.args, p.magic.value) for p in packets]
    start = time.perf_counter()
    for ptype, args, magic in triples:
        encode(ptype, args, magic)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--chunk", type=int, default=64 * 1024)
    ap.add_argument("--repeat", type=int, default=3, help="report the best of R runs")
    opts = ap.parse_args()

    packets = sample_packets(opts.count)
    admin_every = 1000  # an admin line now and then, as on a mixed connection
    parts: list[bytes] = []
    for i, p in enumerate(packets):
        parts.append(p.encode())
        if i % admin_every == admin_every - 1:
            parts.append(b"status\r\n")
    data = b"".join(parts)
    events = opts.count + opts.count // admin_every
    mib = len(data) / 2**20
    print(f"{opts.count:,} packets + {opts.count // admin_every:,} admin lines, "
          f"{mib:.1f} MiB, {opts.chunk:,}-byte chunks, best of {opts.repeat} "
          f"({protocol.__file__})")

    def report(name: str, seconds: float, n: int) -> None:
        print(f"  {name:<28} {n / seconds:>12,.0f} /s   ({seconds:.3f} s)")

    report("decode (next_event)",
           min(bench_decode(data, opts.chunk, events) for _ in range(opts.repeat)), events)
    report("decode (events())",
           min(bench_decode_events(data, opts.chunk, events) for _ in range(opts.repeat)),
           events)
    report("encode (Packet.encode)",
           min(bench_encode(packets) for _ in range(opts.repeat)), opts.count)
    report("encode (flat encode())",
           min(bench_encode_flat(packets) for _ in range(opts.repeat)), opts.count)
    report("construct Packet(...)", min(_bench_construct(packets) for _ in range(opts.repeat)),
           opts.count)


def _bench_construct(packets: list[Packet]) -> float:
    start = time.perf_counter()
    for p in packets:
        Packet(p.type, p.args, Magic.REQ)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()

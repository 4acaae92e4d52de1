"""A ``server.jobs.Peer`` for tests of the job core: it records what the core sends.

Each packet goes through the checked encoder and back through ``protocol.Parser``, so a
packet the Gear front-end could not put on the wire fails the test here too. Holds work
as in every front-end: what is delivered after a hold waits until that hold is released.
"""

from __future__ import annotations

from protocol import Packet, PacketType, Parser, encode_res


class FakeHold:
    def __init__(self) -> None:
        self.reply: bytes | None = None
        self.after = bytearray()


class FakePeer:
    def __init__(self) -> None:
        self.raw = bytearray()
        self.parser = Parser()
        self.packets: list[Packet] = []
        self.holds: list[FakeHold] = []

    def deliver(self, ptype: PacketType, *args: bytes) -> None:
        data = encode_res(ptype, *args)
        if self.holds:
            self.holds[-1].after += data
        else:
            self._receive(data)

    def hold(self) -> FakeHold:
        hold = FakeHold()
        self.holds.append(hold)
        return hold

    def release(self, hold: object, ptype: PacketType, *args: bytes) -> None:
        assert isinstance(hold, FakeHold) and hold in self.holds and hold.reply is None
        hold.reply = encode_res(ptype, *args)
        while self.holds and self.holds[0].reply is not None:
            first = self.holds.pop(0)
            assert first.reply is not None
            self._receive(first.reply + first.after)

    def _receive(self, data: bytes) -> None:
        self.raw += data
        self.parser.receive_data(data)
        for event in self.parser.events():
            assert isinstance(event, Packet), event
            self.packets.append(event)

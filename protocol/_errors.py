"""The two protocol errors: the peer broke the protocol, or we tried to send something invalid."""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of both protocol errors."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol.

    ``code`` and ``text`` are what to answer with; ``admin`` says whether the error is
    in an admin text line (answer with an ERR line) rather than a binary packet (answer
    with an ERROR packet). The stream can no longer be framed after either.
    """

    def __init__(self, text: str, *, code: str = "INVALID_PACKET", admin: bool = False) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.admin = admin


class LocalProtocolError(ProtocolError):
    """We tried to build or send something the protocol does not allow."""

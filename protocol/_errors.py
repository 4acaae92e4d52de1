"""The two protocol errors: the peer broke the protocol, or we tried to send something invalid."""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of both protocol errors."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol.

    ``code`` and ``text`` are what to answer with in an ERROR packet (or an ERR
    line on the admin protocol); ``fatal`` says whether the stream can no longer
    be framed and the connection must be closed after the answer.
    """

    def __init__(self, text: str, *, code: str = "INVALID_PACKET", fatal: bool = True) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.fatal = fatal


class LocalProtocolError(ProtocolError):
    """We tried to build or send something the protocol does not allow."""

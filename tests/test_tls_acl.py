"""Certificate identities (--ssl-verify-client) driving the access rules and tenants of
--acl-file, end to end over TLS: the two halves of docs/security.md together."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from gearman_cli import Admin, Client
from protocol import NEED_DATA, Packet, PacketType, Parser, encode_req
from tests.test_tls import Pki, Start, pki  # noqa: F401  (the fixture)

PT = PacketType

RULES = """
[tenants.media]
[tenants.books]

[[rule]]
identity = "ops"
admin-read = true
admin-write = true

[[rule]]
identity = "media-*"
tenant = "media"
register = ["resize"]
submit = "*"
admin-read = true

[[rule]]
identity = "books-*"
tenant = "books"
register = "*"
submit = "*"

[default]
"""


class TlsPeer:
    """A raw Gear connection over TLS with a client certificate."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        self.parser = Parser()

    def send(self, ptype: PacketType, *args: bytes) -> None:
        self.sock.sendall(encode_req(int(ptype), *args))

    def until_echo(self) -> list[Packet]:
        """Packets that came before the answer to one more ECHO_REQ."""
        self.send(PT.ECHO_REQ, b"sync")
        got: list[Packet] = []
        while True:
            event = self.parser.next_event()
            if event is NEED_DATA:
                self.parser.receive_data(self.sock.recv(65536))
                continue
            assert isinstance(event, Packet)
            if event.type is PT.ECHO_RES:
                return got
            got.append(event)

    def close(self) -> None:
        self.sock.close()


def test_certificate_identities_get_their_rules_and_tenants(
        pki: Pki, start_inprocess: Start, tmp_path: Path) -> None:  # noqa: F811
    acl = tmp_path / "acl.toml"
    acl.write_text(RULES)
    srv = start_inprocess(*pki.server_args("--ssl-ca-file", pki.ca_file,
                                           "--ssl-verify-client", "--acl-file", str(acl)))
    address = f"127.0.0.1:{srv.port}"

    def ctx(name: str) -> ssl.SSLContext:
        return pki.client_context(pki.client_file(f"{name}.pem", None, common_name=name))

    media_worker = TlsPeer(srv.port, ctx("media-worker"))
    books_worker = TlsPeer(srv.port, ctx("books-worker"))
    stranger = TlsPeer(srv.port, ctx("stranger"))
    try:
        media_worker.send(PT.CAN_DO, b"resize")
        assert media_worker.until_echo() == []
        media_worker.send(PT.CAN_DO, b"publish")  # not in its register list
        (denied,) = media_worker.until_echo()
        assert denied.type is PT.ERROR and denied.args[0] == b"PERMISSION_DENIED"
        books_worker.send(PT.CAN_DO, b"resize")
        assert books_worker.until_echo() == []
        stranger.send(PT.CAN_DO, b"resize")  # [default] gives nothing
        (denied,) = stranger.until_echo()
        assert denied.args[0] == b"PERMISSION_DENIED"

        # The same function name and unique key in two tenants: two jobs, never joined.
        media = Client(address, ssl=ctx("media-client"))
        books = Client(address, ssl=ctx("books-client"))
        h_media = media.do_background("resize", b"cat.jpg", unique="same")
        h_books = books.do_background("resize", b"war-and-peace", unique="same")
        assert h_media != h_books

        # Each worker gets only its tenant's job, under the plain function name.
        for peer, data in ((media_worker, b"cat.jpg"), (books_worker, b"war-and-peace")):
            peer.send(PT.GRAB_JOB)
            (assigned,) = peer.until_echo()
            assert assigned.type is PT.JOB_ASSIGN
            assert assigned.args[1:] == (b"resize", data)

        # The media tenant's admin view is its own; the ops identity sees every tenant.
        mine = {s.function for s in Admin(address, ssl=ctx("media-admin")).status()}
        assert mine == {b"resize"}
        everyone = {s.function for s in Admin(address, ssl=ctx("ops")).status()}
        assert {b"media:resize", b"books:resize"} <= everyone
    finally:
        for peer in (media_worker, books_worker, stranger):
            peer.close()

"""TLS for clients, workers and admin connections: the ``ssl`` argument of every class,
the ``-S``/``--ssl*`` flags and the ``GEARMAN_SSL*`` environment variables.

The server's certificate is always verified, host name included (``server_hostname`` is
the host of the server address: a name, or an IP address that the certificate must
list). Trust comes from ``ca_file`` when given, else from the system's CA store.
``ssl`` is imported only when TLS is asked for (it costs a one-off command time).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl

    #: What the classes take as ``ssl``: a context (used as it is), True (a context from
    #: ``GEARMAN_SSL_*``, else the system CAs), False (plaintext), or None (TLS when the
    #: ``GEARMAN_SSL*`` variables ask for it, else plaintext).
    SslArg = ssl.SSLContext | bool | None

ENV_SSL = "GEARMAN_SSL"
ENV_CA_FILE = "GEARMAN_SSL_CA_FILE"
ENV_CERTIFICATE = "GEARMAN_SSL_CERTIFICATE"
ENV_KEY = "GEARMAN_SSL_KEY"
_TRUE = ("1", "yes", "true", "on")


class TlsSetupError(ValueError):
    """A CA, certificate or key file cannot be used (one line)."""


class TlsSettings:
    """The TLS settings of a command line (or the environment)."""

    __slots__ = ("ca_file", "certificate", "enabled", "key")

    def __init__(self, enabled: bool = False, ca_file: str | None = None,
                 certificate: str | None = None, key: str | None = None) -> None:
        self.enabled = enabled
        self.ca_file = ca_file
        self.certificate = certificate
        self.key = key

    def __repr__(self) -> str:
        return (f"TlsSettings(enabled={self.enabled}, ca_file={self.ca_file!r}, "
                f"certificate={self.certificate!r}, key={self.key!r})")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TlsSettings:
        """``GEARMAN_SSL=1`` turns TLS on; so does any ``GEARMAN_SSL_*`` file variable."""
        env = os.environ if environ is None else environ
        files = {name: env.get(var) or None for name, var in (
            ("ca_file", ENV_CA_FILE), ("certificate", ENV_CERTIFICATE), ("key", ENV_KEY))}
        enabled = env.get(ENV_SSL, "").strip().lower() in _TRUE or any(files.values())
        return cls(enabled=enabled, **files)

    def context(self) -> ssl.SSLContext | None:
        """The client context these settings describe; None when TLS is off."""
        if not self.enabled:
            return None
        return tls_context(self.ca_file, self.certificate, self.key)


def tls_context(ca_file: str | None = None, certificate: str | None = None,
                key: str | None = None) -> ssl.SSLContext:
    """A client ``SSLContext``: TLS 1.2 or later, the server's certificate and host name
    verified against ``ca_file`` (PEM; the system's CAs when None), and a client
    certificate (``certificate``, with ``key`` unless the key is in the same file) for
    servers that ask for one. ``TlsSetupError`` names a file that cannot be used."""
    import ssl

    if key is not None and certificate is None:
        raise TlsSetupError("a client key needs its certificate (--ssl-certificate)")
    for what, path in (("CA file", ca_file), ("certificate", certificate), ("key", key)):
        if path is not None and not os.access(path, os.R_OK):
            raise TlsSetupError(f"TLS {what} {path}: cannot read it")
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except ssl.SSLError as exc:
        raise TlsSetupError(f"TLS CA file {ca_file}: no PEM certificate in it "
                            f"({exc.reason or exc})") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if certificate is not None:
        try:
            context.load_cert_chain(certificate, key, password=_no_password)
        except ssl.SSLError as exc:
            raise TlsSetupError(f"TLS certificate {certificate}: not a PEM certificate and "
                                f"its key ({exc.reason or exc})") from None
    return context


def _no_password() -> bytes:
    raise TlsSetupError("the TLS client key is encrypted; give an unencrypted key")


def resolve(arg: SslArg) -> ssl.SSLContext | None:
    """The context for a class's ``ssl`` argument (see ``SslArg``)."""
    if arg is None:
        return TlsSettings.from_env().context()
    if arg is False:
        return None
    if arg is True:
        settings = TlsSettings.from_env()
        return tls_context(settings.ca_file, settings.certificate, settings.key)
    return arg


def handshake_failure(exc: BaseException) -> str:
    """Why a TLS handshake with a server failed, in a few words."""
    import ssl

    cause = exc.__cause__ if exc.__cause__ is not None and not isinstance(
        exc, ssl.SSLError) else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS: server certificate refused: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return f"TLS handshake failed: {cause.reason or cause}"
    if isinstance(cause, OSError) and cause.strerror:
        return f"TLS handshake failed: {cause.strerror}"
    return f"TLS handshake failed: {cause or 'connection closed (not a TLS server?)'}"


# ---------------------------------------------------------------------- command lines

#: The destinations of ``--ssl-ca-file``, ``--ssl-certificate``, ``--ssl-key``
#: (``_argv.tls_options``).
_FILE_DESTS = ("ssl_ca_file", "ssl_certificate", "ssl_key")


def from_command_line(values: Mapping[str, Any],
                      environ: Mapping[str, str] | None = None) -> ssl.SSLContext | None:
    """The context the flags (over ``GEARMAN_SSL*``) ask for; None for plaintext.
    ``TlsSetupError`` when a file cannot be used."""
    env = TlsSettings.from_env(environ)
    settings = TlsSettings(
        enabled=bool(env.enabled or values.get("ssl") or any(
            values.get(dest) for dest in _FILE_DESTS)),
        ca_file=values.get("ssl_ca_file") or env.ca_file,
        certificate=values.get("ssl_certificate") or env.certificate,
        key=values.get("ssl_key") or env.key,
    )
    return settings.context()


def cli_context(values: Mapping[str, Any]) -> ssl.SSLContext | None:
    """``from_command_line`` for the tools: a file that cannot be used is a usage error."""
    from ._argv import UsageError

    try:
        return from_command_line(values)
    except TlsSetupError as exc:
        raise UsageError(str(exc)) from None

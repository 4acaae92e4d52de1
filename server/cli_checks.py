"""Checks of the ``gearmand`` options that become parts of the config: TLS (its files
read now), retry policies and result TTLs. Each problem is one ``CliError`` line."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import click

from server.config import TlsConfig
from server.retry import PolicyError, RetryPolicy, parse_policy


class CliError(click.ClickException):
    """A usage or configuration error: one line on stderr, exit status 1 (as the reference)."""

    exit_code = 1


def default_tls(name: str) -> Any:
    for field in dataclasses.fields(TlsConfig):
        if field.name == name:
            return field.default
    raise KeyError(name)


def tls_config(values: Mapping[str, Any], given: Callable[[str], bool]) -> TlsConfig | None:
    """``--ssl`` and its files, checked now (each file read, the key matched to the
    certificate), so that a bad one is one line and exit 1 before anything is bound."""
    if not values["ssl"]:
        for name in SSL_OPTIONS:
            if given(name):
                raise CliError(f"--{name.replace('_', '-')} without --ssl: the server would "
                               "speak plaintext; add --ssl (or drop the option)")
        return None
    if not values["ssl_certificate"] or not values["ssl_key"]:
        raise CliError("--ssl needs --ssl-certificate FILE and --ssl-key FILE")
    timeout = values["ssl_handshake_timeout"]
    if not 0 < timeout < float("inf"):
        raise CliError("invalid value for --ssl-handshake-timeout: it must be a finite "
                       "number of seconds, more than 0")
    ca_file = values["ssl_ca_file"]
    tls = TlsConfig(certificate=Path(values["ssl_certificate"]).absolute(),
                    key=Path(values["ssl_key"]).absolute(),
                    ca_file=Path(ca_file).absolute() if ca_file else None,
                    verify_client=values["ssl_verify_client"], handshake_timeout=timeout)
    from server.tls import TlsSetupError, server_context  # imports trio: only with --ssl

    try:
        server_context(tls)
    except TlsSetupError as exc:
        raise CliError(str(exc)) from None
    return tls


#: The options that only mean something with ``--ssl``.
SSL_OPTIONS = ("ssl_ca_file", "ssl_certificate", "ssl_key", "ssl_verify_client",
               "ssl_handshake_timeout")

def retry_policies(texts: Iterable[str]) -> tuple[tuple[bytes | None, RetryPolicy], ...]:
    """``--retry-policy`` values, checked; the last one given for a name wins."""
    policies: dict[bytes | None, RetryPolicy] = {}
    for text in texts:
        try:
            name, policy = parse_policy(text)
        except PolicyError as exc:
            raise CliError(f"invalid value for --retry-policy: {exc}") from None
        policies[name] = policy
    return tuple(policies.items())


def result_ttls(texts: Iterable[str]) -> tuple[tuple[bytes | None, float], ...]:
    """``--result-ttl [NAME=]SECONDS`` values, checked."""
    ttls: dict[bytes | None, float] = {}
    for text in texts:
        name, _, number = text.rpartition("=")
        try:
            seconds = float(number)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds < float("inf"):
            raise CliError(f"invalid value for --result-ttl: {text!r}: expected "
                           "[NAME=]SECONDS, a finite number of seconds, not negative")
        ttls[name.encode() if name and name != "*" else None] = seconds
    return tuple(ttls.items())

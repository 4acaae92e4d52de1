"""A small getopt-style command-line parser for ``gearman`` and ``gearadmin``.

Rule: parse with nothing but the standard library's builtins, so a tool that runs once
per job in a shell loop starts in a few milliseconds (a general-purpose parser costs more
to import than the whole job). Options are declared in a table; the help text is built
from the same table, and so is the man-page check in the tests.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not typing's: start-up time
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any


class UsageError(Exception):
    """A bad command line: the message says what is wrong; exit status 2."""


class Option:
    """One option: its names, whether it takes a value, and how the value is checked."""

    __slots__ = ("names", "dest", "takes_value", "multiple", "help", "metavar", "convert",
                 "default", "show_default")

    def __init__(
        self,
        *names: str,
        dest: str,
        help: str,
        takes_value: bool = False,
        multiple: bool = False,
        metavar: str | None = None,
        convert: Callable[[str], Any] | None = None,
        default: Any = None,
        show_default: bool = False,
    ) -> None:
        self.names = names
        self.dest = dest
        self.help = help
        self.takes_value = takes_value or multiple
        self.multiple = multiple
        self.metavar = metavar or (dest.upper() if self.takes_value else None)
        self.convert = convert
        self.default = default
        self.show_default = show_default

    @property
    def label(self) -> str:
        return " / ".join(f"'{name}'" for name in self.names)


class Parsed:
    """What a command line said: ``values`` by dest, every option in the order given
    (``order``: option and value), and the arguments left."""

    __slots__ = ("values", "order", "args", "help")

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.order: list[tuple[Option, Any]] = []
        self.args: list[str] = []
        self.help = False


class ArgParser:
    def __init__(
        self,
        prog: str,
        usage: str,
        description: str,
        epilog: str,
        options: Sequence[Option],
        help_names: tuple[str, ...],
        interspersed: bool = True,
    ) -> None:
        self.prog = prog
        self.usage = usage
        self.description = description
        self.epilog = epilog
        self.options = list(options)
        self.help_names = help_names
        self.interspersed = interspersed
        self._by_name = {name: opt for opt in options for name in opt.names}

    def _store(self, parsed: Parsed, opt: Option, name: str, value: str | None) -> None:
        if opt.takes_value:
            assert value is not None
            if opt.convert is not None:
                try:
                    converted = opt.convert(value)
                except ValueError as exc:
                    raise UsageError(f"Invalid value for {opt.label}: {exc}") from None
            else:
                converted = value
            if opt.multiple:
                parsed.values[opt.dest] = [*parsed.values[opt.dest], converted]
            else:
                parsed.values[opt.dest] = converted
        else:
            converted = True
            parsed.values[opt.dest] = True
        parsed.order.append((opt, converted))

    def _lookup(self, name: str) -> Option:
        opt = self._by_name.get(name)
        if opt is None:
            raise UsageError(f"No such option '{name}'.")
        return opt

    def parse(self, argv: Sequence[str]) -> Parsed:
        parsed = Parsed({o.dest: ([] if o.multiple else o.default) for o in self.options})
        i = 0
        n = len(argv)
        while i < n:
            arg = argv[i]
            i += 1
            if arg == "--":
                parsed.args.extend(argv[i:])
                break
            if arg in self.help_names:
                parsed.help = True
                continue
            if arg.startswith("--"):
                name, eq, value = arg.partition("=")
                opt = self._lookup(name)
                if opt.takes_value:
                    if not eq:
                        if i >= n:
                            raise UsageError(f"Option '{name}' requires an argument.")
                        value = argv[i]
                        i += 1
                    self._store(parsed, opt, name, value)
                elif eq:
                    raise UsageError(f"Option '{name}' does not take a value.")
                else:
                    self._store(parsed, opt, name, None)
            elif arg.startswith("-") and arg != "-":
                j = 1
                while j < len(arg):
                    name = "-" + arg[j]
                    if name in self.help_names:
                        parsed.help = True
                        j += 1
                        continue
                    opt = self._lookup(name)
                    j += 1
                    if opt.takes_value:
                        if j < len(arg):
                            value = arg[j:]
                        elif i < n:
                            value = argv[i]
                            i += 1
                        else:
                            raise UsageError(f"Option '{name}' requires an argument.")
                        self._store(parsed, opt, name, value)
                        break
                    self._store(parsed, opt, name, None)
            elif self.interspersed:
                parsed.args.append(arg)
            else:
                parsed.args.append(arg)
                parsed.args.extend(argv[i:])
                break
        return parsed

    def usage_line(self) -> str:
        return f"Usage: {self.prog} {self.usage}"

    def error(self, message: str) -> None:
        """Print a usage error the usual way, to stderr."""
        sys.stderr.write(
            f"{self.usage_line()}\nTry '{self.prog} {self.help_names[-1]}' for help.\n\n"
            f"Error: {message}\n"
        )

    def help_text(self, width: int = 100) -> str:
        import textwrap

        rows: list[tuple[str, str]] = []
        for opt in self.options:
            names = ", ".join(opt.names)
            if opt.metavar:
                names += f" {opt.metavar}"
            text = opt.help
            if opt.show_default and opt.default is not None:
                text += f"  [default: {opt.default}]"
            rows.append((names, text))
        rows.append((", ".join(self.help_names), "Show this message and exit."))
        left = min(30, max(len(r[0]) for r in rows) + 2)
        out = [self.usage_line(), ""]
        for para in self.description.strip().split("\n\n"):
            out.append(textwrap.fill(" ".join(para.split()), width - 2,
                                     initial_indent="  ", subsequent_indent="  "))
            out.append("")
        out.append("Options:")
        for names, text in rows:
            wrapped = textwrap.wrap(text, width - left - 2) or [""]
            if len(names) + 2 > left - 1:
                out.append(f"  {names}")
                out.extend(" " * left + line for line in wrapped)
            else:
                out.append(f"  {names:<{left - 2}}{wrapped[0]}")
                out.extend(" " * left + line for line in wrapped[1:])
        out.append("")
        out.append(self.epilog.rstrip())
        return "\n".join(out) + "\n"


def int_range(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a valid integer.") from None
        if (low is not None and value < low) or (high is not None and value > high):
            if high is None:
                raise ValueError(f"{value} is not in the range x>={low}.")
            raise ValueError(f"{value} is not in the range {low}<=x<={high}.")
        return value

    return convert


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid float.") from None
    if not value > 0:
        raise ValueError(f"{value} is not in the range x>0.")
    return value


def tls_options() -> list[Option]:
    """``-S`` and the TLS files, shared by ``gearman`` and ``gearadmin`` (see ``_tls``)."""
    return [
        Option("-S", "--ssl", dest="ssl",
               help="Connect with TLS (1.2 or later), verifying the server's certificate "
                    "and host name (env GEARMAN_SSL=1)."),
        Option("--ssl-ca-file", dest="ssl_ca_file", takes_value=True, metavar="FILE",
               help="CA certificates (PEM) that sign the server's certificate (default: "
                    "the system's CAs; env GEARMAN_SSL_CA_FILE). Implies -S."),
        Option("--ssl-certificate", dest="ssl_certificate", takes_value=True,
               metavar="FILE",
               help="Client certificate (PEM; may hold the key too), for a server that "
                    "asks for one (env GEARMAN_SSL_CERTIFICATE). Implies -S."),
        Option("--ssl-key", dest="ssl_key", takes_value=True, metavar="FILE",
               help="The client certificate's private key (PEM, unencrypted; env "
                    "GEARMAN_SSL_KEY). Implies -S."),
    ]

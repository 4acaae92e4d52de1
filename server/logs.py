"""Logging for gearmand: the reference's eight level names, its line format, a reopenable file.

Everything here is plain :mod:`logging`; modules keep doing ``logging.getLogger(__name__)``
and may log at :data:`NOTICE` or :data:`ALERT` with ``logger.log(NOTICE, ...)``.
"""

from __future__ import annotations

import dataclasses
import logging
import logging.handlers
import os
import sys
import threading
import time
from typing import ClassVar, TextIO

#: The reference's levels (spec §4.1 ``--verbose``), most severe first, mapped onto
#: :mod:`logging` numbers. FATAL and ALERT sit above CRITICAL; NOTICE between WARNING and INFO.
FATAL = 60
ALERT = 55
CRITICAL = logging.CRITICAL
ERROR = logging.ERROR
WARNING = logging.WARNING
NOTICE = 25
INFO = logging.INFO
DEBUG = logging.DEBUG

LEVELS: dict[str, int] = {
    "FATAL": FATAL,
    "ALERT": ALERT,
    "CRITICAL": CRITICAL,
    "ERROR": ERROR,
    "WARNING": WARNING,
    "NOTICE": NOTICE,
    "INFO": INFO,
    "DEBUG": DEBUG,
}
#: The level names in order, most severe first (the order ``-v`` walks down).
LEVEL_NAMES: tuple[str, ...] = tuple(LEVELS)
DEFAULT_LEVEL_NAME = "ERROR"

# NOTICE and ALERT are new names; FATAL is not registered because logging already maps
# the name "FATAL" to CRITICAL and other code may rely on that.
logging.addLevelName(NOTICE, "NOTICE")
logging.addLevelName(ALERT, "ALERT")

#: The local syslog socket (module-level so tests can point it elsewhere).
SYSLOG_SOCKET = "/dev/log"

#: The reference names its thread in every line; we have one thread, called main there too.
THREAD_FIELD = "[  main ]"


def level_name(levelno: int) -> str:
    """The reference's name for a :mod:`logging` level (the nearest one at or below it)."""
    for name, number in LEVELS.items():
        if levelno >= number:
            return name
    return "DEBUG"


def raise_level(name: str, steps: int) -> str:
    """The level ``steps`` places more verbose than ``name``, stopping at DEBUG (``-v``)."""
    index = LEVEL_NAMES.index(name) + max(steps, 0)
    return LEVEL_NAMES[min(index, len(LEVEL_NAMES) - 1)]


def format_timestamp(created: float) -> str:
    """``YYYY-MM-DD HH:MM:SS.micro`` in local time, as the reference writes it."""
    seconds = int(created)
    micro = round((created - seconds) * 1_000_000)
    if micro >= 1_000_000:
        seconds, micro = seconds + 1, micro - 1_000_000
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) + f".{micro:06d}"


class Formatter(logging.Formatter):
    """``%7s`` level, timestamp with microseconds, ``[  main ]``, message (spec §4.1).

    DEBUG lines end with ``-> module:line`` like the reference's do.
    """

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line = f"{level_name(record.levelno):>7} {format_timestamp(record.created)} " \
               f"{THREAD_FIELD} {message}"
        if record.levelno <= DEBUG:
            line += f" -> {record.module}:{record.lineno}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


class SyslogFormatter(logging.Formatter):
    """Syslog supplies its own time stamp; keep the level name and the message."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{level_name(record.levelno)} {record.getMessage()}"
        if record.exc_info:
            line += " " + self.formatException(record.exc_info).replace("\n", " | ")
        return line


class ReopenableFileHandler(logging.StreamHandler[TextIO]):
    """Appends to a file; :meth:`reopen` (on SIGHUP) starts writing to the path afresh."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(self._open())

    def _open(self) -> TextIO:
        return open(self.path, "a", encoding="utf-8", errors="backslashreplace", buffering=1)

    def reopen(self) -> None:
        """Open the path again (after log rotation); on failure keep the old file, raise."""
        new = self._open()
        self.acquire()
        try:
            old, self.stream = self.stream, new
        finally:
            self.release()
        old.close()

    def close(self) -> None:
        self.acquire()
        try:
            try:
                self.flush()
            finally:
                self.stream.close()
        finally:
            self.release()
        super().close()


@dataclasses.dataclass(frozen=True, slots=True)
class LogSettings:
    """Where and how much gearmand logs (``-l``, ``--verbose``/``-v``, ``--syslog``)."""

    #: A path, ``"stderr"`` or ``"none"`` (the reference's spellings).
    destination: str = "stderr"
    level_name: str = DEFAULT_LEVEL_NAME
    syslog: bool = False

    @property
    def level(self) -> int:
        return LEVELS[self.level_name]


class _SysLogHandler(logging.handlers.SysLogHandler):
    """Maps the eight reference levels onto the eight syslog priorities."""

    _PRIORITIES: ClassVar[dict[str, str]] = {
        "FATAL": "emerg", "ALERT": "alert", "CRITICAL": "crit", "ERROR": "err",
        "WARNING": "warning", "NOTICE": "notice", "INFO": "info", "DEBUG": "debug",
    }
    _current = "ERROR"

    def emit(self, record: logging.LogRecord) -> None:
        # Handler.handle() holds the handler's lock around emit(), so this is safe.
        self._current = level_name(record.levelno)
        super().emit(record)

    def mapPriority(self, levelName: str) -> str:
        return self._PRIORITIES[self._current]


class LogSetup:
    """The handlers :func:`configure` installed; reopen them on SIGHUP, remove them at exit."""

    def __init__(self, logger: logging.Logger, handlers: list[logging.Handler],
                 file_handler: ReopenableFileHandler | None) -> None:
        self.logger = logger
        self.handlers = handlers
        self.file_handler = file_handler
        self._lock = threading.Lock()

    def reopen(self) -> None:
        """Reopen the log file, if there is one; a failure is logged and the old file kept."""
        if self.file_handler is None:
            return
        with self._lock:
            try:
                self.file_handler.reopen()
            except OSError as exc:
                self.logger.error("Could not reopen log file %s: %s", self.file_handler.path,
                                  exc.strerror or exc)
                return
        self.logger.info("Reopened log file %s", self.file_handler.path)

    def close(self) -> None:
        for handler in self.handlers:
            self.logger.removeHandler(handler)
            handler.close()


def configure(settings: LogSettings, logger: logging.Logger | None = None, *,
              stderr: TextIO | None = None) -> LogSetup:
    """Send ``logger`` (the root logger by default) where ``settings`` say.

    A log file that cannot be opened is reported on stderr and replaced by stderr,
    as the reference does. ``none`` means no log at all (syslog still works).
    """
    logger = logger if logger is not None else logging.getLogger()
    err = stderr if stderr is not None else sys.stderr
    handlers: list[logging.Handler] = []
    file_handler: ReopenableFileHandler | None = None
    destination = settings.destination
    if destination not in ("stderr", "none"):
        try:
            file_handler = ReopenableFileHandler(destination)
        except OSError as exc:
            print(f'gearmand: Could not open log file "{destination}", from "{os.getcwd()}", '
                  f"switching to stderr. ({exc.strerror or exc})", file=err)
            destination = "stderr"
        else:
            handlers.append(file_handler)
    if destination == "stderr":
        handlers.append(logging.StreamHandler(err))
    for handler in handlers:
        handler.setFormatter(Formatter())
    if settings.syslog:
        syslog = _syslog_handler(err)
        if syslog is not None:
            handlers.append(syslog)
    if not handlers:
        # "none": say so explicitly, or logging's last resort would print on stderr.
        handlers.append(logging.NullHandler())
    for handler in handlers:
        logger.addHandler(handler)
    logger.setLevel(settings.level)
    return LogSetup(logger, handlers, file_handler)


def _syslog_handler(err: TextIO) -> logging.Handler | None:
    """LOG_USER, ident ``gearmand`` (spec §4.1 ``--syslog``), over the local socket."""
    address: str | tuple[str, int] = SYSLOG_SOCKET if os.path.exists(SYSLOG_SOCKET) \
        else ("localhost", logging.handlers.SYSLOG_UDP_PORT)
    try:
        handler = _SysLogHandler(
            address=address, facility=logging.handlers.SysLogHandler.LOG_USER)
    except OSError as exc:
        print(f"gearmand: Could not connect to syslog: {exc.strerror or exc}", file=err)
        return None
    handler.ident = "gearmand: "
    handler.setFormatter(SyslogFormatter())
    return handler

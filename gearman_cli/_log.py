"""Loggers that import ``logging`` only when something is logged: the one-off command-line
paths log nothing when all goes well, and ``logging`` costs more to import than they take
to run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging


class _LazyLogger:
    __slots__ = ("_name", "_logger")

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None

    def __getattr__(self, attr: str) -> Any:
        if self._logger is None:
            import logging

            self._logger = logging.getLogger(self._name)
        return getattr(self._logger, attr)


def get_logger(name: str) -> logging.Logger:
    """A stand-in for ``logging.getLogger(name)`` that defers the import."""
    return _LazyLogger(name)  # type: ignore[return-value]

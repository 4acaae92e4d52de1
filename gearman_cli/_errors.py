"""The library's exceptions: one base class, one subclass per way a job or call can go wrong."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .client import Task


class GearmanError(Exception):
    """Base class of every error this library raises."""


class NoServerError(GearmanError):
    """No server in the list could be reached (all are down or refused the connection)."""


class ServerError(GearmanError):
    """The server answered with an ``ERROR`` packet (spec §1.3): ``code`` and ``text``."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text


class ConnectionLostError(GearmanError):
    """The connection to a server closed while a reply was awaited."""


class JobFailedError(GearmanError):
    """The job ended with ``WORK_FAIL`` (the worker failed it, or the server gave up on it)."""

    def __init__(self, task: Task, message: str | None = None) -> None:
        handle = task.handle.decode("latin-1") if task.handle else "?"
        super().__init__(message or f"job {handle} ({task.function_name}) failed")
        self.task = task


class JobExceptionError(JobFailedError):
    """The job ended with ``WORK_EXCEPTION``; ``data`` holds the worker's exception text."""

    def __init__(self, task: Task) -> None:
        self.data: bytes = task.exception or b""
        handle = task.handle.decode("latin-1") if task.handle else "?"
        text = self.data.decode("utf-8", "replace")
        super().__init__(task, f"job {handle} ({task.function_name}) raised: {text}")


class AdminError(GearmanError):
    """An admin command was answered with an ``ERR`` line; ``reply`` is the line after ``ERR``."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply

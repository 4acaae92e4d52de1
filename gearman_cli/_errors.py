"""The library's exceptions: one base class, one subclass per way a job or call can go wrong.

Built from plain fields (handle, function name, text), so this module imports nothing of
the library and nothing imports it back in a circle.
"""

from __future__ import annotations


class GearmanError(Exception):
    """Base class of every error this library raises."""


class NoServerError(GearmanError):
    """No server in the list could be reached; the message names each one tried and why."""


class ServerError(GearmanError):
    """The server answered with an ``ERROR`` packet: ``code`` and ``text``."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text


class ConnectionLostError(GearmanError):
    """The connection to a server closed while a reply was awaited."""


def _label(handle: bytes | None, function: bytes) -> str:
    shown = handle.decode("latin-1") if handle else "?"
    return f"job {shown} ({function.decode('utf-8', 'replace')})"


class JobFailedError(GearmanError):
    """The job ended with ``WORK_FAIL`` (the worker failed it, or the server gave up on it).

    ``handle`` and ``function`` name the job; ``task`` is the Task when there is one.
    """

    def __init__(
        self,
        handle: bytes | None,
        function: bytes,
        message: str | None = None,
        *,
        task: object = None,
    ) -> None:
        super().__init__(message or f"{_label(handle, function)} failed")
        self.handle = handle
        self.function = function
        self.task = task


class JobExceptionError(JobFailedError):
    """The job ended with ``WORK_EXCEPTION``; ``data`` holds the worker's exception text."""

    def __init__(
        self, handle: bytes | None, function: bytes, data: bytes, *, task: object = None
    ) -> None:
        text = data.decode("utf-8", "replace")
        super().__init__(handle, function, f"{_label(handle, function)} raised: {text}",
                         task=task)
        self.data = data


class AdminError(GearmanError):
    """An admin command was answered with an ``ERR`` line; ``reply`` is the line after ``ERR``."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply

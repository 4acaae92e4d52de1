"""SIGINT and SIGTERM for the command-line tools: clean up, then die by the signal.

A shell loop (``for f in *; do gearman ...; done``) stops on Ctrl-C only when the command
died *by* SIGINT; an ordinary exit status of 130 lets the loop carry on. So: both signals
raise ``KeyboardInterrupt`` (SIGTERM by sending SIGINT to ourselves, which works the same
inside and outside trio), the ``finally`` blocks run (pid file, output flush), and
``die`` re-raises the signal that came, with its default action.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

TYPE_CHECKING = False  # not typing's: start-up time
if TYPE_CHECKING:
    from types import FrameType

#: The signal that stopped us (SIGINT or SIGTERM), once one came.
received: int | None = None


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global received
    received = signum
    os.kill(os.getpid(), signal.SIGINT)


def install() -> None:
    """SIGTERM raises KeyboardInterrupt too (remembered as SIGTERM). A signal ignored
    when we started stays ignored (the ``nohup`` convention): Apache's piped-logger
    wrappers ignore SIGTERM so that ``gearman -n`` reads its input to the end."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
        signal.signal(signal.SIGTERM, _on_sigterm)


def handled(*signums: int) -> tuple[int, ...]:
    """Those of ``signums`` not ignored when we started (the ones to handle)."""
    return tuple(s for s in signums if signal.getsignal(s) is not signal.SIG_IGN)


def note(signum: int) -> None:
    """Remember a signal handled elsewhere (the worker drains on its first signal)."""
    global received
    if received is None:
        received = signum


def die(signum: int | None = None) -> int:
    """Die by ``signum`` (default: the one received, else SIGINT) with its default action.
    Returns an exit status only if the signal did not kill us."""
    sig = signum or received or signal.SIGINT
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
    os.kill(os.getpid(), sig)
    return 128 + sig

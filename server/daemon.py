"""The process around the server: detaching (-d), the pid file (-P), the user (-u), -f.

Plain POSIX calls, made before ``trio.run`` (detach, limits, pid file) or right after the
ports are bound (switching user), as the reference does.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import resource
import sys
from pathlib import Path

from protocol._pidfile import write_pid


class StartupError(Exception):
    """Start-up cannot go on; the message is one line for stderr."""


def set_file_descriptor_limit(limit: int) -> None:
    """``-f N``: RLIMIT_NOFILE soft (and, if needed, hard) limit to ``limit``."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new_hard = hard if hard == resource.RLIM_INFINITY or hard >= limit else limit
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, new_hard))
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StartupError(
            "Failed to set limit for the number of file descriptors.  Try running as root "
            f"or giving a smaller value to -f. ({reason})") from None


def lookup_user(name: str) -> pwd.struct_passwd:
    """The account ``-u`` names (a name or a numeric uid)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    if name.isdigit():
        try:
            return pwd.getpwuid(int(name))
        except KeyError:
            pass
    raise StartupError(f"Could not find user : {name}")


def switch_user(account: pwd.struct_passwd) -> None:
    """Become ``account`` for good: supplementary groups, gid, then uid."""
    if os.getuid() == account.pw_uid and os.geteuid() == account.pw_uid:
        return
    if os.geteuid() != 0:
        raise StartupError(f"Could not switch to user {account.pw_name}: "
                           "only root can change user")
    try:
        os.initgroups(account.pw_name, account.pw_gid)
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)
    except OSError as exc:
        raise StartupError(f"Could not switch to user {account.pw_name}: "
                           f"{exc.strerror or exc}") from None


class PidFile:
    """Our pid in a file, removed at exit only if it still holds our pid."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pid: int | None = None

    def write(self) -> None:
        """Write our pid; refuse (StartupError) a file whose process is alive."""
        pid = os.getpid()
        other = _live_pid(self.path)
        if other is not None and other != pid:
            raise StartupError(f"pid file {self.path} belongs to running process {other}; "
                               "not overwriting it")
        try:
            write_pid(str(self.path), pid)  # never seen empty or half written
        except OSError as exc:
            raise StartupError(f"Could not open pid file for writing: {self.path} "
                               f"({exc.strerror or exc})") from None
        self.pid = pid

    def remove(self) -> None:
        if self.pid is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if int(self.path.read_text(encoding="ascii").strip()) == self.pid:
                self.path.unlink()
        self.pid = None


def _live_pid(path: Path) -> int | None:
    """The pid in ``path`` when that process is alive, else None."""
    try:
        pid = int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # alive, someone else's
    return pid


class Readiness:
    """How a detached server tells the waiting command line that it is up (or why not).

    Without ``-d`` this does nothing but report failures on stderr.
    """

    def __init__(self, fd: int | None = None, *, echo: bool = True) -> None:
        self._fd = fd
        self._echo = echo  # False: the log already shows failures on stderr

    @property
    def detached(self) -> bool:
        return self._fd is not None

    def ready(self) -> None:
        self._send(b"R")

    def fail(self, message: str) -> None:
        """Report a start-up failure: on our stderr, and to the parent if detached."""
        line = f"gearmand: {message}"
        if self._fd is None and self._echo:
            print(line, file=sys.stderr, flush=True)
        self._send(b"E" + line.encode("utf-8", "backslashreplace"))

    def _send(self, data: bytes) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self._fd, data)
            os.close(self._fd)
        self._fd = None


def daemonize() -> Readiness:
    """``-d``: fork; the parent waits for the child's word, then exits 0 (up) or 1.

    The child starts a new session and points stdin, stdout and stderr at /dev/null.
    It keeps the current directory, so relative paths given to stores keep working.
    """
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        os._exit(_wait_for_child(read_fd))
    os.close(read_fd)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
    return Readiness(write_fd)


def _wait_for_child(read_fd: int) -> int:
    chunks: list[bytes] = []
    while chunk := os.read(read_fd, 4096):
        chunks.append(chunk)
    message = b"".join(chunks)
    if message.startswith(b"R"):
        return 0
    if message.startswith(b"E"):
        sys.stderr.write(message[1:].decode("utf-8", "replace") + "\n")
    else:
        sys.stderr.write("gearmand: the server exited during start-up (see its log)\n")
    sys.stderr.flush()
    return 1

"""Writing a pid file (``gearmand -P``, ``gearman -i``), shared by the server and the tool.

Here rather than in either: ``gearman`` must not import the server to start fast.
"""

from __future__ import annotations

import contextlib
import os


def write_pid(path: str, pid: int) -> None:
    """Write ``pid`` to ``path`` so that a reader (``kill $(cat FILE)``) never sees the file
    empty or half written: into a new file beside it, renamed into place. In place where
    that cannot be done: a directory we may not create files in (a pid file made for us
    in a directory of root's) or a symlink (written through, as before). ``OSError`` if
    neither can be written."""
    data = f"{pid}\n".encode("ascii")
    if not os.path.islink(path):
        head, name = os.path.split(path)
        temporary = os.path.join(head, f".{name}.{pid}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(temporary, flags, 0o666)
        except FileExistsError:
            os.unlink(temporary)  # left by a process of the same pid (not followed)
            fd = os.open(temporary, flags, 0o666)
        except PermissionError:
            fd = -1
        if fd >= 0:
            try:
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
            return
    with open(path, "wb") as f:
        f.write(data)

"""gearmand: a trio job server around an I/O-free job manager."""

from __future__ import annotations

# protocol first: it installs the finder of the optional compiled build (protocol/_native.py)
# before any server module of that build is imported.
import protocol  # noqa: F401

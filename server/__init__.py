"""gearmand: a trio job server around an I/O-free job manager."""

from __future__ import annotations

"""The Gearman client/worker library and the ``gearman`` and ``gearadmin`` commands."""

from __future__ import annotations

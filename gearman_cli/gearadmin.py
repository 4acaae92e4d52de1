"""The ``gearadmin`` command (not implemented yet)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run gearadmin (not implemented yet: exits 2)."""
    print("gearadmin: not implemented yet", file=sys.stderr)
    return 2

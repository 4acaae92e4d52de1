"""The ``gearman`` command (not implemented yet)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run gearman (not implemented yet: exits 2)."""
    print("gearman: not implemented yet", file=sys.stderr)
    return 2

"""Entry point of the ``gearmand`` command and of ``python -m server``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run gearmand (not implemented yet: exits 2)."""
    print("gearmand: not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

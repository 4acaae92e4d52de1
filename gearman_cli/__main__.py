"""``python -m gearman_cli`` runs the ``gearman`` command."""

from __future__ import annotations

import sys

from .gearman import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The reverse client on the library: prints the reverse of its argument."""

from __future__ import annotations

import os
import sys

from gearman_cli import Client


def main() -> None:
    text = sys.argv[1] if len(sys.argv) > 1 else "Hello World!"
    client = Client(os.environ.get("GEARMAN_SERVER", "localhost:4730"))
    print(client.do("reverse", text).decode())


if __name__ == "__main__":
    main()

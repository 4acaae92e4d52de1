#!/usr/bin/env python3
"""The tutorial's reverse client: prints each status and data packet, then the result."""

from __future__ import annotations

import argparse
import os
import sys

from gearman_cli import Client, Task


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("text", nargs="?", default="Hello World!")
    parser.add_argument("--function", default="reverse")
    args = parser.parse_args()
    client = Client(os.environ.get("GEARMAN_SERVER", "localhost:4730"))
    print("Sending job", flush=True)
    client.add_task(args.function, args.text)
    (task,) = client.run_tasks(
        on_status=lambda t: print(f"Status: {t.numerator}/{t.denominator} complete"),
        on_data=lambda t: print(f"Data: {t.data_chunks[-1].decode(errors='replace')}"),
    )
    return report(task)


def report(task: Task) -> int:
    if task.result is not None:
        print(f"Success: {task.result.decode(errors='replace')}")
        return 0
    if task.exception is not None:
        print(f"Exception: {task.exception.decode(errors='replace')}")
        return 1
    if task.error is not None:
        print(f"Error: {task.error}")
        return 1
    print("Failed")
    return 1


if __name__ == "__main__":
    sys.exit(main())

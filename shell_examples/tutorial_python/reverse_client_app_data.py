#!/usr/bin/env python3
"""Tasks carry application data; it comes back with the task in the completion callback."""

from __future__ import annotations

import os

from gearman_cli import Client, Task


def complete(task: Task) -> None:
    result = (task.result or b"").decode()
    print(f"COMPLETE: {task.unique.decode()}, {result}, app data: {task.app_data}")


def main() -> None:
    client = Client(os.environ.get("GEARMAN_SERVER", "localhost:4730"))
    client.add_task("reverse", "Hello World!", unique="1", app_data="x")
    client.add_task("reverse", "!dlroW olleH", unique="2", app_data="y")
    client.run_tasks(on_complete=complete)
    print("DONE")


if __name__ == "__main__":
    main()

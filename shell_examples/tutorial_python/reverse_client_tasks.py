#!/usr/bin/env python3
"""Two tasks run concurrently, every event reported by a callback (the tutorial's task client)."""

from __future__ import annotations

import os

from gearman_cli import Client, Task


def handle(task: Task) -> str:
    return (task.handle or b"").decode()


def main() -> None:
    client = Client(os.environ.get("GEARMAN_SERVER", "localhost:4730"))
    client.add_task("reverse", "foo", app_data={"foo": "bar"})
    client.add_task_low("reverse", "bar")
    client.run_tasks(
        on_created=lambda t: print(f"CREATED: {handle(t)}"),
        on_data=lambda t: print(f"DATA: {t.data_chunks[-1].decode()}"),
        on_status=lambda t: print(f"STATUS: {handle(t)} - {t.numerator}/{t.denominator}"),
        on_complete=lambda t: print(f"COMPLETE: {handle(t)}, {(t.result or b'').decode()}"),
        on_fail=lambda t: print(f"FAILED: {handle(t)}"),
    )
    print("DONE")


if __name__ == "__main__":
    main()

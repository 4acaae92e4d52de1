#!/usr/bin/env python3
"""The reverse worker on the library: the return value of the callback is the result."""

from __future__ import annotations

import contextlib
import os

from gearman_cli import Job, Worker


def reverse(job: Job) -> bytes:
    return job.data[::-1]


def main() -> None:
    worker = Worker(os.environ.get("GEARMAN_SERVER", "localhost:4730"))
    worker.add_function("reverse", reverse)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C stops the worker quietly
        worker.work_forever()


if __name__ == "__main__":
    main()

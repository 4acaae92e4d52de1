#!/usr/bin/env python3
"""A failing worker: ``reverse_fail`` reports progress then fails, ``reverse_exception`` raises."""

from __future__ import annotations

import contextlib
import os

from gearman_cli import Job, Worker


def reverse_fail(job: Job) -> None:
    print(f"Received job: {job.handle.decode()}, failing it", flush=True)
    job.send_status(1, 2)
    job.send_fail()  # WORK_FAIL: the client sees the job failed, with no reason given


def reverse_exception(job: Job) -> bytes:
    print(f"Received job: {job.handle.decode()}, raising", flush=True)
    raise ValueError(f"cannot reverse {job.data.decode(errors='replace')!r}")  # WORK_EXCEPTION


def main() -> None:
    worker = Worker(os.environ.get("GEARMAN_SERVER", "localhost:4730"))
    worker.add_function("reverse_fail", reverse_fail)
    worker.add_function("reverse_exception", reverse_exception)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C stops the worker quietly
        worker.work_forever()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The tutorial's reverse worker: a status and a data packet per character, then the result."""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable

from gearman_cli import Job, Worker


def make_reverse(delay: float) -> Callable[[Job], bytes]:
    def reverse(job: Job) -> bytes:
        print(f"Received job: {job.handle.decode()}", flush=True)
        workload = job.data
        size = len(workload)
        print(f"Workload: {workload.decode(errors='replace')} ({size})", flush=True)
        # This status loop is not needed, it just shows how it works.
        for x in range(size):
            print(f"Sending status: {x + 1}/{size} complete", flush=True)
            job.send_status(x + 1, size)
            job.send_data(workload[x : x + 1])
            time.sleep(delay)
        result = workload[::-1]
        print(f"Result: {result.decode(errors='replace')}", flush=True)
        return result

    return reverse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--delay", type=float, default=1.0, help="seconds per character")
    args = parser.parse_args()
    print("Starting", flush=True)
    worker = Worker(os.environ.get("GEARMAN_SERVER", "localhost:4730"))
    worker.add_function("reverse", make_reverse(args.delay))
    print("Waiting for job...", flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C stops the worker quietly
        worker.work_forever()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Print the status of background jobs by handle; with --wait, follow them until done."""

from __future__ import annotations

import argparse
import os
import sys
import time

from gearman_cli import Client, JobStatus


def describe(status: JobStatus) -> str:
    if not status.known:
        return "done"  # the server forgets a background job once it finished
    if not status.running:
        return "queued"
    if status.denominator:
        return f"running {status.numerator}/{status.denominator}"
    return "running"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("handles", nargs="+", metavar="HANDLE")
    parser.add_argument("--wait", action="store_true", help="poll until every job is done")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between polls")
    parser.add_argument("--timeout", type=float, default=60.0, help="give up after SECONDS")
    args = parser.parse_args()
    client = Client(os.environ.get("GEARMAN_SERVER", "localhost:4730"))
    last: dict[str, str] = {}
    deadline = time.monotonic() + args.timeout
    while True:
        for handle in args.handles:
            state = describe(client.job_status(handle))
            if last.get(handle) != state:  # print changes only
                print(f"{handle}: {state}", flush=True)
                last[handle] = state
        if not args.wait or all(state == "done" for state in last.values()):
            return 0
        if time.monotonic() > deadline:
            print("timed out", file=sys.stderr)
            return 1
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())

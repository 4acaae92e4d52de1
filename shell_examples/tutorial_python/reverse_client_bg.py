#!/usr/bin/env python3
"""Submit a background job, then poll its status by handle until the server forgets it."""

from __future__ import annotations

import argparse
import os
import time

from gearman_cli import Client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between polls")
    args = parser.parse_args()
    client = Client(os.environ.get("GEARMAN_SERVER", "localhost:4730"))
    handle = client.do_background("reverse", "this is a test")
    done = False
    while not done:
        time.sleep(args.interval)
        status = client.job_status(handle)
        if not status.known:  # a job the server still knows about is not done
            done = True
        running = "true" if status.running else "false"
        print(
            f"Running: {running}, numerator: {status.numerator}, "
            f"denominator: {status.denominator}",
            flush=True,
        )
    print("done!")


if __name__ == "__main__":
    main()

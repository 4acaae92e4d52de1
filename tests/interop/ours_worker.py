"""Our library's worker (gearman_cli.Worker) serving the interop functions; usage:
    ours_worker.py PORT LOGFILE
Each job appends one JSON line {"fn", "arg" (hex of the first 64 bytes), "len"} to LOGFILE."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

from gearman_cli import Job, Worker


def main() -> None:
    port, logfile = sys.argv[1], sys.argv[2]
    log = open(logfile, "a")  # noqa: SIM115 - open for the worker's whole life
    worker = Worker(f"127.0.0.1:{port}")

    def progress(job: Job) -> bytes:
        job.send_status(1, 3)
        job.send_data(b"d1")
        job.send_warning(b"w1")
        job.send_status(2, 3)
        job.send_data(b"d2")
        return b"done"

    def fail(job: Job) -> None:
        job.send_fail()

    def exception(job: Job) -> None:
        job.send_exception(b"boom")

    def gate(job: Job) -> bytes:
        job.send_status(1, 2)
        deadline = time.monotonic() + 20
        while not os.path.exists(job.data) and time.monotonic() < deadline:
            time.sleep(0.02)
        return b"opened"

    functions: dict[str, Callable[[Job], bytes | None]] = {
        "reverse": lambda job: job.data[::-1], "echo": lambda job: job.data,
        "progress": progress, "fail": fail, "exception": exception, "gate": gate,
    }

    def logged(name: str, code: Callable[[Job], bytes | None]) -> Callable[[Job], bytes | None]:
        def run(job: Job) -> bytes | None:
            log.write(json.dumps({"fn": name, "arg": job.data[:64].hex(),
                                  "len": len(job.data)}) + "\n")
            log.flush()
            return code(job)
        return run

    for name, code in functions.items():
        worker.add_function(name, logged(name, code))
    worker.work_forever()


if __name__ == "__main__":
    main()

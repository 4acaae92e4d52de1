"""pygearman's GearmanWorker serving the interop functions; usage:
    pygearman_worker.py PORT LOGFILE
Each job appends one JSON line {"fn", "arg" (hex of the first 64 bytes), "len"} to LOGFILE."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import gearman  # type: ignore[import-untyped]


class Boom(Exception):
    pass


class Worker(gearman.GearmanWorker):  # type: ignore[misc]
    def on_job_exception(self, current_job: Any, exc_info: Any) -> bool:
        # pygearman's documented hook: by default an exception is a bare WORK_FAIL.
        # GearmanWorker.send_job_exception sends WORK_EXCEPTION *and* WORK_FAIL; both
        # servers end the job at WORK_EXCEPTION and answer the WORK_FAIL with ERROR
        # JOB_NOT_FOUND, and pygearman stops reading at an ERROR, leaving a NOOP that came
        # in the same segment unread: the worker then sleeps forever with jobs queued. So
        # send WORK_EXCEPTION alone, through the connection's command handler.
        if isinstance(exc_info[1], Boom):
            self._get_handler_for_job(current_job).send_job_exception(current_job, b"boom")
            self.wait_until_updates_sent([current_job])
        else:
            self.send_job_failure(current_job)
        return False


def main() -> None:
    port, logfile = sys.argv[1], sys.argv[2]
    log = open(logfile, "a")  # noqa: SIM115 - open for the worker's whole life
    worker = Worker([f"127.0.0.1:{port}"])

    def reverse(w: Worker, job: Any, arg: bytes) -> bytes:
        return arg[::-1]

    def echo(w: Worker, job: Any, arg: bytes) -> bytes:
        return arg

    def progress(w: Worker, job: Any, arg: bytes) -> bytes:
        w.send_job_status(job, 1, 3)
        w.send_job_data(job, b"d1")
        w.send_job_warning(job, b"w1")
        w.send_job_status(job, 2, 3)
        w.send_job_data(job, b"d2")
        return b"done"

    def fail(w: Worker, job: Any, arg: bytes) -> bytes:
        raise RuntimeError("fail")

    def exception(w: Worker, job: Any, arg: bytes) -> bytes:
        raise Boom("boom")

    def gate(w: Worker, job: Any, arg: bytes) -> bytes:
        w.send_job_status(job, 1, 2)
        deadline = time.monotonic() + 20
        while not os.path.exists(arg) and time.monotonic() < deadline:
            time.sleep(0.02)
        return b"opened"

    functions: dict[str, Callable[[Worker, Any, bytes], bytes]] = {
        "reverse": reverse, "echo": echo, "progress": progress, "fail": fail,
        "exception": exception, "gate": gate,
    }

    def logged(name: str, code: Callable[[Worker, Any, bytes], bytes]
               ) -> Callable[[Worker, Any], bytes]:
        def run(w: Worker, job: Any) -> bytes:
            arg = job.data if isinstance(job.data, bytes) else job.data.encode("latin-1")
            log.write(json.dumps({"fn": name, "arg": arg[:64].hex(), "len": len(arg)}) + "\n")
            log.flush()
            return code(w, job, arg)
        return run

    for name, code in functions.items():
        worker.register_task(name.encode(), logged(name, code))
    worker.work(poll_timeout=1.0)


if __name__ == "__main__":
    main()

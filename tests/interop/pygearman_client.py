"""pygearman's GearmanClient driven by a JSON request on stdin; one JSON event per line on
stdout (see tests/interop/harness.py for the request and event shapes)."""

from __future__ import annotations

import json
import sys
from typing import Any

import gearman  # type: ignore[import-untyped]
from gearman.constants import (  # type: ignore[import-untyped]
    JOB_COMPLETE,
    JOB_CREATED,
    JOB_FAILED,
    PRIORITY_HIGH,
    PRIORITY_LOW,
    PRIORITY_NONE,
)

PRIORITIES = {"high": PRIORITY_HIGH, "low": PRIORITY_LOW, "normal": PRIORITY_NONE}


def emit(**event: Any) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _hex(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return (value.encode("latin-1") if isinstance(value, str) else value).hex()


def report(i: int, request: Any) -> None:
    """Every update pygearman collected for a finished request, then how it ended."""
    for chunk in request.data_updates:
        emit(ev="data", i=i, hex=_hex(chunk))
    for chunk in request.warning_updates:
        emit(ev="warning", i=i, hex=_hex(chunk))
    status = request.status
    if status and status.get("denominator"):
        emit(ev="status", i=i, n=status["numerator"], d=status["denominator"])
    if request.exception is not None:
        emit(ev="exception", i=i, hex=_hex(request.exception))
    if request.state == JOB_COMPLETE:
        emit(ev="complete", i=i, hex=_hex(request.result))
    elif request.state == JOB_FAILED:
        emit(ev="fail", i=i)
    elif request.timed_out:
        emit(ev="timeout", i=i)
    else:
        emit(ev="unknown", i=i, state=str(request.state))


def main() -> None:
    req = json.load(sys.stdin)
    timeout = float(req.get("timeout", 20))
    client = gearman.GearmanClient([f"127.0.0.1:{req['port']}"])
    mode = req["mode"]
    tasks = req.get("tasks", [])

    def job(task: dict[str, Any]) -> dict[str, Any]:
        return {"task": task["fn"], "data": bytes.fromhex(task["arg"]),
                "unique": task.get("unique"),
                "priority": PRIORITIES[task.get("priority") or "normal"]}

    if mode == "do":
        for i, task in enumerate(tasks):
            background = bool(task.get("background"))
            request = client.submit_job(**job(task), background=background,
                                        wait_until_complete=not background,
                                        poll_timeout=timeout)
            if background:
                emit(ev="created" if request.state == JOB_CREATED else "fail", i=i,
                     handle=_text(request.job.handle or ""))
            else:
                report(i, request)
    elif mode == "tasks":
        fg = [t for t in tasks if not t.get("background")]
        bg = [t for t in tasks if t.get("background")]
        order = [i for i, t in enumerate(tasks) if not t.get("background")]
        order += [i for i, t in enumerate(tasks) if t.get("background")]
        requests = []
        if fg:
            requests += client.submit_multiple_jobs([job(t) for t in fg], background=False,
                                                    wait_until_complete=False,
                                                    poll_timeout=timeout)
        if bg:
            requests += client.submit_multiple_jobs([job(t) for t in bg], background=True,
                                                    wait_until_complete=False,
                                                    poll_timeout=timeout)
        for i, request in sorted(zip(order, requests, strict=True)):
            emit(ev="created", i=i, handle=_text(request.job.handle or ""))
        waiting = [(i, r) for i, r in zip(order, requests, strict=True) if not r.background]
        done = client.wait_until_jobs_completed([r for _, r in waiting], poll_timeout=timeout)
        for (i, _), request in zip(waiting, done, strict=True):
            report(i, request)
    elif mode == "status":
        for i, handle in enumerate(req["handles"]):
            # a request object for a handle we did not submit, as pygearman's docs suggest
            fake = gearman.job.GearmanJobRequest(
                gearman.job.GearmanJob(None, handle.encode(), None, None, None))
            conn = client.establish_connection(client.connection_list[0])
            fake.job.connection = conn
            fake.state = JOB_CREATED
            result = client.get_job_status(fake, poll_timeout=timeout)
            st = result.status
            emit(ev="jobstatus", i=i, known=bool(st.get("known")), running=bool(st.get("running")),
                 n=int(st.get("numerator", 0)), d=int(st.get("denominator", 0)))
    else:
        raise SystemExit(f"unknown mode {mode}")
    emit(ev="end")


if __name__ == "__main__":
    main()

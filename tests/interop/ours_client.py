"""Our library's client (gearman_cli.Client) driven by a JSON request on stdin; one JSON event
per line on stdout (see tests/interop/harness.py for the request and event shapes)."""

from __future__ import annotations

import json
import sys
from typing import Any

from gearman_cli import Client, GearmanError, JobExceptionError, Task
from protocol import Priority

PRIORITIES = {"high": Priority.HIGH, "low": Priority.LOW, "normal": Priority.NORMAL}


def emit(**event: Any) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def main() -> None:
    req = json.load(sys.stdin)
    client = Client(f"127.0.0.1:{req['port']}", exceptions=bool(req.get("exceptions")))
    mode = req["mode"]
    tasks = req.get("tasks", [])
    if mode == "do":
        for i, t in enumerate(tasks):
            prio = t.get("priority") or "normal"
            arg = bytes.fromhex(t["arg"])
            unique = t.get("unique")
            try:
                if t.get("background"):
                    call = {"high": client.do_high_background, "low": client.do_low_background,
                            "normal": client.do_background}[prio]
                    emit(ev="created", i=i, handle=call(t["fn"], arg, unique=unique).decode())
                else:
                    call = {"high": client.do_high, "low": client.do_low,
                            "normal": client.do}[prio]
                    emit(ev="complete", i=i, hex=call(t["fn"], arg, unique=unique).hex())
            except JobExceptionError as exc:
                emit(ev="exception", i=i, hex=(exc.data or b"").hex())
            except GearmanError as exc:
                emit(ev="fail", i=i, error=str(exc))
    elif mode == "tasks":
        todo = [Task(t["fn"], bytes.fromhex(t["arg"]), unique=t.get("unique"),
                     priority=PRIORITIES[t.get("priority") or "normal"],
                     background=bool(t.get("background")), app_data=i)
                for i, t in enumerate(tasks)]

        def handle(task: Task) -> str:
            return (task.handle or b"").decode()

        client.run_tasks(
            todo,
            on_created=lambda t: emit(ev="created", i=t.app_data, handle=handle(t)),
            on_data=lambda t: emit(ev="data", i=t.app_data, hex=t.data_chunks[-1].hex()),
            on_warning=lambda t: emit(ev="warning", i=t.app_data, hex=t.warnings[-1].hex()),
            on_status=lambda t: emit(ev="status", i=t.app_data, n=t.numerator,
                                     d=t.denominator),
            on_complete=lambda t: t.background or emit(ev="complete", i=t.app_data,
                                                       hex=(t.result or b"").hex()),
            on_fail=lambda t: emit(ev="fail", i=t.app_data),
            on_exception=lambda t: emit(ev="exception", i=t.app_data,
                                        hex=(t.exception or b"").hex()),
        )
    elif mode == "status":
        for i, h in enumerate(req["handles"]):
            st = client.job_status(h)
            emit(ev="jobstatus", i=i, known=st.known, running=st.running, n=st.numerator,
                 d=st.denominator)
    else:
        raise SystemExit(f"unknown mode {mode}")
    emit(ev="end")


if __name__ == "__main__":
    main()

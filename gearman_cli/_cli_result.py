"""``gearman --result HANDLE``: a background job's result from our gearmand's result
cache (``--result-ttl``), on stdout; the state decides the exit status."""

from __future__ import annotations

import sys

from ._blocking import Client
from ._cli_options import ExitCode, GearmanOptions
from ._errors import GearmanError


def run_result(opts: GearmanOptions) -> int:
    assert opts.result is not None
    timeout = opts.timeout_ms / 1000 if opts.timeout_ms else 5.0
    client = Client(list(opts.servers), connect_timeout=timeout, ssl=opts.tls or False)
    try:
        if opts.functions:
            answer = client.result(opts.functions[0], unique=opts.result)
        else:
            answer = client.result(opts.result)
    except ValueError as exc:
        sys.stderr.write(f"gearman: --result: {exc}\n")
        return int(ExitCode.USAGE)
    except GearmanError as exc:
        sys.stderr.write(f"gearman: {exc}\n")
        return int(ExitCode.NO_SERVER)
    if answer.state == "done":
        sys.stdout.buffer.write(answer.data or b"")
        sys.stdout.flush()
        return int(ExitCode.OK)
    if answer.state == "failed":
        text = (answer.data or b"").decode("utf-8", "replace")
        sys.stderr.write(f"gearman: job {opts.result} failed after {answer.attempts} "
                         f"attempt(s): {text}\n")
        return int(ExitCode.JOB_FAILED)
    if answer.state in ("queued", "running"):
        sys.stderr.write(f"gearman: job {opts.result} is {answer.state}\n")
        return int(ExitCode.NOT_DONE)
    sys.stderr.write(f"gearman: job {opts.result}: no result (unknown, or expired)\n")
    return int(ExitCode.TIMEOUT)

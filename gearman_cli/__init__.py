"""The Gearman client/worker library and the ``gearman`` and ``gearadmin`` commands.

Blocking classes for plain scripts (``Client``, ``Admin``: plain sockets, no trio;
``Worker``: runs ``trio.run``) and trio-native ones (``AsyncClient``, ``AsyncWorker``,
``AsyncAdmin``). See the module docstrings of ``_blocking``, ``client``, ``worker`` and
``admin`` for examples.

Names are imported on first use (PEP 562), so ``import gearman_cli`` costs nothing and a
blocking client never loads trio.
"""

from __future__ import annotations

import importlib

#: Not ``typing.TYPE_CHECKING``: importing typing costs start-up time (mypy knows the name).
TYPE_CHECKING = False

#: Public name -> the module that defines it.
_WHERE = {
    "AdminError": "._errors",
    "ConnectionLostError": "._errors",
    "GearmanError": "._errors",
    "JobExceptionError": "._errors",
    "JobFailedError": "._errors",
    "NoServerError": "._errors",
    "ServerError": "._errors",
    "DEFAULT_PORT": "._servers",
    "ServerAddress": "._servers",
    "default_servers": "._servers",
    "parse_servers": "._servers",
    "TlsSetupError": "._tls",
    "tls_context": "._tls",
    "Admin": "._admin_sync",
    "AdminReply": "._admin_core",
    "FunctionStatus": "._admin_core",
    "JobInfo": "._admin_core",
    "JobResult": "._admin_core",
    "DeadLetterInfo": "._admin_core",
    "PriorityStatus": "._admin_core",
    "WorkerInfo": "._admin_core",
    "AsyncAdmin": ".admin",
    "AsyncClient": ".client",
    "Client": "._blocking",
    "BackgroundBatch": "._task",
    "JobStatus": "._task",
    "Task": "._task",
    "TaskCallback": "._task",
    "TaskCallbacks": "._task",
    "TaskState": "._task",
    "AsyncWorker": ".worker",
    "Job": ".worker",
    "JobCallback": ".worker",
    "Worker": ".worker",
}

__all__ = [
    "DEFAULT_PORT",
    "Admin",
    "AdminError",
    "AdminReply",
    "AsyncAdmin",
    "AsyncClient",
    "AsyncWorker",
    "BackgroundBatch",
    "Client",
    "ConnectionLostError",
    "DeadLetterInfo",
    "FunctionStatus",
    "GearmanError",
    "Job",
    "JobCallback",
    "JobExceptionError",
    "JobFailedError",
    "JobInfo",
    "JobResult",
    "JobStatus",
    "NoServerError",
    "PriorityStatus",
    "ServerAddress",
    "ServerError",
    "Task",
    "TaskCallback",
    "TaskCallbacks",
    "TaskState",
    "TlsSetupError",
    "Worker",
    "WorkerInfo",
    "default_servers",
    "parse_servers",
    "tls_context",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'gearman_cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


if TYPE_CHECKING:
    from typing import Any

    from ._admin_core import (
        AdminReply,
        DeadLetterInfo,
        FunctionStatus,
        JobInfo,
        JobResult,
        PriorityStatus,
        WorkerInfo,
    )
    from ._admin_sync import Admin
    from ._blocking import Client
    from ._errors import (
        AdminError,
        ConnectionLostError,
        GearmanError,
        JobExceptionError,
        JobFailedError,
        NoServerError,
        ServerError,
    )
    from ._servers import DEFAULT_PORT, ServerAddress, default_servers, parse_servers
    from ._task import BackgroundBatch, JobStatus, Task, TaskCallback, TaskCallbacks, TaskState
    from ._tls import TlsSetupError, tls_context
    from .admin import AsyncAdmin
    from .client import AsyncClient
    from .worker import AsyncWorker, Job, JobCallback, Worker

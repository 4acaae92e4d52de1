"""The Gearman client/worker library and the ``gearman`` and ``gearadmin`` commands.

The library is trio-native (``AsyncClient``, ``AsyncWorker``, ``AsyncAdmin``) with blocking
facades for plain scripts (``Client``, ``Worker``, ``Admin``: each call runs ``trio.run``).
See the ``client``, ``worker`` and ``admin`` module docstrings for examples.
"""

from __future__ import annotations

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
from .admin import (
    Admin,
    AdminReply,
    AsyncAdmin,
    FunctionStatus,
    JobInfo,
    PriorityStatus,
    WorkerInfo,
)
from .client import (
    AsyncClient,
    BackgroundBatch,
    Client,
    JobStatus,
    Task,
    TaskCallback,
    TaskCallbacks,
    TaskState,
)
from .worker import AsyncWorker, Job, JobCallback, Worker

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
    "FunctionStatus",
    "GearmanError",
    "Job",
    "JobCallback",
    "JobExceptionError",
    "JobFailedError",
    "JobInfo",
    "JobStatus",
    "NoServerError",
    "PriorityStatus",
    "ServerAddress",
    "ServerError",
    "Task",
    "TaskCallback",
    "TaskCallbacks",
    "TaskState",
    "Worker",
    "WorkerInfo",
    "default_servers",
    "parse_servers",
]

"""outlast: finish the work an HTTP request starts, whatever happens to the request."""

from __future__ import annotations

from outlast.client import (
    APIError,
    AsyncClient,
    AuthError,
    BatchResult,
    Client,
    ClientError,
    InvalidResponse,
    JobEvent,
    JobInfo,
    JobNotFound,
    JobPage,
    Reconnect,
    RequestRejected,
    ServerBusy,
    ServerUnreachable,
)
from outlast.errors import OutlastError
from outlast.executors import TaskFailure
from outlast.tasks import App, Job

__all__ = [
    "APIError",
    "App",
    "AsyncClient",
    "AuthError",
    "BatchResult",
    "Client",
    "ClientError",
    "InvalidResponse",
    "Job",
    "JobEvent",
    "JobInfo",
    "JobNotFound",
    "JobPage",
    "OutlastError",
    "Reconnect",
    "RequestRejected",
    "ServerBusy",
    "ServerUnreachable",
    "TaskFailure",
]

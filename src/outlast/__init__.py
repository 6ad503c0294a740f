"""outlast: finish the work an HTTP request starts, whatever happens to the request."""

from __future__ import annotations

from outlast.errors import OutlastError
from outlast.executors import TaskFailure
from outlast.tasks import App, Job

__all__ = ["App", "Job", "OutlastError", "TaskFailure"]

"""What a worker runs for a job: a user's Python task, or a built-in (``http``, ``relay``).

An executor is an async callable ``(ctx) -> result``. It raises :class:`TaskFailure` (with an
error code and whether a retry may help) for failures it understands; anything else is an
``exception`` failure, retried while attempts remain.
"""

from __future__ import annotations

from typing import Any

from outlast.errors import OutlastError


class TaskFailure(OutlastError):
    """An attempt failed in a way the executor understands: ``code`` names it for the job's
    ``error``, and ``retryable`` says whether another attempt may help."""

    def __init__(self, code: str, message: str, *, retryable: bool = True, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.details = details

    def error(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}

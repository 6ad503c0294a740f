"""One exception tree for everything outlast raises on purpose.

::

    OutlastError
    ├── ConfigError              bad settings; names the key
    ├── StoreError               the store failed or cannot be reached
    │   ├── StoreUnavailable     transient: retry later (HTTP 503 + Retry-After)
    │   └── StoreTooNew          the store's schema is newer than this outlast (store/versions.py)
    ├── LeaseLost                a worker no longer owns the job it was running
    ├── TaskFailure              a job's attempt failed in a way its executor understands
    │                            (executors/__init__.py: an error code, retryable or not)
    ├── TaskWait                 an attempt cannot go on yet (an upstream's limits): the job
    │                            waits in its queue without spending the attempt
    ├── EgressRefused            an outbound request to a host the egress rules refuse (egress.py)
    ├── SSELimitError            an SSE line or event over its size limit (sse.py)
    ├── ClientError              what outlast.Client / AsyncClient raise (client_types.py)
    │   ├── ServerUnreachable    no answer: refused, dropped or timed out
    │   ├── InvalidResponse      an answer the API never sends
    │   └── APIError             an error answer: status, code, message
    │       ├── AuthError        401 / 403
    │       ├── JobNotFound      404
    │       ├── RequestRejected  400, 409, 413, 422: wrong as sent
    │       └── ServerBusy       429 / 503: retry after retry_after seconds
    ├── WebhookVerificationError a webhook's signature or timestamp does not verify
    └── RequestError             a request that cannot be served as asked (HTTP 4xx)
        ├── BadRequest           400  malformed header, offset, body
        ├── Unauthorized         401
        ├── Forbidden            403  (also: stale producer epoch)
        ├── NotFound             404
        ├── MethodNotAllowed     405
        ├── Conflict             409  (content type, Stream-Seq, closed stream, producer gap)
        ├── Gone                 410
        ├── PayloadTooLarge      413
        ├── Unprocessable        422  (names the field)
        ├── QueueFull            429 + Retry-After
        └── ServiceUnavailable   503 + Retry-After (draining)

A :class:`RequestError` carries its HTTP status, a short machine-readable ``code``, a message for
people and any extra response headers. The API renders every one of them as
``{"error": {"code": ..., "message": ...}}``. Foreign exceptions are translated at the boundary
where they are caught (``raise StoreUnavailable(...) from exc``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple


class OutlastError(Exception):
    """The root of every error outlast raises on purpose."""


class ConfigError(OutlastError):
    """The configuration is invalid; the message names the offending key."""


class StoreError(OutlastError):
    """The store failed."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now; the caller may retry."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LeaseLost(OutlastError):
    """The worker no longer owns the job: its lease expired and the job moved on without it."""


class WebhookVerificationError(OutlastError):
    """A webhook request does not verify (:func:`outlast.webhooks.verify`): missing headers, a
    timestamp too far from now, or no signature made with the secret."""


class Refusal(NamedTuple):
    """An error answer given before a request reaches its endpoint (by the connection layer or
    the browser guard, on any route): its status and code. The OpenAPI document lists each."""

    status: int
    code: str


class RequestError(OutlastError):
    status: int = 400
    code: str = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})
        self.extra: dict[str, object] = dict(extra or {})

    def body(self) -> dict[str, object]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


class BadRequest(RequestError):
    status = 400
    code = "bad_request"


class Unauthorized(RequestError):
    status = 401
    code = "unauthorized"


class Forbidden(RequestError):
    status = 403
    code = "forbidden"


class NotFound(RequestError):
    status = 404
    code = "not_found"


class MethodNotAllowed(RequestError):
    status = 405
    code = "method_not_allowed"


class Conflict(RequestError):
    status = 409
    code = "conflict"


class Gone(RequestError):
    status = 410
    code = "gone"


class PayloadTooLarge(RequestError):
    status = 413
    code = "payload_too_large"


class Unprocessable(RequestError):
    status = 422
    code = "invalid"


class ServiceUnavailable(RequestError):
    status = 503
    code = "unavailable"


class QueueFull(RequestError):
    status = 429
    code = "queue_full"

    def __init__(self, queue: str, capacity: int, *, retry_after: int = 1) -> None:
        super().__init__(
            f"queue {queue!r} is at capacity ({capacity} waiting jobs); retry later",
            headers={"Retry-After": str(retry_after)},
            extra={"retry_after": retry_after},
        )
        self.queue = queue
        self.capacity = capacity
        self.retry_after = retry_after

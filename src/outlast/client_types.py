"""What a client of outlast gets back: the job (:class:`JobInfo`), a page of jobs, one event
of a job, and the client's exceptions, with the functions that translate httpx's answers and
errors into them at the boundary. Pure data; :mod:`outlast.client` does the I/O.

Everything the client raises on purpose is an :class:`outlast.errors.OutlastError`::

    ClientError              anything the client raises on purpose
    ├── ServerUnreachable    no answer: connection refused or dropped, timeout, bad URL
    ├── InvalidResponse      an answer the API would never give (not JSON, no event stream)
    └── APIError             an error answer: .status, .code, .message, .field, .retry_after
        ├── AuthError        401, 403: a token is missing, wrong or lacks a scope
        ├── JobNotFound      404
        ├── RequestRejected  400, 409, 413, 422: this request will never succeed as it is
        └── ServerBusy       429 (queue full), 503 (draining): retry after .retry_after seconds
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from outlast.errors import OutlastError
from outlast.models import JobState
from outlast.sse import SSEEvent

OUTLAST_EVENT_PREFIX = "outlast."


# -- errors ---------------------------------------------------------------------------------


class ClientError(OutlastError):
    """Anything the client raises on purpose."""


class ServerUnreachable(ClientError):
    """No answer from the server: the connection was refused, dropped or timed out."""


class InvalidResponse(ClientError):
    """The server answered something the outlast API never sends."""


class APIError(ClientError):
    """The server answered with an error: ``{"error": {"code", "message"}}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        retry_after: float | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field  # the offending request field, for 422
        self.retry_after = retry_after  # seconds, for 429 and 503
        self.body = body


class AuthError(APIError):
    """401 or 403: the token is missing or wrong, or lacks the scope this call needs."""


class JobNotFound(APIError):
    """404: no such job (or it was removed after its retention time)."""


class RequestRejected(APIError):
    """400, 409, 413, 422: the request is wrong as it is; sending it again will not help."""


class ServerBusy(APIError):
    """429 (the queue is full) or 503 (the server is draining): try again after
    :attr:`retry_after` seconds. Nothing was accepted."""


def _error_class(status: int) -> type[APIError]:
    if status in (401, 403):
        return AuthError
    if status == 404:
        return JobNotFound
    if status in (429, 503):
        return ServerBusy
    if 400 <= status < 500:
        return RequestRejected
    return APIError


def _retry_after(header: str | None, error: dict[str, Any]) -> float | None:
    for value in (header, error.get("retry_after")):
        if value is None:
            continue
        try:
            return max(0.0, float(value))
        except (TypeError, ValueError):
            continue
    return None


def api_error(response: httpx.Response) -> APIError:
    """Translate an error answer (already read) into the exception for its status."""
    body: Any = None
    error: dict[str, Any] = {}
    with contextlib.suppress(ValueError):
        body = response.json()
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
    return _api_error(
        response.status_code,
        error,
        response.reason_phrase,
        _retry_after(response.headers.get("retry-after"), error),
        body,
    )


def _api_error(
    status: int, error: dict[str, Any], reason: str, retry_after: float | None, body: Any
) -> APIError:
    code = str(error.get("code") or f"http_{status}")
    message = str(error.get("message") or reason or "error")
    field = error.get("field")
    return _error_class(status)(
        status,
        code,
        message,
        field=field if isinstance(field, str) else None,
        retry_after=retry_after,
        body=body,
    )


def unreachable(url: str, exc: httpx.TransportError) -> ServerUnreachable:
    if isinstance(exc, httpx.TimeoutException):
        why = "timed out"
    elif isinstance(exc, httpx.ConnectError):
        why = "connection refused" if "refused" in str(exc).lower() else f"cannot connect ({exc})"
    elif isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        why = f"connection dropped ({exc or type(exc).__name__})"
    else:
        why = str(exc) or type(exc).__name__
    return ServerUnreachable(f"cannot reach outlast at {url}: {why}")


def json_body(response: httpx.Response) -> Any:
    """The body of a successful answer, or the error it carries as an exception."""
    if response.status_code >= 400:
        raise api_error(response)
    try:
        return response.json()
    except ValueError as exc:
        raise InvalidResponse(
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code} without a JSON body"
        ) from exc


# -- data -----------------------------------------------------------------------------------


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class JobInfo:
    """A job as the server showed it. :attr:`raw` holds the JSON it came from, unchanged."""

    id: str
    task: str
    queue: str
    state: JobState
    input: Any
    result: Any
    error: dict[str, Any] | None
    attempt: int
    max_attempts: int
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    events_url: str
    stream_url: str
    raw: dict[str, Any]

    @property
    def terminal(self) -> bool:
        """True once the job succeeded, failed or was cancelled: it will not change again."""
        return self.state.terminal

    @classmethod
    def from_json(cls, body: Any) -> JobInfo:
        if not isinstance(body, dict):
            raise InvalidResponse(f"expected a job, got {type(body).__name__}")
        try:
            return cls(
                id=str(body["id"]),
                task=str(body["task"]),
                queue=str(body["queue"]),
                state=JobState(body["state"]),
                input=body.get("input"),
                result=body.get("result"),
                error=body.get("error"),
                attempt=int(body.get("attempt") or 0),
                max_attempts=int(body.get("max_attempts") or 0),
                created_at=_timestamp(body.get("created_at")),
                started_at=_timestamp(body.get("started_at")),
                finished_at=_timestamp(body.get("finished_at")),
                events_url=str(body.get("events", "")),
                stream_url=str(body.get("stream", "")),
                raw=body,
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidResponse(f"malformed job in the answer: {exc!r}") from exc


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of :meth:`Client.list`, newest first; pass :attr:`next` as ``cursor`` for more."""

    jobs: list[JobInfo]
    next: str | None

    @classmethod
    def from_json(cls, body: Any) -> JobPage:
        if not isinstance(body, dict) or not isinstance(body.get("jobs"), list):
            raise InvalidResponse("expected {'jobs': [...], 'next': ...}")
        cursor = body.get("next")
        return cls([JobInfo.from_json(job) for job in body["jobs"]], cursor or None)


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One job's answer in a batch submit, in the order sent: :attr:`job` when it was admitted
    (``status`` 202) or its idempotency key found it (200); else :attr:`error`, the exception
    a single :meth:`Client.submit` of it would have raised (not raised here)."""

    status: int
    job: JobInfo | None
    error: APIError | None

    @property
    def created(self) -> bool:
        return self.status == 202

    @classmethod
    def from_json(cls, entry: Any, index: int = 0, sent_as: int = 0) -> BatchResult:
        """One entry of a batch's answer; the job was *index* of those given and *sent_as*
        of its request (a field named ``jobs[sent_as].…`` is renamed ``jobs[index].…``)."""
        if not isinstance(entry, dict) or not isinstance(entry.get("status"), int):
            raise InvalidResponse("malformed entry in a batch's answer")
        status: int = entry["status"]
        if status < 400:
            return cls(status, JobInfo.from_json(entry.get("job")), None)
        error = entry.get("error")
        if not isinstance(error, dict):
            raise InvalidResponse(f"a batch entry with status {status} and no error")
        if index != sent_as:
            error = _renumbered(error, f"jobs[{sent_as}]", f"jobs[{index}]")
        return cls(status, None, _api_error(status, error, "", _retry_after(None, error), entry))

    @classmethod
    def list_from_json(cls, body: Any, sent: int, first: int = 0) -> list[BatchResult]:
        """The answer to one batch request of *sent* jobs, the first of them job *first* of
        those given."""
        entries = body.get("jobs") if isinstance(body, dict) else None
        if not isinstance(entries, list) or len(entries) != sent:
            raise InvalidResponse(f"expected {{'jobs': [...]}} with {sent} answers")
        return [cls.from_json(entry, first + n, n) for n, entry in enumerate(entries)]


def _renumbered(error: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    out = dict(error)
    for name in ("field", "message"):
        value = out.get(name)
        if isinstance(value, str) and value.startswith(old):
            out[name] = new + value[len(old) :]
    return out


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One event of a job, as the native SSE view sends it.

    :attr:`message` is the job-stream message: ``{"type": "state" | "output" | "result" |
    "error", ...}`` for outlast's own events, and ``{"type": "event", "event", "data"}`` for the
    upstream events a relay passes through. :attr:`id` is the stream offset after the event:
    ``events(job_id, offset=event.id)`` resumes right after it.
    """

    id: str
    event: str
    data: str
    message: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.message.get("type", "event"))

    @property
    def ends_job(self) -> bool:
        """The job's last event: its terminal state, after which the stream is closed."""
        if self.type != "state":
            return False
        try:
            return JobState(str(self.message.get("state"))).terminal
        except ValueError:
            return False

    @classmethod
    def from_sse(cls, sse: SSEEvent, offset: str) -> JobEvent:
        message: dict[str, Any]
        if sse.event.startswith(OUTLAST_EVENT_PREFIX):
            kind = sse.event[len(OUTLAST_EVENT_PREFIX) :]
            try:
                decoded = json.loads(sse.data)
            except ValueError:
                decoded = None
            message = decoded if isinstance(decoded, dict) else {"type": kind, "data": sse.data}
        else:
            message = {"type": "event", "event": sse.event, "data": sse.data}
        return cls(id=offset, event=sse.event, data=sse.data, message=message)

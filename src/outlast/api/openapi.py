"""``GET /openapi.json``: the OpenAPI 3.1 document of the JSON API (jobs, queues, relays, ops).

The stream endpoints speak the Durable Streams protocol (docs/streams.md); their operations,
headers and statuses are listed here too. Every secured operation documents 401 and 403; every
operation refers to the shared responses (``components/responses``) of what the connection layer
and the browser guard refuse before any endpoint runs (408, 431, 503, 403 and, for JSON writes,
415). The document is checked against the server by a schemathesis run
(tests/security/test_openapi_fuzz.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

from starlette.requests import Request
from starlette.responses import JSONResponse

from outlast.api.jobs import MAX_BATCH, MAX_PAGE
from outlast.api.middleware import (
    FORBIDDEN_HOST,
    FORBIDDEN_ORIGIN,
    STORE_UNAVAILABLE,
    UNSUPPORTED_MEDIA_TYPE,
    checks_content_type,
)
from outlast.boundary import MAX_DEPTH
from outlast.connections import HEADERS_TOO_LARGE, REQUEST_TIMEOUT, TOO_MANY_CONNECTIONS
from outlast.errors import Refusal
from outlast.models import JOB_ID_PATTERN, ErrorCode, JobState
from outlast.store.webhooks_logic import ALL_EVENTS as WEBHOOK_EVENTS


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    response = _json(_ref("Error"), description)
    if retry_after:
        response["headers"] = {
            "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
        }
    return response


# How any submission of a job may be refused besides its own validation.
ADMISSION = {
    "413": _error("Body too large"),
    "429": _error("The queue is at capacity", retry_after=True),
    "503": _error("Shutting down", retry_after=True),
}

JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^" + JOB_ID_PATTERN + "$"},
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": "string", "description": "The offending field (422)"},
                    "retry_after": {"type": "integer", "description": "Seconds (429)"},
                },
            }
        },
    },
    "Submission": {
        "type": "object",
        "required": ["task"],
        "additionalProperties": False,
        "properties": {
            "task": {"type": "string", "description": "A registered task, or relay / http"},
            "input": {"description": "JSON; for Python tasks an object of keyword arguments"},
            "queue": {"type": "string", "default": "the task's queue"},
            "timeout": {"type": "number", "description": "Seconds per attempt"},
            "retries": {"type": "integer", "minimum": 0},
            "delay": {
                "type": "number",
                "minimum": 0,
                "description": "Seconds before the first attempt",
            },
            "key": {"type": "string", "maxLength": 255, "description": "Idempotency key"},
            "priority": {
                "type": "integer",
                "minimum": -100,
                "maximum": 100,
                "default": 0,
                "description": "Higher starts first within the queue",
            },
            "concurrency_key": {
                "type": "string",
                "description": "Up to 200 bytes: keys take turns; the queue's "
                "per_key_concurrency caps one key's running jobs",
            },
            "callback": {
                "description": "A completion webhook (docs/webhooks.md): a URL, or url + events",
                "oneOf": [
                    {"type": "string", "format": "uri"},
                    {
                        "type": "object",
                        "required": ["url"],
                        "additionalProperties": False,
                        "properties": {
                            "url": {"type": "string", "format": "uri"},
                            "events": {
                                "type": "array",
                                "items": {"type": "string", "enum": list(WEBHOOK_EVENTS)},
                                "default": list(WEBHOOK_EVENTS),
                            },
                        },
                    },
                ],
            },
        },
    },
    "Callback": {
        "type": "object",
        "description": "The completion webhook asked for, and its delivery",
        "properties": {
            "url": {"type": "string"},
            "events": {"type": "array", "items": {"type": "string"}},
            "state": {
                "type": ["string", "null"],
                "enum": ["pending", "delivered", "failed", None],
                "description": "null until the job ends with an event asked for",
            },
            "attempts": {"type": "integer"},
            "last_status": {"type": ["integer", "null"]},
            "last_error": {"type": ["string", "null"]},
            "next_attempt_at": {"type": ["string", "null"], "format": "date-time"},
        },
    },
    "Job": {
        "type": "object",
        "properties": {
            "id": {"type": "string", "pattern": "^" + JOB_ID_PATTERN + "$"},
            "task": {"type": "string"},
            "queue": {"type": "string"},
            "state": {"type": "string", "enum": [s.value for s in JobState]},
            "input": {},
            "result": {},
            "error": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "properties": {
                            "code": {"type": "string", "enum": [c.value for c in ErrorCode]},
                            "message": {"type": "string"},
                        },
                    },
                ]
            },
            "attempt": {"type": "integer"},
            "max_attempts": {"type": "integer"},
            "timeout": {"type": "number"},
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": {"type": ["string", "null"], "format": "date-time"},
            "finished_at": {"type": ["string", "null"], "format": "date-time"},
            "key": {"type": "string", "description": "The idempotency key, when given"},
            "priority": {"type": "integer"},
            "concurrency_key": {"type": ["string", "null"]},
            "retry_of": {"type": "string", "description": "The job this one retries, if any"},
            "waiting": {
                "type": "object",
                "description": "While queued waiting for an upstream's limits",
                "properties": {
                    "reason": {
                        "type": "string",
                        "enum": ["upstream_rate_limited", "upstream_concurrency"],
                    },
                    "until": {"type": "string", "format": "date-time"},
                },
            },
            "stream": {"type": "string", "description": "The job's durable stream (JSON mode)"},
            "events": {"type": "string", "description": "The job's events as native SSE"},
            "callback": _ref("Callback"),
        },
    },
    "JobPage": {
        "type": "object",
        "properties": {
            "jobs": {"type": "array", "items": _ref("Job")},
            "next": {"type": ["string", "null"], "description": "Cursor for the next page"},
        },
    },
    "Queue": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "concurrency": {"type": "integer"},
            "capacity": {"type": "integer"},
            "paused": {"type": "boolean"},
            **{s.value: {"type": "integer"} for s in JobState},
        },
    },
    "Queues": {
        "type": "object",
        "properties": {"queues": {"type": "array", "items": _ref("Queue")}},
    },
}
QUEUE_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
FLOW_HEADERS = [
    {"name": "Outlast-Priority", "in": "header", "schema": {"type": "integer"}},
    {"name": "Outlast-Concurrency-Key", "in": "header", "schema": {"type": "string"}},
]

SSE = {"text/event-stream": {"schema": {"type": "string"}}}
# A stream's bytes are served with the stream's own content type.
ANY: dict[str, Any] = {"*/*": {"schema": {}}}
STREAM_HEADERS_DOC = "Stream-Next-Offset, Stream-Up-To-Date, Stream-Closed, Stream-Cursor, ETag"


def _header(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _raw(description: str, content: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description}
    if content is not None:
        response["content"] = content
    return response


WHOLE = {"type": "string", "pattern": "^(0|[1-9][0-9]{0,17})$"}


class _WriteHeader(NamedTuple):
    """A write header of the stream protocol: what it means when a stream is created (PUT) and
    on an append (POST); None where that operation does not take it."""

    name: str
    create: str | None
    append: str | None
    schema: dict[str, Any] | None = None


STREAM_WRITE_HEADERS = [
    _WriteHeader(
        "Content-Type",
        "The stream's type (default application/octet-stream)",
        "Must match the stream's",
    ),
    _WriteHeader("Stream-TTL", "Seconds of idleness before it expires", None, WHOLE),
    _WriteHeader("Stream-Expires-At", "RFC 3339 expiry (not with Stream-TTL)", None),
    _WriteHeader("Stream-Closed", "true: create it closed", "true: close after this append"),
    _WriteHeader("Stream-Forked-From", "/v1/stream/<name> to fork", None),
    _WriteHeader("Stream-Fork-Offset", "Where the fork branches off", None),
    _WriteHeader("Stream-Fork-Sub-Offset", "Messages into that unit", None, WHOLE),
    _WriteHeader("Stream-Seq", None, "Writer sequence: must increase"),
    _WriteHeader("Producer-Id", None, "Idempotent producer"),
    _WriteHeader("Producer-Epoch", None, "0 to 2^53-1", WHOLE),
    _WriteHeader("Producer-Seq", None, "0 to 2^53-1", WHOLE),
]


def _stream_write_headers(operation: Literal["create", "append"]) -> list[dict[str, Any]]:
    """The parameters of *operation*, in the table's order."""
    return [
        _header(row.name, description, row.schema)
        for row in STREAM_WRITE_HEADERS
        if (description := getattr(row, operation)) is not None
    ]


OFFSET = {
    "type": "string",
    "description": "-1 (the start), now (the tail), or an offset from Stream-Next-Offset "
    "(16 digits, '_', 16 digits)",
}
CURSOR = {
    "type": "string",
    "pattern": "^" + JOB_ID_PATTERN + "$",
    "description": "The `next` of the previous page: the id of its last job",
}
STREAM_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "1 to 1024 printable Latin-1 characters (no controls); `jobs/<id>` is a "
    "job's stream (read-only)",
    "schema": {"type": "string", "minLength": 1, "maxLength": 1024},
}
RELAY_JOB = _json(_ref("Job"), "The relay job")

PATHS: dict[str, Any] = {
    "/v1/jobs": {
        "post": {
            "summary": "Submit a job",
            "description": (
                "With `Accept: text/event-stream` the answer is 200 and the job's live events. "
                "JSON is UTF-8, numbers finite, integers within 64 bits, nesting at most "
                f"{MAX_DEPTH} levels: anything else is 400 `invalid_json`."
            ),
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("Submission")}},
            },
            "responses": {
                "202": _json(_ref("Job"), "Accepted; Location names the job"),
                "200": {
                    "description": "The existing job for a repeated idempotency key, or live "
                    "events with Accept: text/event-stream",
                    "content": {"application/json": {"schema": _ref("Job")}, **SSE},
                },
                "400": _error("Malformed JSON (invalid_json)"),
                "403": _error("Missing scope, or egress refused for an http/relay job"),
                "409": _error("The key was used with a different task or input"),
                "413": _error("Body too large"),
                "422": _error("Unknown task or queue, or an invalid field (named in error.field)"),
                "429": _error("The queue is at capacity", retry_after=True),
                "503": _error("Shutting down", retry_after=True),
            },
        },
        "get": {
            "summary": "List jobs, newest first",
            "parameters": [
                {
                    "name": "state",
                    "in": "query",
                    "schema": {"type": "string", "enum": [s.value for s in JobState]},
                },
                {"name": "queue", "in": "query", "schema": {"type": "string"}},
                {"name": "task", "in": "query", "schema": {"type": "string"}},
                {"name": "cursor", "in": "query", "schema": CURSOR},
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 50},
                },
            ],
            "responses": {
                "200": _json(_ref("JobPage"), "A page of jobs"),
                "400": _error("Malformed cursor (invalid_cursor)"),
                "422": _error("Invalid state or limit"),
            },
        },
    },
    "/v1/jobs/batch": {
        "post": {
            "summary": "Submit up to 1,000 jobs in one request and one commit",
            "description": (
                "Each job is admitted or refused on its own, in order, as a single submit "
                "would be: its entry in the answer has the status that submit would answer "
                "(202, 200, 409, 413, 422, 429, ...) with `job` or `error`; error fields are "
                "named from the batch (`jobs[3].timeout`)."
            ),
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["jobs"],
                            "additionalProperties": False,
                            "properties": {
                                "jobs": {
                                    "type": "array",
                                    "maxItems": MAX_BATCH,
                                    "items": _ref("Submission"),
                                }
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["jobs"],
                        "properties": {
                            "jobs": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["status"],
                                    "properties": {
                                        "status": {"type": "integer"},
                                        "job": _ref("Job"),
                                        "error": SCHEMAS["Error"]["properties"]["error"],
                                    },
                                },
                            }
                        },
                    },
                    "Each job's own answer, in the order sent",
                ),
                "400": _error("Malformed JSON (invalid_json)"),
                "413": _error("Body too large ([limits] batch_body_bytes)"),
                "422": _error("The batch itself is malformed (the field is named)"),
                "503": _error("Shutting down", retry_after=True),
            },
        },
    },
    "/v1/jobs/{job_id}": {
        "get": {
            "summary": "A job",
            "parameters": [
                JOB_ID,
                {
                    "name": "wait",
                    "in": "query",
                    "schema": {"type": "number", "minimum": 0},
                    "description": "Long-poll until terminal (seconds, capped by [jobs] max_wait)",
                },
            ],
            "responses": {
                "200": _json(_ref("Job"), "The job"),
                "404": _error("No such job"),
                "422": _error("Invalid wait"),
            },
        }
    },
    "/v1/jobs/{job_id}/cancel": {
        "post": {
            "summary": "Cancel a job (idempotent)",
            "parameters": [JOB_ID],
            "responses": {"202": _json(_ref("Job"), "The job"), "404": _error("No such job")},
        }
    },
    "/v1/jobs/{job_id}/retry": {
        "post": {
            "summary": "Run a failed or cancelled job again, as a new job (retry_of)",
            "parameters": [JOB_ID],
            "responses": {
                "202": _json(_ref("Job"), "The new job"),
                "404": _error("No such job"),
                "409": _error("The job is not failed or cancelled"),
                "429": _error("The queue is at capacity", retry_after=True),
            },
        }
    },
    "/v1/jobs/{job_id}/callback/retry": {
        "post": {
            "summary": "Send the job's webhook event again (same webhook-id), whatever its state",
            "parameters": [JOB_ID],
            "responses": {
                "202": _json(_ref("Job"), "The job, its callback pending"),
                "404": _error("No such job, or it has no callback"),
                "409": _error("The job has not ended with an event its callback asked for"),
            },
        }
    },
    "/v1/jobs/{job_id}/events": {
        "get": {
            "summary": "The job's events as native Server-Sent Events",
            "description": (
                "Each id is an offset; Last-Event-ID or ?offset= resumes. Messages are "
                "`event: outlast.<type>`; a relay's upstream events keep their own names. "
                "Keepalives are `: ping` comment lines. The response ends once the job is "
                "terminal; 204 once everything was sent."
            ),
            "parameters": [
                JOB_ID,
                {"name": "offset", "in": "query", "schema": OFFSET},
                _header("Last-Event-ID", "An event id to resume after"),
            ],
            "responses": {
                "200": _raw("Event stream", SSE),
                "204": _raw("Nothing more to send"),
                "400": _error("Malformed offset, or one past the end"),
                "404": _error("No such job"),
            },
        }
    },
    "/v1/queues": {
        "get": {
            "summary": "Queues and their job counts",
            "responses": {"200": _json(_ref("Queues"), "Queues")},
        }
    },
    "/v1/queues/{name}/pause": {
        "post": {
            "summary": "Pause a queue on every node: it accepts jobs and starts none (admin)",
            "parameters": [QUEUE_NAME],
            "responses": {
                "200": _json(_ref("Queue"), "The queue"),
                "404": _error("No such queue"),
            },
        }
    },
    "/v1/queues/{name}/resume": {
        "post": {
            "summary": "Resume a paused queue (admin)",
            "parameters": [QUEUE_NAME],
            "responses": {
                "200": _json(_ref("Queue"), "The queue"),
                "404": _error("No such queue"),
            },
        }
    },
    "/v1/upstreams/{name}/{path}": {
        "post": {
            "summary": "OpenAI-compatible pass-through, run as a relay job",
            "description": (
                "The answer is the upstream's: its events when the JSON body says "
                '`"stream": true`, else its status and body once the job ended (an upstream '
                "error status is passed on as it came)."
            ),
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                {
                    "name": "path",
                    "in": "path",
                    "required": True,
                    "description": "Under the upstream's base URL: '.' and '..' segments "
                    "(also percent-encoded, or behind backslashes) are refused (422)",
                    "schema": {"type": "string"},
                },
                _header("Idempotency-Key", "Becomes the job's key: a retry gets the same job"),
                _header("Last-Event-ID", "With a retry: continue after this event id"),
                *FLOW_HEADERS,
                _header("Outlast-Callback", "A completion webhook URL (docs/webhooks.md)"),
            ],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {}}}},
            "responses": {
                "200": _raw("The upstream's answer", {"application/json": {}, **SSE}),
                "400": _error("Malformed JSON or Last-Event-ID"),
                "403": _error("Missing scope, or egress refused"),
                "404": _error("No upstream of that name"),
                "422": _error("The path leaves the upstream's base path, or a bad header"),
                "502": _error("The relay failed (error.job names the job)"),
                "504": _error("The relay did not finish in time"),
                "default": _raw("The upstream's own error status and body", ANY),
                **ADMISSION,
            },
        }
    },
    "/v1/proxy": {
        "post": {
            "summary": "Durable Proxy: start a relay, answer with its job at once",
            "description": "Location is the job's stream (a signed link when tokens are on).",
            "parameters": [
                _header("Upstream-URL", "A raw URL (its host in [egress] allowed_hosts)"),
                _header("Upstream-Name", "A configured upstream, instead of Upstream-URL"),
                _header("Upstream-Path", "The path under Upstream-Name's base URL"),
                _header("Upstream-Method", "Default POST"),
                _header(
                    "Upstream-Authorization",
                    "Sent to the upstream as Authorization; never shown (redacted in the job)",
                ),
                _header("Idempotency-Key", "Becomes the job's key"),
                _header("Outlast-Callback", "A completion webhook URL (docs/webhooks.md)"),
            ],
            "requestBody": {"required": False, "content": {"*/*": {"schema": {}}}},
            "responses": {
                "201": _json(_ref("Job"), "Created; Location is the job's stream"),
                "200": _json(_ref("Job"), "The existing job for a repeated Idempotency-Key"),
                "400": _error("Neither or both of Upstream-URL and Upstream-Name"),
                "403": _error("Missing scope, or egress refused"),
                "409": _error("The key was used with a different request"),
                "422": _error("Invalid URL, path, method or header"),
                **ADMISSION,
            },
        }
    },
    "/v1/stream/{name}": {
        "summary": "Durable Streams protocol 1.0 (see docs/streams.md)",
        "parameters": [STREAM_NAME],
        "put": {
            "summary": "Create a stream (idempotent with the same settings)",
            "parameters": _stream_write_headers("create"),
            "requestBody": {"required": False, "content": ANY},
            "responses": {
                "201": _raw("Created"),
                "200": _raw("It exists with these settings"),
                "400": _error("A malformed header, name or body"),
                "404": _error("The fork's source does not exist"),
                "405": _error("Job streams are read-only"),
                "409": _error("It exists with other settings"),
                "410": _error("The fork's source was deleted"),
                "413": _error("Body too large"),
            },
        },
        "post": {
            "summary": "Append (and/or close)",
            "parameters": _stream_write_headers("append"),
            "requestBody": {"required": False, "content": ANY},
            "responses": {
                "200": _raw("Stored (idempotent producer)"),
                "204": _raw("Stored, a duplicate, or closed"),
                "400": _error("Empty body, missing type, malformed header or JSON"),
                "403": _error("Missing scope, or a stale Producer-Epoch"),
                "404": _error("No such stream"),
                "405": _error("Job streams are read-only"),
                "409": _error("Closed, type mismatch, or out-of-order Stream-Seq/Producer-Seq"),
                "410": _error("The stream was deleted"),
                "413": _error("Body too large"),
            },
        },
        "get": {
            "summary": "Read: catch-up, long-poll or SSE",
            "description": f"Answers carry {STREAM_HEADERS_DOC}.",
            "parameters": [
                {"name": "offset", "in": "query", "schema": OFFSET},
                {
                    "name": "live",
                    "in": "query",
                    "schema": {"type": "string", "enum": ["long-poll", "sse"]},
                },
                {
                    "name": "cursor",
                    "in": "query",
                    "description": "Echo of Stream-Cursor (digits; anything else is ignored)",
                    "schema": {"type": "string"},
                },
                _header("If-None-Match", "An ETag of an earlier catch-up read"),
                _header("Last-Event-ID", "SSE: resume after this offset"),
            ],
            "responses": {
                "200": _raw("The stream's data (its own type), or SSE", ANY),
                "204": _raw("Long-poll: nothing new before the timeout, or closed"),
                "304": _raw("Not modified (If-None-Match)"),
                "400": _error("Malformed offset, live mode or name"),
                "404": _error("No such stream"),
                "410": _error("The stream was deleted"),
            },
        },
        "head": {
            "summary": "The stream's metadata",
            "responses": {
                "200": _raw("Metadata in headers"),
                "400": _raw("Malformed name"),
                "401": _raw("A token or signed link is required"),
                "403": _raw("Missing scope"),
                "404": _raw("No such stream"),
                "410": _raw("The stream was deleted"),
            },
        },
        "delete": {
            "summary": "Delete the stream",
            "responses": {
                "204": _raw("Deleted"),
                "400": _error("Malformed name"),
                "404": _error("No such stream"),
                "405": _error("Job streams are read-only"),
                "409": _error("It cannot be deleted now"),
                "410": _error("Already deleted"),
            },
        },
    },
    "/healthz": {"get": {"summary": "Alive", "responses": {"200": _raw("OK", ANY)}}},
    "/readyz": {
        "get": {
            "summary": "Ready (503 while draining)",
            "responses": {"200": _raw("Ready", ANY), "503": _error("Draining")},
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (admin scope)",
            "responses": {"200": _raw("text/plain exposition", {"text/plain": {}})},
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "responses": {"200": _raw("OpenAPI 3.1", {"application/json": {}})},
        }
    },
}
# Open without a token (in tokens-on mode): everything else answers 401 and 403.
PUBLIC = frozenset({"/healthz", "/readyz", "/openapi.json"})
METHODS = ("get", "put", "post", "delete", "head")


class Shared(NamedTuple):
    """A response any operation may get before its endpoint runs (``components/responses``):
    what the connection layer and the browser guard refuse, with their error codes."""

    name: str
    description: str
    refusals: tuple[Refusal, ...]  # one status
    retry_after: bool = False
    # Whether a *method* request to *path* may get it (default: every operation).
    applies: Callable[[str, str], bool] = lambda method, path: True

    @property
    def status(self) -> str:
        return str(self.refusals[0].status)


SHARED = [
    Shared(
        "RequestTimeout",
        "The request's headers did not arrive within [server] header_timeout; the connection "
        "is closed",
        (REQUEST_TIMEOUT,),
    ),
    Shared(
        "HeadersTooLarge",
        "The request's headers exceed [server] max_header_bytes or max_header_count; the "
        "connection is closed",
        (HEADERS_TOO_LARGE,),
    ),
    Shared(
        "Unavailable",
        "Overloaded or unavailable: [server] max_connections connections are open (the "
        "connection is closed), or the store cannot be reached",
        (TOO_MANY_CONNECTIONS, STORE_UNAVAILABLE),
        retry_after=True,
    ),
    Shared(
        "BrowserRefused",
        "Refused as a web page's request: a Host not served without tokens ([server] "
        "allowed_hosts), or an Origin that is neither the server's own nor in [cors] origins",
        (FORBIDDEN_HOST, FORBIDDEN_ORIGIN),
    ),
    Shared(
        "UnsupportedMediaType",
        "A body not declared Content-Type: application/json",
        (UNSUPPORTED_MEDIA_TYPE,),
        applies=checks_content_type,
    ),
]


def _shared_response(shared: Shared) -> dict[str, Any]:
    codes = ", ".join(f"`{refusal.code}`" for refusal in shared.refusals)
    response = _error(f"{shared.description} ({codes})", retry_after=shared.retry_after)
    response["content"]["application/json"]["examples"] = {
        refusal.code: {"value": {"error": {"code": refusal.code, "message": shared.description}}}
        for refusal in shared.refusals
    }
    return response


SHARED_RESPONSES = {shared.name: _shared_response(shared) for shared in SHARED}


def _with_shared_errors(paths: dict[str, Any]) -> dict[str, Any]:
    """Every secured operation documents 401 (no or bad credential) and 403 (missing scope);
    every operation refers to the shared responses that apply to it. Where the operation has
    an answer of its own with that status, the reference keeps the operation's description and
    adds the shared one."""
    out: dict[str, Any] = {}
    for path, item in paths.items():
        item = dict(item)
        for method in METHODS:
            if method not in item:
                continue
            operation = dict(item[method])
            responses = dict(operation["responses"])
            if path not in PUBLIC:
                responses.setdefault("401", _error("No valid bearer token (or signed link)"))
                responses.setdefault("403", _error("The token lacks this route's scope"))
                operation["security"] = [{"bearer": []}]
            for shared in SHARED:
                if not shared.applies(method, path):
                    continue
                ref = {"$ref": f"#/components/responses/{shared.name}"}
                own = responses.get(shared.status)
                if own is not None:
                    ref["description"] = (
                        f"{own['description']}. Also: "
                        f"{SHARED_RESPONSES[shared.name]['description']}"
                    )
                responses[shared.status] = ref
            operation["responses"] = responses
            item[method] = operation
        out[path] = item
    return out


def document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "outlast", "version": version},
        "paths": _with_shared_errors(PATHS),
        "components": {
            "schemas": SCHEMAS,
            "responses": SHARED_RESPONSES,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        # Tokens are optional (without any configured, every request is trusted).
        "security": [{"bearer": []}, {}],
    }


async def openapi_endpoint(request: Request) -> JSONResponse:
    from importlib.metadata import PackageNotFoundError, version

    try:
        current = version("outlast")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        current = "0"
    return JSONResponse(document(current))

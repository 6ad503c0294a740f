"""The document's operations (``paths``): each endpoint's parameters, body and answers of its
own, the stream protocol's headers among them."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from outlast.api.jobs import MAX_BATCH, MAX_PAGE
from outlast.api.openapi.parts import (
    ANY,
    SSE,
    error,
    header,
    json_response,
    raw,
    ref,
)
from outlast.api.openapi.schemas import SCHEMAS
from outlast.boundary import MAX_DEPTH
from outlast.models import JOB_ID_PATTERN, JobState

# How any submission of a job may be refused besides its own validation.
ADMISSION = {
    "413": error("Body too large"),
    "429": error("The queue is at capacity", retry_after=True),
    "503": error("Shutting down", retry_after=True),
}

JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^" + JOB_ID_PATTERN + "$"},
}
QUEUE_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
FLOW_HEADERS = [
    {"name": "Outlast-Priority", "in": "header", "schema": {"type": "integer"}},
    {"name": "Outlast-Concurrency-Key", "in": "header", "schema": {"type": "string"}},
]


STREAM_HEADERS_DOC = "Stream-Next-Offset, Stream-Up-To-Date, Stream-Closed, Stream-Cursor, ETag"
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
        header(row.name, description, row.schema)
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
                "content": {"application/json": {"schema": ref("Submission")}},
            },
            "responses": {
                "202": json_response(ref("Job"), "Accepted; Location names the job"),
                "200": {
                    "description": "The existing job for a repeated idempotency key, or live "
                    "events with Accept: text/event-stream",
                    "content": {"application/json": {"schema": ref("Job")}, **SSE},
                },
                "400": error("Malformed JSON (invalid_json)"),
                "403": error("Missing scope, or egress refused for an http/relay job"),
                "409": error("The key was used with a different task or input"),
                "413": error("Body too large"),
                "422": error("Unknown task or queue, or an invalid field (named in error.field)"),
                "429": error("The queue is at capacity", retry_after=True),
                "503": error("Shutting down", retry_after=True),
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
                "200": json_response(ref("JobPage"), "A page of jobs"),
                "400": error("Malformed cursor (invalid_cursor)"),
                "422": error("Invalid state or limit"),
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
                                    "items": ref("Submission"),
                                }
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": json_response(
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
                                        "job": ref("Job"),
                                        "error": SCHEMAS["Error"]["properties"]["error"],
                                    },
                                },
                            }
                        },
                    },
                    "Each job's own answer, in the order sent",
                ),
                "400": error("Malformed JSON (invalid_json)"),
                "413": error("Body too large ([limits] batch_body_bytes)"),
                "422": error("The batch itself is malformed (the field is named)"),
                "503": error("Shutting down", retry_after=True),
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
                "200": json_response(ref("Job"), "The job"),
                "404": error("No such job"),
                "422": error("Invalid wait"),
            },
        }
    },
    "/v1/jobs/{job_id}/cancel": {
        "post": {
            "summary": "Cancel a job (idempotent)",
            "parameters": [JOB_ID],
            "responses": {"202": json_response(ref("Job"), "The job"), "404": error("No such job")},
        }
    },
    "/v1/jobs/{job_id}/retry": {
        "post": {
            "summary": "Run a failed or cancelled job again, as a new job (retry_of)",
            "parameters": [JOB_ID],
            "responses": {
                "202": json_response(ref("Job"), "The new job"),
                "404": error("No such job"),
                "409": error("The job is not failed or cancelled"),
                "429": error("The queue is at capacity", retry_after=True),
            },
        }
    },
    "/v1/jobs/{job_id}/callback/retry": {
        "post": {
            "summary": "Send the job's webhook event again (same webhook-id), whatever its state",
            "parameters": [JOB_ID],
            "responses": {
                "202": json_response(ref("Job"), "The job, its callback pending"),
                "404": error("No such job, or it has no callback"),
                "409": error("The job has not ended with an event its callback asked for"),
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
                header("Last-Event-ID", "An event id to resume after"),
            ],
            "responses": {
                "200": raw("Event stream", SSE),
                "204": raw("Nothing more to send"),
                "400": error("Malformed offset, or one past the end"),
                "404": error("No such job"),
            },
        }
    },
    "/v1/queues": {
        "get": {
            "summary": "Queues and their job counts",
            "responses": {"200": json_response(ref("Queues"), "Queues")},
        }
    },
    "/v1/queues/{name}/pause": {
        "post": {
            "summary": "Pause a queue on every node: it accepts jobs and starts none (admin)",
            "parameters": [QUEUE_NAME],
            "responses": {
                "200": json_response(ref("Queue"), "The queue"),
                "404": error("No such queue"),
            },
        }
    },
    "/v1/queues/{name}/resume": {
        "post": {
            "summary": "Resume a paused queue (admin)",
            "parameters": [QUEUE_NAME],
            "responses": {
                "200": json_response(ref("Queue"), "The queue"),
                "404": error("No such queue"),
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
                header("Idempotency-Key", "Becomes the job's key: a retry gets the same job"),
                header("Last-Event-ID", "With a retry: continue after this event id"),
                *FLOW_HEADERS,
                header("Outlast-Callback", "A completion webhook URL (docs/webhooks.md)"),
            ],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {}}}},
            "responses": {
                "200": raw("The upstream's answer", {"application/json": {}, **SSE}),
                "400": error("Malformed JSON or Last-Event-ID"),
                "403": error("Missing scope, or egress refused"),
                "404": error("No upstream of that name"),
                "422": error("The path leaves the upstream's base path, or a bad header"),
                "502": error("The relay failed (error.job names the job)"),
                "504": error("The relay did not finish in time"),
                "default": raw("The upstream's own error status and body", ANY),
                **ADMISSION,
            },
        }
    },
    "/v1/proxy": {
        "post": {
            "summary": "Durable Proxy: start a relay, answer with its job at once",
            "description": "Location is the job's stream (a signed link when tokens are on).",
            "parameters": [
                header("Upstream-URL", "A raw URL (its host in [egress] allowed_hosts)"),
                header("Upstream-Name", "A configured upstream, instead of Upstream-URL"),
                header("Upstream-Path", "The path under Upstream-Name's base URL"),
                header("Upstream-Method", "Default POST"),
                header(
                    "Upstream-Authorization",
                    "Sent to the upstream as Authorization; never shown (redacted in the job)",
                ),
                header("Idempotency-Key", "Becomes the job's key"),
                header("Outlast-Callback", "A completion webhook URL (docs/webhooks.md)"),
            ],
            "requestBody": {"required": False, "content": {"*/*": {"schema": {}}}},
            "responses": {
                "201": json_response(ref("Job"), "Created; Location is the job's stream"),
                "200": json_response(ref("Job"), "The existing job for a repeated Idempotency-Key"),
                "400": error("Neither or both of Upstream-URL and Upstream-Name"),
                "403": error("Missing scope, or egress refused"),
                "409": error("The key was used with a different request"),
                "422": error("Invalid URL, path, method or header"),
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
                "201": raw("Created"),
                "200": raw("It exists with these settings"),
                "400": error("A malformed header, name or body"),
                "404": error("The fork's source does not exist"),
                "405": error("Job streams are read-only"),
                "409": error("It exists with other settings"),
                "410": error("The fork's source was deleted"),
                "413": error("Body too large"),
            },
        },
        "post": {
            "summary": "Append (and/or close)",
            "parameters": _stream_write_headers("append"),
            "requestBody": {"required": False, "content": ANY},
            "responses": {
                "200": raw("Stored (idempotent producer)"),
                "204": raw("Stored, a duplicate, or closed"),
                "400": error("Empty body, missing type, malformed header or JSON"),
                "403": error("Missing scope, or a stale Producer-Epoch"),
                "404": error("No such stream"),
                "405": error("Job streams are read-only"),
                "409": error("Closed, type mismatch, or out-of-order Stream-Seq/Producer-Seq"),
                "410": error("The stream was deleted"),
                "413": error("Body too large"),
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
                header("If-None-Match", "An ETag of an earlier catch-up read"),
                header("Last-Event-ID", "SSE: resume after this offset"),
            ],
            "responses": {
                "200": raw("The stream's data (its own type), or SSE", ANY),
                "204": raw("Long-poll: nothing new before the timeout, or closed"),
                "304": raw("Not modified (If-None-Match)"),
                "400": error("Malformed offset, live mode or name"),
                "404": error("No such stream"),
                "410": error("The stream was deleted"),
            },
        },
        "head": {
            "summary": "The stream's metadata",
            "responses": {
                "200": raw("Metadata in headers"),
                "400": raw("Malformed name"),
                "401": raw("A token or signed link is required"),
                "403": raw("Missing scope"),
                "404": raw("No such stream"),
                "410": raw("The stream was deleted"),
            },
        },
        "delete": {
            "summary": "Delete the stream",
            "responses": {
                "204": raw("Deleted"),
                "400": error("Malformed name"),
                "404": error("No such stream"),
                "405": error("Job streams are read-only"),
                "409": error("It cannot be deleted now"),
                "410": error("Already deleted"),
            },
        },
    },
    "/healthz": {"get": {"summary": "Alive", "responses": {"200": raw("OK", ANY)}}},
    "/readyz": {
        "get": {
            "summary": "Ready (503 while draining)",
            "responses": {"200": raw("Ready", ANY), "503": error("Draining")},
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (admin scope)",
            "responses": {"200": raw("text/plain exposition", {"text/plain": {}})},
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "responses": {"200": raw("OpenAPI 3.1", {"application/json": {}})},
        }
    },
}

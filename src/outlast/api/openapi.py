"""``GET /openapi.json``: the OpenAPI 3.1 document of the JSON API (jobs, queues, relays, ops).

The stream endpoints speak the Durable Streams protocol, documented by that protocol; they are
listed here with a pointer to it rather than re-described.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

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


JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}

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
    "Queues": {
        "type": "object",
        "properties": {
            "queues": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "concurrency": {"type": "integer"},
                        "capacity": {"type": "integer"},
                        **{s.value: {"type": "integer"} for s in JobState},
                    },
                },
            }
        },
    },
}

SSE = {"text/event-stream": {"schema": {"type": "string"}}}

PATHS: dict[str, Any] = {
    "/v1/jobs": {
        "post": {
            "summary": "Submit a job",
            "description": (
                "With `Accept: text/event-stream` the answer is 200 and the job's live events."
            ),
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("Submission")}},
            },
            "responses": {
                "202": _json(_ref("Job"), "Accepted; Location names the job"),
                "200": _json(_ref("Job"), "The existing job for a repeated idempotency key"),
                "400": _error("Malformed JSON"),
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
                {"name": n, "in": "query", "schema": {"type": "string"}}
                for n in ("state", "queue", "task", "cursor")
            ]
            + [{"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 500}}],
            "responses": {
                "200": _json(_ref("JobPage"), "A page of jobs"),
                "400": _error("Malformed cursor"),
                "422": _error("Invalid state or limit"),
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
                    "schema": {"type": "number"},
                    "description": "Long-poll until terminal (seconds)",
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
                {
                    "name": "offset",
                    "in": "query",
                    "schema": {"type": "string"},
                    "description": "-1 (the start, default), now, or an event id",
                },
                {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {"description": "Event stream", "content": SSE},
                "204": {"description": "Nothing more to send"},
                "400": _error("Malformed offset"),
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
    "/v1/upstreams/{name}/{path}": {
        "post": {
            "summary": "OpenAI-compatible pass-through, run as a relay job",
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}},
                {
                    "name": "Outlast-Callback",
                    "in": "header",
                    "schema": {"type": "string"},
                    "description": "A completion webhook URL (docs/webhooks.md)",
                },
            ],
            "responses": {
                "200": {
                    "description": "The upstream's answer (events when the body says stream: true)",
                    "content": {"application/json": {}, **SSE},
                },
                "429": _error("The queue is at capacity", retry_after=True),
            },
        }
    },
    "/v1/proxy": {
        "post": {
            "summary": "Durable Proxy: start a relay, answer with its stream at once",
            "parameters": [
                {"name": h, "in": "header", "schema": {"type": "string"}}
                for h in (
                    "Upstream-URL",
                    "Upstream-Name",
                    "Upstream-Path",
                    "Upstream-Method",
                    "Upstream-Authorization",
                    "Outlast-Callback",
                )
            ],
            "responses": {"201": {"description": "Created; Location is the job's stream"}},
        }
    },
    "/v1/stream/{name}": {
        "summary": "Durable Streams protocol 1.0",
        "description": "See docs/streams.md and the protocol's PROTOCOL.md.",
    },
    "/healthz": {"get": {"summary": "Alive", "responses": {"200": {"description": "OK"}}}},
    "/readyz": {
        "get": {
            "summary": "Ready (503 while draining)",
            "responses": {"200": {"description": "Ready"}, "503": _error("Draining")},
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "responses": {"200": {"description": "text/plain exposition"}},
        }
    },
}


def document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "outlast", "version": version},
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
    }


async def openapi_endpoint(request: Request) -> JSONResponse:
    from importlib.metadata import PackageNotFoundError, version

    try:
        current = version("outlast")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        current = "0"
    return JSONResponse(document(current))

"""The document's schemas (``components/schemas``): the JSON bodies the API takes and answers."""

from __future__ import annotations

from typing import Any

from outlast.api.openapi.parts import ref
from outlast.models import JOB_ID_PATTERN, ErrorCode, JobState
from outlast.store.webhooks_logic import ALL_EVENTS as WEBHOOK_EVENTS

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
            "callback": ref("Callback"),
        },
    },
    "JobPage": {
        "type": "object",
        "properties": {
            "jobs": {"type": "array", "items": ref("Job")},
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
        "properties": {"queues": {"type": "array", "items": ref("Queue")}},
    },
}

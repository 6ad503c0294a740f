"""The built-in ``http`` task: one HTTP request with the job's own time limit and retries.

Input: ``{"url", "method", "headers", "body"}``. ``429``, ``5xx`` and network errors fail the
attempt (retried while attempts remain); any other status is the job's result
``{"status", "headers", "body"}``. A PHP app uses it to run its own slow endpoint after it
has answered its client.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx

from outlast.boundary import check_headers
from outlast.config import EgressSettings
from outlast.egress import EgressRefused, check_url, egress_scope, resolve_and_check
from outlast.errors import Unprocessable
from outlast.executors import TaskFailure

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
# The largest response body kept in the result; a longer one fails the job instead of
# growing memory.
MAX_RESPONSE_BYTES = 8 << 20
EXCERPT_BYTES = 2048


async def validate_input(value: Any, egress: EgressSettings) -> None:
    """Reject a bad ``http`` input at submit time (422 naming the field, 403 for egress)."""
    if not isinstance(value, dict):
        raise Unprocessable("input must be a JSON object", extra={"field": "input"})
    unknown = set(value) - {"url", "method", "headers", "body"}
    if unknown:
        raise Unprocessable(
            f"unknown input field(s): {', '.join(sorted(unknown))}", extra={"field": "input"}
        )
    url = value.get("url")
    if not isinstance(url, str):
        raise Unprocessable("input.url must be a string", extra={"field": "input.url"})
    await resolve_and_check(check_url(url, egress, field="input.url"))
    method = value.get("method", "GET")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise Unprocessable("input.method must be an HTTP method", extra={"field": "input.method"})
    check_input_headers(value)


def check_input_headers(value: dict[str, Any]) -> None:
    """``input.headers`` of a built-in task: valid header names mapped to valid values."""
    headers = value.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise Unprocessable(
            "input.headers must map names to strings", extra={"field": "input.headers"}
        )
    check_headers(headers, "input.headers")


def request_body(value: Any) -> tuple[bytes | None, dict[str, str]]:
    """``input.body`` as bytes: a string as it is, anything else as JSON; with the implied
    ``content-type``."""
    if value is None:
        return None, {}
    if isinstance(value, str):
        return value.encode(), {}
    return json.dumps(value).encode(), {"content-type": "application/json"}


async def run_http(
    spec: dict[str, Any], client: httpx.AsyncClient, egress: EgressSettings
) -> dict[str, Any]:
    target = check_url(spec["url"], egress, field="input.url")
    await resolve_and_check(target)
    body, implied = request_body(spec.get("body"))
    headers = {**implied, **spec.get("headers", {})}
    method = spec.get("method", "GET").upper()
    try:
        with egress_scope(target):  # the address check again, at connect time
            resp = await client.send(
                client.build_request(method, target.url, headers=headers, content=body),
                stream=True,
            )
        try:
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise TaskFailure(
                        "upstream_error",
                        f"response body larger than {MAX_RESPONSE_BYTES} bytes",
                        retryable=False,
                    )
                chunks.append(chunk)
        finally:
            await resp.aclose()
    except EgressRefused as exc:
        raise TaskFailure("upstream_error", str(exc), retryable=False) from exc
    except httpx.HTTPError as exc:
        raise TaskFailure("upstream_error", f"{type(exc).__name__}: {exc}") from exc
    raw = b"".join(chunks)
    if resp.status_code == 429 or resp.status_code >= 500:
        raise TaskFailure(
            "upstream_status",
            f"upstream answered {resp.status_code}",
            status=resp.status_code,
            body=raw[:EXCERPT_BYTES].decode("utf-8", "replace"),
        )
    result: dict[str, Any] = {"status": resp.status_code, "headers": dict(resp.headers)}
    try:
        result["body"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        result["body_base64"] = base64.b64encode(raw).decode()
    return result

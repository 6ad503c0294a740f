"""The relay's upstream request: its input checked at submit time, its target (a named upstream
with its secret headers, or an allowed raw URL), and the request each attempt sends."""

from __future__ import annotations

from typing import Any

import httpx

from outlast.config import Settings
from outlast.egress import Target, check_url, resolve_and_check, upstream_target
from outlast.errors import Unprocessable
from outlast.executors.http import check_input_headers, request_body
from outlast.executors.relay_progress import asks_usage

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
INPUT_FIELDS = frozenset(
    {"upstream", "path", "url", "method", "headers", "body", "wait_rate_limits"}
)
# Statuses that mean "not now": with a delay the upstream names, the relay waits that long.
# Headers a client may not set on the upstream request: hop-by-hop, or owned by outlast.
DROPPED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "transfer-encoding",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-authorization",
        "accept-encoding",
        "last-event-id",
    }
)


async def validate_input(value: Any, settings: Settings) -> None:
    """Reject a bad relay input at submit time: 422 naming the field, 403 for egress."""
    if not isinstance(value, dict):
        raise Unprocessable("input must be a JSON object", extra={"field": "input"})
    unknown = sorted(set(value) - INPUT_FIELDS)
    if unknown:
        raise Unprocessable(
            f"input.{unknown[0]}: unknown field", extra={"field": f"input.{unknown[0]}"}
        )
    target = resolve_target(value, settings)
    await resolve_and_check(target)
    method = value.get("method", "POST")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise Unprocessable("input.method must be an HTTP method", extra={"field": "input.method"})
    if not isinstance(value.get("wait_rate_limits", True), bool):
        raise Unprocessable(
            "input.wait_rate_limits must be true or false",
            extra={"field": "input.wait_rate_limits"},
        )
    check_input_headers(value)


def resolve_target(value: dict[str, Any], settings: Settings) -> Target:
    if "upstream" in value:
        if "url" in value:
            raise Unprocessable(
                "give input.upstream or input.url, not both", extra={"field": "input.url"}
            )
        name = value["upstream"]
        if not isinstance(name, str) or name not in settings.upstreams:
            raise Unprocessable(
                f"input.upstream: unknown upstream {name!r}",
                code="unknown_upstream",
                extra={"field": "input.upstream"},
            )
        path = value.get("path", "")
        if not isinstance(path, str) or "://" in path or path.startswith("//"):
            raise Unprocessable(
                "input.path must be a path such as /v1/chat/completions",
                extra={"field": "input.path"},
            )
        return upstream_target(settings.upstreams[name], path)
    url = value.get("url")
    if not isinstance(url, str):
        raise Unprocessable(
            "input.upstream or input.url is required", extra={"field": "input.upstream"}
        )
    return check_url(url, settings.egress, field="input.url")


def upstream_headers(
    value: dict[str, Any], settings: Settings, implied: dict[str, str]
) -> dict[str, str]:
    headers: dict[str, str] = {"accept": "text/event-stream", **implied}
    for name, header_value in value.get("headers", {}).items():
        if name.lower() not in DROPPED_HEADERS:
            headers[name.lower()] = header_value
    if "upstream" in value:
        # The upstream's own headers (its API key, say) win; clients never see them.
        for name, header_value in settings.upstreams[value["upstream"]].headers.items():
            headers[name.lower()] = header_value
    return headers


def build_request(
    client: httpx.AsyncClient,
    value: dict[str, Any],
    settings: Settings,
    target: Target,
    last_id: str | None,
) -> httpx.Request:
    """The upstream request of one attempt; *last_id* resumes a stream after that event."""
    relay = settings.relay
    body, implied = request_body(asks_usage(value.get("body")))
    headers = upstream_headers(value, settings, implied)
    if last_id is not None:
        headers["last-event-id"] = last_id
    return client.build_request(
        value.get("method", "POST").upper(),
        target.url,
        headers=headers,
        content=body,
        # Our own clocks enforce first byte and idle with clear messages, and every read runs
        # under one of them (the head under first_byte_timeout, each body chunk under
        # idle_timeout). No httpx read timeout: it would only repeat them, at the cost of a
        # timeout scope per chunk read (see egress.LeanStream).
        timeout=httpx.Timeout(
            connect=relay.connect_timeout,
            read=None,
            write=relay.idle_timeout,
            pool=relay.connect_timeout,
        ),
    )

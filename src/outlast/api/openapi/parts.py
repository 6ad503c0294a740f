"""The pieces the OpenAPI document is built of: references, responses and header parameters."""

from __future__ import annotations

from typing import Any


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_response(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    response = json_response(ref("Error"), description)
    if retry_after:
        response["headers"] = {
            "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
        }
    return response


def header(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "description": description,
        "schema": schema or {"type": "string"},
    }


def raw(description: str, content: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description}
    if content is not None:
        response["content"] = content
    return response


# Content types.
SSE = {"text/event-stream": {"schema": {"type": "string"}}}
# A stream's bytes are served with the stream's own content type.
ANY: dict[str, Any] = {"*/*": {"schema": {}}}

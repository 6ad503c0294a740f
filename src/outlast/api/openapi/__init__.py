"""``GET /openapi.json``: the OpenAPI 3.1 document of the JSON API (jobs, queues, relays, ops).

The stream endpoints speak the Durable Streams protocol (docs/streams.md); their operations,
headers and statuses are listed here too. Every secured operation documents 401 and 403; every
operation refers to the shared responses (``components/responses``) of what the connection layer
and the browser guard refuse before any endpoint runs (408, 431, 503, 403 and, for JSON writes,
415). The document is checked against the server by a schemathesis run
(tests/security/test_openapi_fuzz.py).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from outlast.api.openapi.paths import PATHS
from outlast.api.openapi.schemas import SCHEMAS
from outlast.api.openapi.shared import SHARED_RESPONSES, with_shared_errors


def document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "outlast", "version": version},
        "paths": with_shared_errors(PATHS),
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

"""What every operation may be answered besides its own answers: 401 and 403 on the secured
ones, and the shared responses (``components/responses``) of what the connection layer and the
browser guard refuse before any endpoint runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from outlast.api.middleware import (
    FORBIDDEN_HOST,
    FORBIDDEN_ORIGIN,
    STORE_UNAVAILABLE,
    UNSUPPORTED_MEDIA_TYPE,
    checks_content_type,
)
from outlast.api.openapi.parts import error
from outlast.connections import HEADERS_TOO_LARGE, REQUEST_TIMEOUT, TOO_MANY_CONNECTIONS
from outlast.errors import Refusal

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
    response = error(f"{shared.description} ({codes})", retry_after=shared.retry_after)
    response["content"]["application/json"]["examples"] = {
        refusal.code: {"value": {"error": {"code": refusal.code, "message": shared.description}}}
        for refusal in shared.refusals
    }
    return response


SHARED_RESPONSES = {shared.name: _shared_response(shared) for shared in SHARED}


def with_shared_errors(paths: dict[str, Any]) -> dict[str, Any]:
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
                responses.setdefault("401", error("No valid bearer token (or signed link)"))
                responses.setdefault("403", error("The token lacks this route's scope"))
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

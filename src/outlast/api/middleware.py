"""Pure ASGI middleware: headers every response carries, CORS, and bearer-token auth.

Each class wraps an ASGI ``app`` and touches only the start of the response, so streaming
responses pass through untouched and nothing is buffered.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from outlast.api.capability import Link, LinkKey, readable_with_link, verify
from outlast.config import AuthSettings, CorsSettings, TokenSettings
from outlast.errors import StoreError

SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    # Browsers must not guess a type for stream bytes (protocol §10.7).
    (b"x-content-type-options", b"nosniff"),
    # Readers on other origins use fetch()/EventSource; allow it explicitly.
    (b"cross-origin-resource-policy", b"cross-origin"),
]

ALLOWED_METHODS = "GET, POST, PUT, DELETE, HEAD, OPTIONS"
ALLOWED_HEADERS = ", ".join(
    [
        "Authorization",
        "Content-Type",
        "If-None-Match",
        "Last-Event-ID",
        "Idempotency-Key",
        "Stream-TTL",
        "Stream-Expires-At",
        "Stream-Seq",
        "Stream-Closed",
        "Stream-Forked-From",
        "Stream-Fork-Offset",
        "Stream-Fork-Sub-Offset",
        "Producer-Id",
        "Producer-Epoch",
        "Producer-Seq",
        "Upstream-URL",
        "Upstream-Name",
        "Upstream-Method",
        "Upstream-Authorization",
        "Upstream-Path",
    ]
)
EXPOSED_HEADERS = ", ".join(
    [
        "Location",
        "ETag",
        "Retry-After",
        "Stream-Next-Offset",
        "Stream-Up-To-Date",
        "Stream-Cursor",
        "Stream-Closed",
        "Stream-TTL",
        "Stream-Expires-At",
        "Producer-Epoch",
        "Producer-Seq",
        "Producer-Expected-Seq",
        "Producer-Received-Seq",
        "Outlast-Job-Id",
    ]
)
PREFLIGHT_MAX_AGE = "86400"


class HeadersMiddleware:
    """Adds the browser security headers and CORS headers; answers CORS preflights."""

    def __init__(self, app: ASGIApp, cors: CorsSettings) -> None:
        self.app = app
        self.any_origin = "*" in cors.origins
        self.origins = frozenset(cors.origins)
        # With any origin allowed (the default) every response gets the same headers.
        self._any_origin_headers = self._extra(b"*")

    def _allow_origin(self, scope: Scope) -> bytes | None:
        if self.any_origin:
            return b"*"
        for name, value in scope["headers"]:
            if name == b"origin":
                return value if value.decode("latin-1") in self.origins else None
        return None

    @staticmethod
    def _extra(origin: bytes | None) -> list[tuple[bytes, bytes]]:
        extra = list(SECURITY_HEADERS)
        if origin is not None:
            extra.append((b"access-control-allow-origin", origin))
            extra.append((b"access-control-expose-headers", EXPOSED_HEADERS.encode()))
            if origin != b"*":
                extra.append((b"vary", b"Origin"))
        return extra

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = (
            self._any_origin_headers if self.any_origin else self._extra(self._allow_origin(scope))
        )

        if scope["method"] == "OPTIONS" and _has_header(scope, b"access-control-request-method"):
            headers = [
                *extra,
                (b"access-control-allow-methods", ALLOWED_METHODS.encode()),
                (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
                (b"access-control-max-age", PREFLIGHT_MAX_AGE.encode()),
                (b"content-length", b"0"),
            ]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _has_header(scope: Scope, name: bytes) -> bool:
    return any(key == name for key, _ in scope["headers"])


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def scopes_for(tokens: Iterable[TokenSettings], presented: str) -> frozenset[str] | None:
    """The scopes of the configured token whose SHA-256 matches *presented*, else ``None``."""
    digest = hashlib.sha256(presented.encode()).hexdigest()
    found: frozenset[str] | None = None
    for token in tokens:
        # Compare every token in constant time so timing says nothing about which matched.
        if hmac.compare_digest(digest, token.token_sha256):
            found = frozenset(token.scopes)
    return found


def required_scope(method: str, path: str) -> str | None:
    """The scope a request needs, or ``None`` for public endpoints."""
    if path in ("/healthz", "/readyz", "/openapi.json", "/ui") or path.startswith("/ui/"):
        return None
    if path == "/metrics":
        return "admin"
    reading = method in ("GET", "HEAD")
    if path.startswith("/v1/stream/"):
        return "streams:read" if reading else "streams:write"
    if path.startswith("/v1/jobs"):
        return "jobs:read" if reading else "jobs:write"
    if path.startswith("/v1/upstreams/") or path == "/v1/proxy":
        return "jobs:write"
    return "admin"


class AuthMiddleware:
    """Bearer tokens with scopes. Installed only when tokens are configured.

    A read of one job's events or stream may instead carry a signed link (``exp`` and ``sig``,
    see :mod:`outlast.api.capability`).
    """

    def __init__(self, app: ASGIApp, auth: AuthSettings, links: LinkKey) -> None:
        self.app = app
        self.tokens = list(auth.tokens)
        self.links = links

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        try:
            # Once per node (then cached): jobs rendered after this carry links signed with it.
            link_key = await self.links.load()
        except StoreError as exc:
            await _reject(send, 503, "unavailable", f"the store is unreachable: {exc}")
            return
        needed = required_scope(scope["method"], scope["path"])
        raw = _header(scope, b"authorization")
        granted: frozenset[str] | None = None
        if raw is not None:
            kind, _, value = raw.decode("latin-1").partition(" ")
            if kind.lower() == "bearer" and value.strip():
                granted = scopes_for(self.tokens, value.strip())
            if granted is None:
                await _reject(send, 401, "unauthorized", "invalid bearer token")
                return
        scope["outlast.auth"] = granted
        if (
            needed is not None
            and granted is not None
            and not (needed in granted or "admin" in granted)
        ):
            await _reject(send, 403, "forbidden", f"this token lacks the '{needed}' scope")
            return
        if needed is not None and granted is None:
            link = self._signed_read(scope, link_key)
            if link is Link.TOO_LONG:
                await _reject(
                    send, 403, "forbidden", "this link expires later than any link outlast makes"
                )
                return
            if link is not Link.VALID:
                await _reject(
                    send, 401, "unauthorized", "a bearer token or a valid signed link is required"
                )
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _signed_read(scope: Scope, key: bytes) -> Link:
        """A GET of one job's events or stream with a valid, unexpired ``sig``."""
        if scope["method"] not in ("GET", "HEAD") or not readable_with_link(scope["path"]):
            return Link.INVALID
        return verify(key, scope["path"], scope.get("query_string", b""))


async def _reject(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="outlast"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

"""Pure ASGI middleware: headers every response carries, CORS, what browsers may send, and
bearer-token auth.

Each class wraps an ASGI ``app`` and touches only the start of the response, so streaming
responses pass through untouched and nothing is buffered.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from outlast.api import scopes
from outlast.api.capability import Link, LinkKey, readable_with_link, verify
from outlast.config import AuthSettings, CorsSettings, Settings, TokenSettings
from outlast.errors import Refusal, ServiceUnavailable, StoreError, StoreUnavailable

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

# What the browser guard refuses, on any route (the OpenAPI document lists them).
FORBIDDEN_HOST = Refusal(403, "forbidden_host")
FORBIDDEN_ORIGIN = Refusal(403, "forbidden_origin")
UNSUPPORTED_MEDIA_TYPE = Refusal(415, "unsupported_media_type")  # writes to JSON endpoints
# The auth middleware cannot check a credential while the store is unreachable.
STORE_UNAVAILABLE = Refusal(503, ServiceUnavailable.code)  # with Retry-After


class HeadersMiddleware:
    """Adds the browser security headers and CORS headers; answers CORS preflights.

    Only the configured origins get ``Access-Control-Allow-Origin``; a preflight from any other
    origin is answered (it gives nothing away) without it, so the browser sends nothing more.
    """

    def __init__(self, app: ASGIApp, cors: CorsSettings) -> None:
        self.app = app
        self.origins = _CorsOrigins(cors)
        self._any_origin_headers = self._extra(b"*", vary=False)
        # Without configured origins (the default) every response gets the same headers.
        self._plain_headers = self._extra(None, vary=bool(self.origins.listed))

    @staticmethod
    def _extra(origin: bytes | None, *, vary: bool) -> list[tuple[bytes, bytes]]:
        extra = list(SECURITY_HEADERS)
        if origin is not None:
            extra.append((b"access-control-allow-origin", origin))
            extra.append((b"access-control-expose-headers", EXPOSED_HEADERS.encode()))
        if vary:
            extra.append((b"vary", b"Origin"))
        return extra

    def _headers_for(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        if self.origins.any:
            return self._any_origin_headers
        if self.origins.listed:
            origin = _header(scope, b"origin")
            if origin is not None and self.origins.allows(origin):
                return self._extra(origin, vary=True)
        return self._plain_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self._headers_for(scope)

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


class _CorsOrigins:
    """``[cors] origins``: the origins whose pages may call outlast ("*": any)."""

    def __init__(self, cors: CorsSettings) -> None:
        self.any = "*" in cors.origins
        self.listed = frozenset(o.strip().rstrip("/").lower() for o in cors.origins if o != "*")

    def allows(self, origin: bytes) -> bool:
        return self.any or origin.decode("latin-1").lower() in self.listed


# Host values whose verdict is kept (the cache is emptied when full).
HOSTS_REMEMBERED = 256
# Ports a browser leaves out of an origin and a Host header.
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


class BrowserGuard:
    """Refuses what only a web page in a browser would send, before anything else runs.

    Loopback is not a trust boundary for browsers: any page open on the machine can send
    requests to 127.0.0.1. So, on every route:

    * without tokens, a ``Host`` that is neither a loopback name or address nor listed in
      ``[server] allowed_hosts`` is refused (DNS rebinding: the page's own name resolved to
      127.0.0.1, and the browser takes outlast for the page's origin);
    * an ``Origin`` that is neither the server's own nor in ``[cors] origins`` is refused;
    * a body sent to a JSON endpoint must be declared ``application/json``: a page may send
      ``text/plain`` or a form without asking first. Stream appends and ``/v1/proxy`` carry
      bodies of their own types (``/v1/proxy`` needs ``Upstream-*`` headers, which a page
      cannot send without a preflight).
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        allowed = [h.strip().lower() for h in settings.server.allowed_hosts]
        self.check_host = not settings.auth_enabled and "*" not in allowed
        self.allowed_hosts = frozenset(allowed)
        self.origins = _CorsOrigins(settings.cors)
        self._hosts_seen: dict[bytes, bool] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = _header(scope, b"host")
        if self.check_host and host is not None and not self._host_allowed(host):
            await _reject(
                send,
                *FORBIDDEN_HOST,
                "this Host is not served without tokens; list it in [server] allowed_hosts",
            )
            return
        origin = _header(scope, b"origin")
        if origin is not None and not self._origin_allowed(origin, host):
            await _reject(
                send,
                *FORBIDDEN_ORIGIN,
                "requests from this origin are not allowed; list it in [cors] origins",
            )
            return
        if checks_content_type(scope["method"], scope["path"]) and not _json_or_no_body(scope):
            await _reject(
                send,
                *UNSUPPORTED_MEDIA_TYPE,
                "the body must be sent as Content-Type: application/json",
            )
            return
        await self.app(scope, receive, send)

    def _host_allowed(self, raw: bytes) -> bool:
        # Clients send the same few Host values again and again: decide each once.
        known = self._hosts_seen.get(raw)
        if known is None:
            if len(self._hosts_seen) >= HOSTS_REMEMBERED:
                self._hosts_seen.clear()
            known = self._hosts_seen[raw] = self._decide_host(raw)
        return known

    def _decide_host(self, raw: bytes) -> bool:
        value = raw.decode("latin-1").strip().lower()
        name, port = _split_host(value)
        if name == "localhost" or _is_loopback(name):
            return True
        allowed = self.allowed_hosts
        return name in allowed or (port is not None and f"{name}:{port}" in allowed)

    def _origin_allowed(self, raw: bytes, host: bytes | None) -> bool:
        if self.origins.allows(raw):
            return True
        origin = raw.decode("latin-1").strip().lower()
        scheme, sep, authority = origin.partition("://")
        if not sep or host is None:
            return False  # "null", or no Host to compare with
        default = _DEFAULT_PORTS.get(scheme, "")
        own = host.decode("latin-1").strip().lower()
        return _without(authority, default) == _without(own, default)


def _without(authority: str, default_port: str) -> str:
    if default_port and authority.endswith(default_port):
        return authority[: -len(default_port)]
    return authority


def _split_host(value: str) -> tuple[str, str | None]:
    """``host[:port]`` or ``[v6]:port`` → (host, port)."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return value, None
        rest = value[end + 1 :]
        return value[1:end], rest[1:] if rest.startswith(":") else None
    if value.count(":") == 1:
        name, port = value.split(":")
        return name, port
    return value, None


def _is_loopback(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def checks_content_type(method: str, path: str) -> bool:
    """Whether the browser guard requires a JSON body of a *method* request to *path*: every
    write but stream writes and ``/v1/proxy``, whose bodies have types of their own."""
    return method.upper() not in ("GET", "HEAD") and not (
        path.startswith("/v1/stream/") or path == "/v1/proxy"
    )


def _json_or_no_body(scope: Scope) -> bool:
    """The body is declared JSON, or there is none, or it cannot come from a web page."""
    length = _header(scope, b"content-length")
    raw = _header(scope, b"content-type")
    if length is None:
        # No body, or a chunked one: a browser sends chunked bodies only over HTTP/2 and
        # later, never to outlast, so one without a declared type is left to the endpoint.
        return raw is None or _is_json(raw)
    if length.strip() == b"0":
        return True
    return raw is not None and _is_json(raw)


def _is_json(raw: bytes) -> bool:
    media = raw.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


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
            retry = exc.retry_after if isinstance(exc, StoreUnavailable) else 1
            await _reject(
                send,
                *STORE_UNAVAILABLE,
                f"the store is unreachable: {exc}",
                retry_after=max(1, round(retry)),
            )
            return
        needed = scopes.required_scopes(scope["method"], scope["path"])
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
        if needed is not None and granted is not None and not scopes.allows(granted, needed):
            lacking = scopes.describe(needed)
            await _reject(send, 403, "forbidden", f"this token lacks the {lacking} scope")
            return
        if needed is None:
            await self.app(scope, receive, send)
            return
        if granted is None:
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

        async def send_private(message: Message) -> None:
            # A credential was needed: no shared cache may keep the answer for others.
            if message["type"] == "http.response.start":
                message["headers"] = _private(message.get("headers", ()))
            await send(message)

        await self.app(scope, receive, send_private)

    @staticmethod
    def _signed_read(scope: Scope, key: bytes) -> Link:
        """A GET of one job's events or stream with a valid, unexpired ``sig``."""
        if scope["method"] not in ("GET", "HEAD") or not readable_with_link(scope["path"]):
            return Link.INVALID
        return verify(key, scope["path"], scope.get("query_string", b""))


def _private(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    out = [
        (name, value.replace(b"public", b"private") if name == b"cache-control" else value)
        for name, value in headers
    ]
    out.append((b"vary", b"Authorization"))
    return out


async def _reject(
    send: Send, status: int, code: str, message: str, *, retry_after: int | None = None
) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="outlast"'))
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

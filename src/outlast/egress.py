"""Where outlast may send requests on a job's behalf (``http`` and ``relay`` tasks, ``/v1/proxy``).

A raw URL's host must be in ``[egress] allowed_hosts``, and its addresses must be public: not
loopback, private, link-local, shared, reserved or multicast, unless the config allows private
addresses (``[egress] allow_private``, or ``allow_private`` of a named upstream). Cloud metadata
addresses (169.254.169.254 and its kin) are refused always: no upstream lives there, and a token
read from one is the classic server-side request forgery.

Addresses are checked after DNS resolution, so a name that points at 127.0.0.1 is refused like
127.0.0.1 itself, and IPv6 forms that embed an IPv4 address (``::ffff:127.0.0.1``, NAT64, 6to4,
Teredo) are judged by the address they embed. The check runs three times: when a job is
submitted (a clear ``403``), just before the request, and at connect time inside the HTTP
client (:func:`guarded_transport`), on the very addresses the socket connects to, so a name
that resolves differently the second time (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import http.cookiejar
import ipaddress
import re
import socket
import ssl
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio
import httpcore
import httpx

from outlast.config import EgressSettings, UpstreamSettings
from outlast.errors import Forbidden, OutlastError, Unprocessable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata services (AWS, GCP, Azure, OpenStack; AWS over IPv6; Alibaba), refused even
# where private addresses are allowed.
METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),
        ipaddress.ip_address("fd00:ec2::254"),
        ipaddress.ip_address("100.100.100.200"),
    }
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# A named upstream's path: no control characters, spaces or backslashes anywhere (a CR or LF
# would split the request line; a backslash is a separator to some servers).
_PATH_REFUSED = re.compile(r"[\x00-\x20\x7f\\]")
_URL_REFUSED = re.compile(r"[\x00-\x20\x7f]")
# Percent-decoding rounds looked through for a hidden dot segment (%252e%252e is %2e%2e).
_DECODE_ROUNDS = 3


class EgressRefused(OutlastError):
    """A connection to a refused address was attempted (found at connect time)."""


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    host: str
    allow_private: bool


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    return None


def is_metadata(addr: IPAddress) -> bool:
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(addr)
        if embedded is not None:
            return embedded in METADATA_ADDRESSES
    return addr in METADATA_ADDRESSES


def is_private(addr: IPAddress) -> bool:
    """Whether *addr* is anything but a public unicast address."""
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(addr)
        if embedded is not None and is_private(embedded):
            return True
    return not addr.is_global or addr.is_multicast or addr in METADATA_ADDRESSES


def refusal(addr: IPAddress, allow_private: bool) -> str | None:
    """Why a connection to *addr* is refused, or ``None`` when it is allowed."""
    if is_metadata(addr):
        return f"{addr} is a cloud metadata address, never allowed"
    if not allow_private and is_private(addr):
        return f"{addr} is a private or local address; set allow_private to permit it"
    return None


def _host_allowed(host: str, allowed: list[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in allowed:
        pattern = pattern.lower().rstrip(".")
        if pattern == "*" or host == pattern:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


def check_url(url: str, egress: EgressSettings, *, field: str = "url") -> Target:
    """Validate a raw URL against the allow-list (no DNS yet): 422 or 403 when refused."""
    if _URL_REFUSED.search(url):
        # urlsplit drops CR, LF and tabs silently; the URL sent would not be the one checked.
        raise Unprocessable(f"{field} holds a control character or space", extra={"field": field})
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        raise Unprocessable(f"{field} is not a valid URL: {exc}", extra={"field": field}) from exc
    if parts.scheme not in ("http", "https") or not host:
        raise Unprocessable(f"{field} must be an absolute http(s) URL", extra={"field": field})
    if not _host_allowed(host, egress.allowed_hosts):
        raise Forbidden(
            f"host {host!r} is not in [egress] allowed_hosts",
            code="egress_denied",
            extra={"field": field},
        )
    return Target(url, host, egress.allow_private)


def check_upstream_path(path: str, *, field: str = "input.path") -> str:
    """A named upstream's path stays under its base URL: 422 for dot segments (``..``, ``.``,
    percent-encoded in any case, or behind backslashes) and characters a request line cannot
    carry. The upstream's secret headers go only where its base path says."""
    if _PATH_REFUSED.search(path):
        raise Unprocessable(
            f"{field} holds a control character, space or backslash", extra={"field": field}
        )
    route = path.split("?", 1)[0]
    for _ in range(_DECODE_ROUNDS):
        if any(segment in (".", "..") for segment in route.replace("\\", "/").split("/")):
            raise Unprocessable(
                f"{field} must not hold '.' or '..' segments (it would leave the upstream's "
                "base path)",
                extra={"field": field},
            )
        decoded = unquote(route)
        if decoded == route:
            return path
        route = decoded
    raise Unprocessable(f"{field} is percent-encoded too many times", extra={"field": field})


def upstream_target(upstream: UpstreamSettings, path: str) -> Target:
    base = upstream.url.rstrip("/")
    if not path.startswith("/"):
        path = "/" + path
    check_upstream_path(path)
    host = urlsplit(base).hostname or ""
    return Target(base + path, host, upstream.allow_private)


async def _resolve(host: str) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    seen: dict[IPAddress, None] = {}
    for info in infos:
        seen[ipaddress.ip_address(str(info[4][0]).split("%")[0])] = None
    return list(seen)


async def resolve_and_check(target: Target) -> list[IPAddress]:
    """Resolve the target's host; 403 when any of its addresses is refused. Returns them."""
    try:
        addresses = await _resolve(target.host)
    except OSError as exc:
        raise Forbidden(f"cannot resolve {target.host!r}: {exc}", code="egress_denied") from exc
    for addr in addresses:
        why = refusal(addr, target.allow_private)
        if why is not None:
            raise Forbidden(f"{target.host!r} resolves to {why}", code="egress_denied")
    return addresses


# -- the check at connect time ---------------------------------------------------------------

# The policy of the request being made in this task: whether private addresses are allowed.
# ``None`` outside :func:`egress_scope` (outlast's own requests): only metadata is refused then.
_allow_private: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "outlast_egress_allow_private", default=None
)


@contextlib.contextmanager
def egress_scope(target: Target) -> Iterator[None]:
    """Requests made inside connect only to addresses *target*'s policy allows."""
    token = _allow_private.set(target.allow_private)
    try:
        yield
    finally:
        _allow_private.reset(token)


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves names itself, checks every address, and connects to a checked address only."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self.inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        allow_private = _allow_private.get()
        try:
            async with asyncio.timeout(timeout):
                addresses = await _resolve(host)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host!r} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
        for addr in addresses:
            why = refusal(addr, allow_private is not False)
            if why is not None:
                raise EgressRefused(f"refused to connect to {host!r}: it resolves to {why}")
        error: Exception | None = None
        for addr in addresses:
            try:
                stream = await self.inner.connect_tcp(
                    str(addr), port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                error = exc
            else:
                return LeanStream(stream)
        assert error is not None
        raise error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise EgressRefused("outlast does not connect to unix sockets on a job's behalf")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class LeanStream(httpcore.AsyncNetworkStream):
    """A connection that reads without a timeout scope when the read has no timeout.

    httpcore's anyio stream enters an ``anyio.fail_after`` scope around every read, even
    without a deadline. A relay reads one small chunk per upstream event, and at a thousand
    relays entering that scope was a fifth of the process's CPU, more than storing the
    events. Upstream reads have no httpx read timeout (the relay enforces its own first-byte
    and idle limits), so they take the direct path; anything else goes through httpcore's.
    """

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self.inner = inner
        # The anyio byte stream under httpcore's wrapper (None: another backend, or a
        # release that keeps it elsewhere; then every read goes through httpcore).
        raw = getattr(inner, "_stream", None)
        self.raw: anyio.abc.ByteStream | None = (
            raw if isinstance(raw, anyio.abc.ByteStream) else None
        )

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if timeout is not None or self.raw is None:
            return await self.inner.read(max_bytes, timeout)
        # The errors httpcore maps, mapped the same way.
        try:
            return await self.raw.receive(max_bytes)
        except anyio.EndOfStream:
            return b""
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise httpcore.ReadError(exc) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self.inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return LeanStream(await self.inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class NoCookies(http.cookiejar.CookieJar):
    """A cookie jar that never stores: give it to the shared client as ``cookies=``.

    One client (and its connection pool) serves every job; with a jar that keeps cookies, a
    ``Set-Cookie`` from one job's upstream would go out with every later job's requests.
    """

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        pass

    def extract_cookies(self, response: Any, request: urllib.request.Request) -> None:
        pass


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default verifying context, built once per process (loading the CA bundle is the
    costly part of a new client) and shared by every outbound client."""
    return httpx.create_ssl_context()


def guarded_transport(**kwargs: Any) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose connections go only where :func:`egress_scope` allows."""
    kwargs.setdefault("verify", _tls_context())
    transport = httpx.AsyncHTTPTransport(**kwargs)
    pool = transport._pool
    if not isinstance(pool, httpcore.AsyncConnectionPool):  # pragma: no cover - a proxy
        raise TypeError("guarded_transport does not support proxies")
    # httpx builds its pool with no way to pass a network backend; the pool reads it from this
    # attribute when it opens a connection (checked by tests/relay/test_egress.py).
    pool._network_backend = _GuardedBackend(pool._network_backend)
    return transport

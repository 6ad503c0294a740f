"""Where outlast may send requests on a job's behalf (``http`` and ``relay`` tasks, ``/v1/proxy``).

A raw URL's host must be in ``[egress] allowed_hosts`` (or be a named upstream's host), and its
addresses must not be loopback, private, link-local, reserved or cloud-metadata addresses unless
the config says so. Addresses are checked after DNS resolution, so a name that points at
127.0.0.1 is refused like 127.0.0.1 itself. The check runs both when a job is submitted (a clear
4xx) and again just before connecting (the name may resolve differently by then).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from outlast.config import EgressSettings, UpstreamSettings
from outlast.errors import Forbidden, Unprocessable

# Cloud metadata services, refused even where private addresses are allowed.
METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),
        ipaddress.ip_address("fd00:ec2::254"),
        ipaddress.ip_address("100.100.100.200"),
    }
)


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    host: str
    allow_private: bool


def is_private(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return is_private(addr.ipv4_mapped)
    return (
        addr.is_loopback
        or addr.is_private
        or addr.is_link_local
        or addr.is_reserved
        or addr.is_multicast
        or addr.is_unspecified
        or addr in METADATA_ADDRESSES
        or (
            isinstance(addr, ipaddress.IPv4Address)
            and addr in ipaddress.ip_network("100.64.0.0/10")
        )
    )


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
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Unprocessable(f"{field} must be an absolute http(s) URL", extra={"field": field})
    host = parts.hostname
    if not _host_allowed(host, egress.allowed_hosts):
        raise Forbidden(
            f"host {host!r} is not in [egress] allowed_hosts",
            code="egress_denied",
            extra={"field": field},
        )
    return Target(url, host, egress.allow_private)


def upstream_target(upstream: UpstreamSettings, path: str) -> Target:
    base = upstream.url.rstrip("/")
    if not path.startswith("/"):
        path = "/" + path
    host = urlsplit(base).hostname or ""
    return Target(base + path, host, upstream.allow_private)


async def resolve_and_check(target: Target) -> None:
    """Resolve the target's host and refuse private addresses unless allowed (403)."""
    if target.allow_private:
        return
    host = target.host
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        addresses = {literal}
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise Forbidden(f"cannot resolve {host!r}: {exc}", code="egress_denied") from exc
        addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
    for addr in addresses:
        if is_private(addr):
            raise Forbidden(
                f"{host!r} resolves to {addr}, a private or local address; "
                "set allow_private to permit it",
                code="egress_denied",
            )

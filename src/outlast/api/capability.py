"""Signed, expiring read links: a browser may read one job's events or stream without a token.

When tokens are configured, a job's ``events`` and ``stream`` URLs carry ``exp`` (a Unix time)
and ``sig`` (an HMAC-SHA256 of the path and ``exp``). Only GET/HEAD of those two paths accept
them. The key is ``[auth] signing_key``, or derived from the configured token hashes so that all
nodes sharing a config agree on it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from urllib.parse import parse_qs

from outlast.config import AuthSettings

# A job's read links stay valid this long after they were handed out.
LINK_TTL = 24 * 3600


def signing_key(auth: AuthSettings) -> bytes:
    if auth.signing_key:
        return auth.signing_key.encode()
    material = "\n".join(sorted(t.token_sha256 for t in auth.tokens))
    return hashlib.sha256(b"outlast-read-links\n" + material.encode()).digest()


def _mac(key: bytes, path: str, exp: int) -> str:
    digest = hmac.new(key, f"{path}\n{exp}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def sign(key: bytes, path: str, *, ttl: int = LINK_TTL, now: float | None = None) -> str:
    exp = int((time.time() if now is None else now) + ttl)
    return f"{path}?exp={exp}&sig={_mac(key, path, exp)}"


def verify(key: bytes, path: str, query: bytes, *, now: float | None = None) -> bool:
    params = parse_qs(query.decode("latin-1"))
    try:
        exp = int(params["exp"][0])
        sig = params["sig"][0]
    except (KeyError, ValueError, IndexError):
        return False
    if exp < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(sig, _mac(key, path, exp))


def readable_with_link(path: str) -> bool:
    """The paths a signed link may open: one job's events and its stream."""
    parts = path.split("/")
    if path.startswith("/v1/jobs/") and len(parts) == 5 and parts[4] == "events":
        return True
    return path.startswith("/v1/stream/jobs/job_") and path.count("/") == 4

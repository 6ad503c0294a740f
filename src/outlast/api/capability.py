"""Signed, expiring read links: a browser may read one job's events or stream without a token.

When tokens are configured, a job's ``events`` and ``stream`` URLs carry ``exp`` (a Unix time)
and ``sig`` (an HMAC-SHA256 of the path and ``exp``). Only GET/HEAD of those two paths accept
them.

The key is ``[auth] signing_key`` when the config sets one; otherwise a random secret made by
the first node that needs it and kept in the store, so that every node sharing the store agrees
on it, and nobody who reads the config can mint links. A link lives ``LINK_TTL`` at most: one
whose ``exp`` lies further ahead was not made by outlast, and is refused.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import secrets
import time
from urllib.parse import parse_qs

from outlast.config import AuthSettings
from outlast.store.base import Store

# A job's read links stay valid this long after they were handed out.
LINK_TTL = 24 * 3600
# Nodes' clocks may disagree by this much: a link made by a node whose clock is ahead is
# still within the cap on a node whose clock is behind.
CLOCK_SKEW = 60
# The store key under which the generated signing key is kept.
STORE_KEY = "read-link-key"


class Link(enum.Enum):
    VALID = "valid"
    INVALID = "invalid"  # missing, malformed, expired or wrongly signed
    TOO_LONG = "too_long"  # expires later than any link outlast makes


class LinkKey:
    """The read-link key of one node: from the config, or loaded (once) from the store."""

    def __init__(self, auth: AuthSettings, store: Store) -> None:
        self.store = store
        self._key: bytes | None = auth.signing_key.encode() if auth.signing_key else None

    async def load(self) -> bytes:
        if self._key is None:
            stored = await self.store.meta_setdefault(STORE_KEY, secrets.token_urlsafe(32))
            self._key = stored.encode()
        return self._key

    @property
    def key(self) -> bytes:
        """The key; :meth:`load` must have run (the auth middleware runs it first)."""
        if self._key is None:
            raise RuntimeError("the read-link key is used before it was loaded")
        return self._key


def _mac(key: bytes, path: str, exp: int) -> str:
    digest = hmac.new(key, f"{path}\n{exp}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def sign(key: bytes, path: str, *, ttl: int = LINK_TTL, now: float | None = None) -> str:
    exp = int((time.time() if now is None else now) + min(ttl, LINK_TTL))
    return f"{path}?exp={exp}&sig={_mac(key, path, exp)}"


def verify(key: bytes, path: str, query: bytes, *, now: float | None = None) -> Link:
    params = parse_qs(query.decode("latin-1"))
    try:
        raw_exp = params["exp"][0]
        sig = params["sig"][0]
    except (KeyError, IndexError):
        return Link.INVALID
    if not raw_exp.isascii() or not raw_exp.isdigit() or len(raw_exp) > 12:
        return Link.INVALID
    exp = int(raw_exp)
    current = time.time() if now is None else now
    if exp < current:
        return Link.INVALID
    if exp > current + LINK_TTL + CLOCK_SKEW:
        return Link.TOO_LONG
    if not hmac.compare_digest(sig, _mac(key, path, exp)):
        return Link.INVALID
    return Link.VALID


def readable_with_link(path: str) -> bool:
    """The paths a signed link may open: one job's events and its stream."""
    parts = path.split("/")
    if path.startswith("/v1/jobs/") and len(parts) == 5 and parts[4] == "events":
        return True
    return path.startswith("/v1/stream/jobs/job_") and path.count("/") == 4

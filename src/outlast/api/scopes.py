"""Which scope each endpoint needs when tokens are configured: one table, read by the auth
middleware and printed in docs/configuration.md.

A token with ``admin`` may do everything. A row names the scopes any one of which suffices:
a job's own stream (``/v1/stream/jobs/<id>``) is one more view of the job, so ``jobs:read``
reads it as ``streams:read`` does. Paths the table does not name need ``admin``.
"""

from __future__ import annotations

from dataclasses import dataclass

ADMIN = "admin"
READ_METHODS = frozenset({"GET", "HEAD"})
# Answer without a token: probes, and the description of the API (no data in either).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/ui"})
# The dashboard's own files (docs/dashboard.md): no data in them; the page asks for a token.
UI_PREFIX = "/ui/"


@dataclass(frozen=True)
class Rule:
    """Requests to paths starting with ``prefix`` (or equal to it, with ``exact``) need one of
    ``read`` (GET, HEAD) or ``write`` (any other method)."""

    prefix: str
    read: frozenset[str]
    write: frozenset[str]
    exact: bool = False

    def matches(self, path: str) -> bool:
        return path == self.prefix if self.exact else path.startswith(self.prefix)


def _any(*scopes: str) -> frozenset[str]:
    return frozenset(scopes)


# First match wins: the job streams before the other streams.
RULES: tuple[Rule, ...] = (
    Rule("/metrics", _any(ADMIN), _any(ADMIN), exact=True),
    Rule("/v1/stream/jobs/", _any("jobs:read", "streams:read"), _any("streams:write")),
    Rule("/v1/stream/", _any("streams:read"), _any("streams:write")),
    Rule("/v1/jobs", _any("jobs:read"), _any("jobs:write")),
    Rule("/v1/queues", _any("jobs:read"), _any(ADMIN)),
    Rule("/v1/upstreams/", _any("jobs:write"), _any("jobs:write")),
    Rule("/v1/proxy", _any("jobs:write"), _any("jobs:write"), exact=True),
)


def required_scopes(method: str, path: str) -> frozenset[str] | None:
    """The scopes any one of which lets this request through, or ``None`` for a public path."""
    if path in PUBLIC_PATHS or path.startswith(UI_PREFIX):
        return None
    for rule in RULES:
        if rule.matches(path):
            return rule.read if method in READ_METHODS else rule.write
    return _any(ADMIN)


def allows(granted: frozenset[str], needed: frozenset[str]) -> bool:
    return ADMIN in granted or not needed.isdisjoint(granted)


def describe(needed: frozenset[str]) -> str:
    """``'jobs:read'`` or ``'jobs:read' or 'streams:read'``, for a 403's message."""
    return " or ".join(f"'{scope}'" for scope in sorted(needed))

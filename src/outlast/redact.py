"""Secrets a client handed outlast for an upstream, kept for the request but never shown.

A job's input is stored whole (the worker needs it), and rendered through :func:`job_input`
wherever a job is shown (its JSON in every API answer, and so the CLI): header values that carry
credentials become ``[redacted]``, and so do URL userinfo and query values.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

REDACTED = "[redacted]"
# The built-in tasks whose input holds an upstream request (headers, url, path).
REQUEST_TASKS = frozenset({"http", "relay"})
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "upstream-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
    }
)
# Any header whose name says it carries a credential.
SECRET_WORDS = ("auth", "token", "secret", "key", "password", "session", "signature", "cookie")


def is_secret_header(name: str) -> bool:
    lower = name.lower()
    return lower in SECRET_HEADERS or any(word in lower for word in SECRET_WORDS)


def headers(value: dict[str, Any]) -> dict[str, Any]:
    return {k: REDACTED if is_secret_header(k) else v for k, v in value.items()}


def url(value: str) -> str:
    """*value* without its userinfo's secret and with every query value redacted."""
    try:
        parts = urlsplit(value)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{host or ''}" + ("" if port is None else f":{port}")
    query = parts.query
    if query:
        query = "&".join(f"{k}={REDACTED}" for k, _ in parse_qsl(query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def job_input(task: str, value: Any) -> Any:
    """A job's input as it may be shown: the upstream credentials of ``http`` and ``relay``
    inputs redacted. Other tasks' inputs are their own data, shown as given."""
    if task not in REQUEST_TASKS or not isinstance(value, dict):
        return value
    out = dict(value)
    if isinstance(out.get("headers"), dict):
        out["headers"] = headers(out["headers"])
    if isinstance(out.get("url"), str):
        out["url"] = url(out["url"])
    if isinstance(out.get("path"), str) and "?" in out["path"]:
        path, _, query = out["path"].partition("?")
        out["path"] = path + "?" + url("http://h/?" + query).split("?", 1)[1]
    return out

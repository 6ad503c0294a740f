"""Completion webhooks as they go over the wire: the Standard Webhooks signature, made and checked.

outlast signs each attempt with the configured secret (``[webhooks] secret``, ``whsec_`` + the
base64 of the key)::

    webhook-id: msg_...          one per event, the same on every attempt
    webhook-timestamp: 1733400000  unix seconds, per attempt
    webhook-signature: v1,<base64 of HMAC-SHA256(key, "<id>.<timestamp>.<body>")>

A Python receiver checks a request with :func:`verify` (or the ``standardwebhooks`` package:
the format is the same). See ``docs/webhooks.md``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

from outlast.errors import WebhookVerificationError

__all__ = ["WebhookVerificationError", "secret_key", "sign", "verify"]

SECRET_PREFIX = "whsec_"
# How far a request's timestamp may be from the receiver's clock (replays of old requests).
DEFAULT_TOLERANCE = 300.0


def secret_key(secret: str) -> bytes:
    """The key bytes of a ``whsec_`` secret (``ValueError`` when it is not one)."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from exc
    if not key:
        raise ValueError("a webhook secret is 'whsec_' followed by base64 of a non-empty key")
    return key


def sign(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value of one attempt."""
    message = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(key: bytes, webhook_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The headers of one attempt, signed now."""
    timestamp = int(time.time() if now is None else now)
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, webhook_id, timestamp, body),
    }


def verify(
    body: bytes | str,
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> None:
    """Check a webhook request: its signature was made with *secret* over this body, and its
    timestamp is within *tolerance* seconds of now. Raises :class:`WebhookVerificationError`.

    *headers* may be any mapping (a framework's request headers); names are matched without
    regard to case.
    """
    lower = {name.lower(): value for name, value in headers.items()}
    webhook_id = lower.get("webhook-id")
    raw_timestamp = lower.get("webhook-timestamp")
    signatures = lower.get("webhook-signature")
    if not webhook_id or not raw_timestamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or signature")
    try:
        timestamp = int(raw_timestamp)
    except ValueError as exc:
        raise WebhookVerificationError("webhook-timestamp is not a number") from exc
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is too far from now")
    try:
        key = secret_key(secret)
    except ValueError as exc:
        raise WebhookVerificationError(str(exc)) from exc
    data = body.encode() if isinstance(body, str) else body
    expected = sign(key, webhook_id, timestamp, data)
    # Several signatures may be sent (a secret being rotated): one that matches is enough.
    for candidate in signatures.split(" "):
        if hmac.compare_digest(candidate.encode(), expected.encode()):
            return
    raise WebhookVerificationError("no webhook-signature matches the secret")

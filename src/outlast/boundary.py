"""Input checked once, where it enters: JSON bodies, whole numbers in headers and parameters,
stream names and header values. What fails here is a ``4xx`` and is never stored.

- JSON: UTF-8 only (a UTF-16 body would reach readers as bytes no reader can decode), no lone
  surrogates, finite numbers only (``1e999`` is not infinity here: JSON has no infinity and
  nothing could render it back), integers within 64 bits, nesting at most ``MAX_DEPTH`` deep.
- Whole numbers: ASCII digits only, and few enough of them. Python's ``int()`` and
  ``str.isdigit()`` accept other scripts' digits and superscripts ('١٢٣', '²').
- Stream names: no control characters, and only characters a header can carry (a stream's name
  appears in ``Location`` and ``Stream-Forked-From``).
- Header names and values given for an upstream request: valid HTTP (no CR, LF or NUL).
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from outlast.errors import BadRequest, Unprocessable

# Deeper documents are refused: nothing outlast serves nests this deep, and the encoders that
# store and render a job recurse once per level.
MAX_DEPTH = 64
# Integers a 64-bit signed or unsigned field can hold; larger ones are not numbers any client
# can read back exactly.
MIN_INT = -(2**63)
MAX_INT = 2**64 - 1
# A run of this many digits may be an integer past 64 bits (orjson reads those as floats):
# 2**64 has 20 digits, -(2**63) - 1 has 19.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
# Bytes that are not ASCII digits: deleting them counts a body's digits far faster than the
# regular expression scans it, and a body with fewer than 19 digits holds no such run.
_NOT_DIGITS = bytes(b for b in range(256) if not 0x30 <= b <= 0x39)
# Whole numbers in headers and parameters: ASCII digits, no sign, no leading zeros, and at most
# 18 of them (any such number fits in 63 bits).
_WHOLE = re.compile(r"0|[1-9][0-9]{0,17}")
# RFC 9110 token characters (header names) and field-value characters (no CR, LF, NUL, DEL).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# Characters a stream name may not hold: controls (C0, DEL, C1) and anything past Latin-1.
_NAME_REFUSED = re.compile(r"[\x00-\x1f\x7f-\x9f]|[^\x00-\xff]")


def parse_json(body: bytes, *, what: str = "body") -> Any:
    """*body* parsed as JSON by the rules above; ``400 invalid_json`` otherwise."""
    try:
        # orjson refuses non-UTF-8 input, lone surrogates, NaN, infinities and numbers that
        # overflow a double, and nesting past 1024 levels.
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{what} is not valid JSON (UTF-8): {exc}", code="invalid_json") from exc
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH:
        _check_depth(value, what)
    if len(body.translate(None, _NOT_DIGITS)) >= 19 and _LONG_DIGITS.search(body) is not None:
        value = _exact(body, what)
    return value


def _check_depth(value: Any, what: str) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_DEPTH:
            raise BadRequest(f"{what} is nested more than {MAX_DEPTH} levels", code="invalid_json")
        stack.extend((child, depth + 1) for child in children)


def _exact_int(text: str) -> int:
    if len(text.lstrip("-")) > 20 or not MIN_INT <= int(text) <= MAX_INT:
        raise ValueError(f"integer {text[:24]}... does not fit in 64 bits")
    return int(text)


def _exact(body: bytes, what: str) -> Any:
    """Parsed again with the json module, whose integers are exact, checking their size."""
    try:
        return json.loads(body, parse_int=_exact_int)
    except ValueError as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}", code="invalid_json") from exc


def whole_number(raw: str) -> int | None:
    """*raw* as a non-negative whole number of ASCII digits, or ``None``."""
    return int(raw) if _WHOLE.fullmatch(raw) else None


def check_stream_name(name: str, max_length: int) -> str:
    if not name or len(name) > max_length:
        raise BadRequest(f"stream name must be 1 to {max_length} characters", code="invalid_name")
    bad = _NAME_REFUSED.search(name)
    if bad is not None:
        raise BadRequest(
            f"stream name holds {bad.group()!r}: names take printable Latin-1 characters only",
            code="invalid_name",
        )
    return name


def check_headers(headers: dict[str, str], field: str) -> None:
    """422 naming *field* unless every name is an HTTP token and every value a valid field
    value (a CR or LF would split the upstream request)."""
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise Unprocessable(f"{field}: {name!r} is not a header name", extra={"field": field})
        if not _FIELD_VALUE.fullmatch(value):
            raise Unprocessable(
                f"{field}: the value of {name!r} holds characters a header cannot carry",
                extra={"field": field},
            )

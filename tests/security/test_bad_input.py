"""Bad input is refused where it enters (a 4xx with an error body) and never stored: JSON that
is not UTF-8, lone surrogates, non-finite or oversized numbers, nesting too deep; whole numbers
written in other scripts' digits; stream names no header can carry. And what is stored is served
whole: SSE data lines are never split inside a JSON string."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from outlast.errors import NotFound
from tests.security.inprocess import Running, running

APP = {"server": {"app": "tests.jobs.apps:app"}}
JSON = {"Content-Type": "application/json"}

DEEP = 20_000
BAD_JSON: dict[str, bytes] = {
    "1e999": b'{"x": 1e999}',
    "-1e999": b'{"x": -1e999}',
    "1e400": b'{"x": 1E400}',
    "10^400": b'{"x": 1' + b"0" * 400 + b"}",
    "2^64": b'{"x": 18446744073709551616}',
    "-2^63-1": b'{"x": -9223372036854775809}',
    "NaN": b'{"x": NaN}',
    "Infinity": b'{"x": Infinity}',
    "lone high surrogate": b'{"x": "\\ud800"}',
    "lone low surrogate": b'{"x": "\\udfff"}',
    "surrogate key": b'{"\\ud83d": 1}',
    "surrogate as UTF-8 bytes": b'{"x": "\xed\xa0\x80"}',
    "not UTF-8": b'{"x": "\xff"}',
    "UTF-16 with BOM": '{"x": 1}'.encode("utf-16"),
    "UTF-16-LE": '{"x": 1}'.encode("utf-16-le"),
    "UTF-16-BE": '{"x": 1}'.encode("utf-16-be"),
    "UTF-32": '{"x": 1}'.encode("utf-32"),
    "UTF-8 BOM": b'\xef\xbb\xbf{"x": 1}',
    "20,000 deep arrays": b'{"x": ' + b"[" * DEEP + b"]" * DEEP + b"}",
    "20,000 deep objects": b'{"x": ' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}",
    "65 deep": b'{"x": ' + b"[" * 64 + b"]" * 64 + b"}",
}


def _scenario(tmp_path: Path, check: Callable[[Running], Awaitable[None]]) -> None:
    async def scenario() -> None:
        async with running(f"sqlite:///{tmp_path / 'o.db'}", APP) as node:
            await check(node)

    asyncio.run(scenario())


def _error(resp: httpx.Response, *statuses: int) -> dict[str, Any]:
    assert resp.status_code in statuses, (resp.status_code, resp.text)
    error: dict[str, Any] = resp.json()["error"]
    assert error["code"] and error["message"]
    return error


@pytest.mark.parametrize("body", BAD_JSON.values(), ids=BAD_JSON.keys())
def test_bad_json_job_input_is_400_and_never_stored(tmp_path: Path, body: bytes) -> None:
    async def check(node: Running) -> None:
        # As the whole input, and inside it.
        for content in (
            b'{"task": "echo", "input": ' + body + b"}",
            b'{"task": "echo", "input": {"y": ' + body + b"}}",
        ):
            resp = await node.client.post("/v1/jobs", content=content, headers=JSON)
            assert _error(resp, 400)["code"] == "invalid_json"
        listed = await node.client.get("/v1/jobs")
        assert listed.status_code == 200, listed.text
        assert listed.json()["jobs"] == []

    _scenario(tmp_path, check)


@pytest.mark.parametrize("body", BAD_JSON.values(), ids=BAD_JSON.keys())
def test_bad_json_append_is_400_and_never_stored(tmp_path: Path, body: bytes) -> None:
    async def check(node: Running) -> None:
        client = node.client
        assert (await client.put("/v1/stream/s", headers=JSON)).status_code == 201
        for content in (body, b"[" + body + b"]", b"[1, " + body + b"]"):
            resp = await client.post("/v1/stream/s", content=content, headers=JSON)
            assert _error(resp, 400)["code"] == "invalid_json"
        resp = await client.put("/v1/stream/t", content=body, headers=JSON)
        assert _error(resp, 400)["code"] == "invalid_json"
        read = await client.get("/v1/stream/s", params={"offset": "-1"})
        assert read.status_code == 200 and read.json() == []
        with pytest.raises(NotFound):
            await node.node.store.head("t")

    _scenario(tmp_path, check)


def test_valid_json_at_the_limits_is_accepted(tmp_path: Path) -> None:
    value = {
        "big": 2**64 - 1,
        "small": -(2**63),
        "deep": json.loads("[" * 61 + "]" * 61),
        "text": "\u2028 \U0001f600 \x85",
    }

    async def check(node: Running) -> None:
        resp = await node.client.post("/v1/jobs", json={"task": "echo", "input": value})
        assert resp.status_code == 202, resp.text
        assert resp.json()["input"] == value
        assert (await node.client.get("/v1/jobs")).status_code == 200

    _scenario(tmp_path, check)


# Whole numbers: ASCII digits only, bounded (int() and isdigit() take '١٢٣' and '²').
BAD_WHOLE = [
    "\u0661\u0662",
    "\u00b2",
    "\u0665",
    "\uff15",
    "1_0",
    "+5",
    " 5",
    "5 ",
    "-1",
    "9" * 5000,
]


@pytest.mark.parametrize("raw", BAD_WHOLE)
def test_unicode_digits_in_limit_and_cursor_are_refused(tmp_path: Path, raw: str) -> None:
    async def check(node: Running) -> None:
        _error(await node.client.get("/v1/jobs", params={"limit": raw}), 422)
        _error(await node.client.get("/v1/jobs", params={"cursor": raw}), 400, 422)
        resp = await node.client.post("/v1/jobs", json={"task": "echo"})
        _error(await node.client.get(f"/v1/jobs/{resp.json()['id']}", params={"wait": raw}), 422)
        # A stream cursor that is not ours is ignored (a fresh one is handed out), never a 5xx.
        await node.client.put("/v1/stream/s", content=b"x", headers={"Content-Type": "text/plain"})
        poll = await node.client.get(
            "/v1/stream/s", params={"offset": "-1", "live": "long-poll", "cursor": raw}
        )
        assert poll.status_code == 200, poll.text
        assert poll.headers["Stream-Cursor"].isascii() and poll.headers["Stream-Cursor"].isdigit()

    _scenario(tmp_path, check)


# Header values arrive as bytes: other scripts' digits as their UTF-8 bytes, '²' as Latin-1.
BAD_HEADER_INTEGERS = [
    "\u0661\u0662\u0663".encode(),
    b"\xb2",
    b"\xb9\xb2",
    b"9" * 5000,
    b"9" * 30,
    b"1_0",
    b"+1",
]


@pytest.mark.parametrize("raw", BAD_HEADER_INTEGERS)
@pytest.mark.parametrize(
    "header",
    [
        "Stream-TTL",
        "Producer-Epoch",
        "Producer-Seq",
        "Stream-Fork-Offset",
        "Stream-Fork-Sub-Offset",
    ],
)
def test_integer_headers_take_ascii_digits_only(tmp_path: Path, header: str, raw: bytes) -> None:
    async def check(node: Running) -> None:
        client = node.client
        text = {"Content-Type": "text/plain"}
        await client.put("/v1/stream/src", content=b"abc", headers=text)
        if header == "Stream-TTL":
            resp = await client.put("/v1/stream/t", headers={header: raw})
        elif header.startswith("Stream-Fork-"):
            fork = {"Stream-Forked-From": "/v1/stream/src", header: raw}
            resp = await client.put("/v1/stream/t", headers={**text, **fork})
        else:
            producer = {"Producer-Id": "p", "Producer-Epoch": b"0", "Producer-Seq": b"0"}
            producer[header] = raw
            resp = await client.post("/v1/stream/src", content=b"d", headers={**text, **producer})
        _error(resp, 400)
        with pytest.raises(NotFound):
            await node.node.store.head("t")
        assert (await client.get("/v1/stream/src", params={"offset": "-1"})).content == b"abc"

    _scenario(tmp_path, check)


def test_content_length_in_other_digits_is_not_a_5xx(tmp_path: Path) -> None:
    async def check(node: Running) -> None:
        for path, body in (("/v1/jobs", b'{"task": "echo"}'), ("/v1/stream/s", b"[1]")):
            headers = {**JSON, "Content-Length": "\u00b2".encode("latin-1")}
            if path == "/v1/stream/s":
                await node.client.put(path, headers=JSON)
            resp = await node.client.post(path, content=body, headers=headers)
            assert resp.status_code < 500, resp.text

    _scenario(tmp_path, check)


BAD_NAMES = [
    "\u65e5\u672c",
    "a%00b",
    "a%0d%0ab",
    "a%0ab",
    "tab%09",
    "a%7fb",
    "a%c2%85b",
    "\u2028",
    "emoji-\U0001f600",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_stream_names_no_header_can_carry_are_400_and_not_created(
    tmp_path: Path, name: str
) -> None:
    async def check(node: Running) -> None:
        client = node.client
        text = {"Content-Type": "text/plain"}
        _error(await client.put(f"/v1/stream/{name}", content=b"x", headers=text), 400)
        _error(await client.post(f"/v1/stream/{name}", content=b"x", headers=text), 400)
        _error(await client.get(f"/v1/stream/{name}", params={"offset": "-1"}), 400)
        decoded = httpx.URL(f"http://h/{name}").path[1:]
        from urllib.parse import unquote

        with pytest.raises(NotFound):
            await node.node.store.head(unquote(decoded))
        # As the source of a fork too.
        await client.put("/v1/stream/ok", content=b"x", headers=text)
        fork = {"Stream-Forked-From": f"/v1/stream/{name}".encode()}
        resp = await client.put("/v1/stream/child", headers={**text, **fork})
        assert 400 <= resp.status_code < 500, resp.text

    _scenario(tmp_path, check)


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_sse_data_lines_are_not_split_inside_json_strings(tmp_path: Path, separator: str) -> None:
    """A client that splits lines at U+2028 (Python's str.splitlines does) still reads the
    JSON that was appended."""
    value = {"text": f"before{separator}after", "n": 1}
    raw = json.dumps(value, ensure_ascii=False).encode()

    async def check(node: Running) -> None:
        client = node.client
        await client.put("/v1/stream/s", headers=JSON)
        assert (await client.post("/v1/stream/s", content=raw, headers=JSON)).status_code == 204
        both = [value, value]
        batch = json.dumps(both, ensure_ascii=False).encode()
        assert (await client.post("/v1/stream/s", content=batch, headers=JSON)).status_code == 204
        await client.post("/v1/stream/s", headers={"Stream-Closed": "true"})
        catch_up = await client.get("/v1/stream/s", params={"offset": "-1"})
        assert catch_up.json() == [value, value, value]
        sse = await client.get("/v1/stream/s", params={"offset": "-1", "live": "sse"})
        data: list[str] = []
        events = []
        for line in sse.text.splitlines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:])
            elif line == "" and data:
                events.append((kind, "\n".join(data)))
                data = []
        received = [json.loads(d) for kind, d in events if kind == "data"]
        assert [item for batch in received for item in batch] == [value, value, value]

    _scenario(tmp_path, check)

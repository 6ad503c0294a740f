"""A named upstream's path cannot leave its base path (dot segments, raw or encoded, refused at
submit), relay and ``http`` headers and paths that are not valid HTTP are refused at submit (not
at run time), and a bad ``Last-Event-ID`` is refused before a pass-through job exists."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.security.inprocess import Running, running, upstream_overrides

# Each would reach the fake's /echo (outside the upstream's base path, /v1) if sent as given.
ESCAPES = [
    "/../echo",
    "/v1/../../echo",
    "../echo",
    "/./../echo",
    "/%2e%2e/echo",
    "/%2E%2E/echo",
    "/.%2e/echo",
    "/%2e./echo",
    "/%2e%2e%2fecho",
    "/%2E%2E%2Fecho",
    "/%252e%252e/echo",
    "/..\\echo",
    "/..%5cecho",
    "/..%5Cecho",
    "/chat/..",
    "/chat/.",
    "/../echo?x=1",
]
# Paths a request line cannot carry.
BROKEN_PATHS = ["/chat\r\nX-Injected: 1", "/chat\nx", "/chat\x00", "/a b", "/chat\t"]
BAD_HEADERS: list[dict[str, str]] = [
    {"x-a": "v\r\nX-Injected: 1"},
    {"x-a": "v\nX-Injected: 1"},
    {"x-a": "v\rx"},
    {"x-a": "v\x00"},
    {"x-a": "\u2028"},
    {"x a": "v"},
    {"x-a:": "v"},
    {"x-a\r\nX-Injected": "v"},
    {"": "v"},
]


def _upstream_overrides(fake: Any) -> dict[str, Any]:
    overrides = upstream_overrides(fake)
    overrides["upstreams"]["fake"]["url"] = f"{fake.url}/v1"
    return overrides


@pytest.fixture(scope="module")
def fake() -> Iterator[Any]:
    """One fake upstream for the cases that must not reach it (each case has its own node and
    store, and counts the fake's requests from its own start)."""
    from tests.fakes.upstream import FakeUpstream

    fake = FakeUpstream().start()
    yield fake
    fake.stop()


def _run(tmp_path: Path, fake: Any, check: Any) -> None:
    before = Counter(fake.requests)

    async def scenario() -> None:
        async with running(f"sqlite:///{tmp_path / 'o.db'}", _upstream_overrides(fake)) as node:
            await check(node)
            assert (await node.client.get("/v1/jobs")).json()["jobs"] == []
        assert fake.requests - before == Counter(), "the upstream was reached"

    asyncio.run(scenario())


@pytest.mark.parametrize("path", ESCAPES + BROKEN_PATHS)
def test_relay_path_outside_the_base_is_422(tmp_path: Path, fake: Any, path: str) -> None:
    async def check(node: Running) -> None:
        body = {"task": "relay", "input": {"upstream": "fake", "path": path}}
        resp = await node.client.post("/v1/jobs", json=body)
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"]["field"] == "input.path"

    _run(tmp_path, fake, check)


@pytest.mark.parametrize(
    "path", ["/..%2F..%2Fecho", "/..%2fecho", "/%2e%2e/echo", "/..%5Cecho", "/x/..%2F..%2Fecho"]
)
def test_pass_through_path_outside_the_base_is_refused(
    tmp_path: Path, fake: Any, path: str
) -> None:
    async def check(node: Running) -> None:
        resp = await node.client.post(f"/v1/upstreams/fake{path}", json={"stream": False})
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"]["field"] == "input.path"

    _run(tmp_path, fake, check)


@pytest.mark.parametrize("path", ["/../echo", "/%2e%2e/echo", "/..\\echo"])
def test_proxy_upstream_path_outside_the_base_is_422(tmp_path: Path, fake: Any, path: str) -> None:
    async def check(node: Running) -> None:
        headers = {"Upstream-Name": "fake", "Upstream-Path": path}
        resp = await node.client.post("/v1/proxy", content=b"{}", headers=headers)
        assert resp.status_code == 422, resp.text

    _run(tmp_path, fake, check)


@pytest.mark.parametrize("task", ["relay", "http"])
@pytest.mark.parametrize("headers", BAD_HEADERS)
def test_invalid_header_names_and_values_are_422_at_submit(
    tmp_path: Path, fake: Any, task: str, headers: dict[str, str]
) -> None:
    async def check(node: Running) -> None:
        value: dict[str, Any] = {"headers": headers}
        if task == "relay":
            value.update(upstream="fake", path="/chat/completions")
        else:
            value["url"] = f"{fake.url}/echo"
        resp = await node.client.post("/v1/jobs", json={"task": task, "input": value})
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"]["field"] == "input.headers"

    _run(tmp_path, fake, check)


def test_bad_last_event_id_is_refused_before_the_job_exists(tmp_path: Path, fake: Any) -> None:
    async def check(node: Running) -> None:
        resp = await node.client.post(
            "/v1/upstreams/fake/chat/completions",
            json={"model": "m", "stream": True, "messages": []},
            headers={"Last-Event-ID": "not-an-offset"},
        )
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == "invalid_offset"
        # _run: and the upstream was not reached.

    _run(tmp_path, fake, check)


def test_paths_inside_the_base_still_work(tmp_path: Path, upstream: Any) -> None:
    """Dots inside a segment, and encoded slashes that stay inside, are not dot segments."""

    async def check(node: Running) -> None:
        for path in ["/chat/completions", "/chat/completions?x=..", "/chat/completions.v2"]:
            body = {"task": "relay", "input": {"upstream": "fake", "path": path}}
            resp = await node.client.post("/v1/jobs", json=body)
            assert resp.status_code == 202, (path, resp.text)
            await node.client.post(f"/v1/jobs/{resp.json()['id']}/cancel")

    async def scenario() -> None:
        async with running(f"sqlite:///{tmp_path / 'o.db'}", _upstream_overrides(upstream)) as n:
            await check(n)

    asyncio.run(scenario())


@pytest.mark.parametrize("task", ["relay", "http"])
@pytest.mark.parametrize(
    "tail", ["/echo\r\nX-Injected: 1", "/echo\n", "/ec\tho", "/echo x", "/\x00"]
)
def test_raw_urls_with_control_characters_are_422(
    tmp_path: Path, fake: Any, task: str, tail: str
) -> None:
    """``urlsplit`` drops CR, LF and tabs: the URL checked would not be the URL sent."""

    async def check(node: Running) -> None:
        value = {"url": fake.url + tail}
        resp = await node.client.post("/v1/jobs", json={"task": task, "input": value})
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"]["field"] == "input.url"

    _run(tmp_path, fake, check)

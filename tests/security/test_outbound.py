"""Outbound requests of different jobs share no state: a cookie one job's upstream set is never
sent with another job's request (the shared client's jar never stores)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from outlast.egress import NoCookies
from tests.security.inprocess import finished, running, upstream_overrides


def test_set_cookie_of_one_job_is_not_sent_with_the_next(tmp_path: Path, upstream: Any) -> None:
    async def scenario() -> None:
        store = f"sqlite:///{tmp_path / 'outlast.db'}"
        async with running(store, upstream_overrides(upstream)) as node:
            client = node.client
            # Both kinds of outbound job, one after another: http (raw URL) and relay (named
            # upstream); each upstream answer sets a cookie.
            submissions: list[dict[str, Any]] = [
                {"task": "http", "input": {"url": f"{upstream.url}/cookie?name=first"}},
                {"task": "relay", "input": {"upstream": "fake", "path": "/cookie?name=second"}},
                {"task": "http", "input": {"url": f"{upstream.url}/cookie?name=third"}},
            ]
            for body in submissions:
                resp = await client.post("/v1/jobs", json=body)
                assert resp.status_code == 202, resp.text
                job = await finished(client, resp.json()["id"])
                assert job["state"] == "succeeded", job
        assert [name for name, _ in upstream.cookies_seen] == ["first", "second", "third"]
        assert [cookie for _, cookie in upstream.cookies_seen] == [None, None, None]

    asyncio.run(scenario())


@pytest.mark.parametrize("url", ["http://127.0.0.1/a", "http://example.com/b"])
def test_the_jar_never_stores(url: str) -> None:
    jar = NoCookies()
    client = httpx.Client(
        cookies=jar,
        transport=httpx.MockTransport(
            lambda request: httpx.Response(200, headers={"set-cookie": "session=x; Path=/"})
        ),
    )
    with client:
        client.get(url)
        sent = client.get(url).request
    assert "cookie" not in sent.headers
    assert len(jar) == 0

"""Signed read links: the key is a random secret kept in the store (shared by every node on it)
unless the config sets one, never derived from the config; a link lives 24 h at most."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from outlast.api.capability import LINK_TTL, sign
from outlast.store import open_store
from tests.conftest import RedisProcess
from tests.security.inprocess import running, token_entry

TOKEN = "secret-token-for-tests"
APP = "tests.jobs.apps:app"


def _settings(signing_key: str = "") -> dict[str, Any]:
    return {
        "server": {"app": APP},
        "auth": {
            "tokens": [token_entry("ci", TOKEN, ["jobs:read", "jobs:write", "streams:read"])],
            "signing_key": signing_key,
        },
    }


BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.slow  # a redis-server process for the Redis store
def test_meta_setdefault_keeps_the_first_value(store_url: str) -> None:
    """The store method the key lives in (both stores): the first value stored wins, for every
    caller, including callers racing each other."""

    async def scenario() -> None:
        store = await open_store(store_url)
        try:
            assert await store.meta_setdefault("k", "first") == "first"
            assert await store.meta_setdefault("k", "second") == "first"
            racing = await asyncio.gather(
                *(store.meta_setdefault("race", f"v{i}") for i in range(20))
            )
            assert len(set(racing)) == 1
            assert await store.meta_setdefault("other", "x") == "x"
        finally:
            await store.close()

    asyncio.run(scenario())


def test_the_key_cannot_be_derived_from_the_config(tmp_path: Path) -> None:
    """Who reads the config (token hashes) cannot mint links: the old derivation is refused."""

    async def scenario() -> None:
        async with running(f"sqlite:///{tmp_path / 'o.db'}", _settings()) as node:
            resp = await node.client.post("/v1/jobs", json={"task": "echo"}, headers=BEARER)
            assert resp.status_code == 202, resp.text
            job = resp.json()
            path = f"/v1/stream/jobs/{job['id']}"
            # The link outlast hands out works without a token.
            ok = await node.client.get(job["stream"] + "&offset=-1")
            assert ok.status_code == 200, ok.text
            hashes = sorted(hashlib.sha256(t.encode()).hexdigest() for t in (TOKEN,))
            derived = hashlib.sha256(b"outlast-read-links\n" + "\n".join(hashes).encode()).digest()
            forged = await node.client.get(sign(derived, path) + "&offset=-1")
            assert forged.status_code == 401, forged.text
            assert forged.json()["error"]["code"] == "unauthorized"

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("lifetime", "status"),
    [(3600, 200), (LINK_TTL, 200), (LINK_TTL + 3600, 403), (30 * 86400, 403), (10**10, 403)],
)
def test_a_link_lives_24_hours_at_most(tmp_path: Path, lifetime: int, status: int) -> None:
    """With a configured key, links signed with it but expiring later than 24 h are refused."""
    key = "configured-signing-key"

    async def scenario() -> None:
        async with running(f"sqlite:///{tmp_path / 'o.db'}", _settings(key)) as node:
            resp = await node.client.post("/v1/jobs", json={"task": "echo"}, headers=BEARER)
            job_id = resp.json()["id"]
            path = f"/v1/stream/jobs/{job_id}"
            exp = int(time.time()) + lifetime
            mac = hmac.new(key.encode(), f"{path}\n{exp}".encode(), hashlib.sha256).digest()
            sig = base64.urlsafe_b64encode(mac).decode().rstrip("=")
            got = await node.client.get(path, params={"offset": "-1", "exp": exp, "sig": sig})
            assert got.status_code == status, got.text
            if status == 403:
                assert got.json()["error"]["code"] == "forbidden"

    asyncio.run(scenario())


def test_links_handed_out_expire_within_24_hours(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(f"sqlite:///{tmp_path / 'o.db'}", _settings()) as node:
            job = (await node.client.post("/v1/jobs", json={"task": "echo"}, headers=BEARER)).json()
            for link in (job["stream"], job["events"]):
                exp = int(parse_qs(urlsplit(link).query)["exp"][0])
                assert time.time() < exp <= time.time() + LINK_TTL + 1

    asyncio.run(scenario())


@pytest.mark.slow  # a redis-server process
def test_nodes_on_one_redis_share_the_generated_key(
    redis_factory: Callable[[], RedisProcess],
) -> None:
    """A link handed out by one node opens on another node of the same store; a node on
    another store (another random key) refuses it."""
    redis = redis_factory()

    async def scenario() -> None:
        async with (
            running(redis.db_url(0), _settings()) as first,
            running(redis.db_url(0), _settings()) as second,
            running(redis.db_url(1), _settings()) as elsewhere,
        ):
            resp = await first.client.post("/v1/jobs", json={"task": "echo"}, headers=BEARER)
            job = resp.json()
            got = await second.client.get(job["stream"] + "&offset=-1")
            assert got.status_code == 200, got.text
            refused = await elsewhere.client.get(job["stream"] + "&offset=-1")
            assert refused.status_code == 401, refused.text

    asyncio.run(scenario())

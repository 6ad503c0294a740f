"""Reads that needed a credential (a bearer token or a signed link) are never stored by shared
caches: ``Cache-Control: private`` with ``Vary: Authorization``. Reads that needed none stay
``public`` (a CDN may collapse readers). See docs/operations.md, "Security model"."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "caching-test-token"


@pytest.fixture
def backend() -> str:
    return "sqlite"


def _private(resp: httpx.Response) -> None:
    cache = resp.headers["cache-control"]
    assert "private" in cache and "public" not in cache, cache
    vary = [v.strip().lower() for v in resp.headers.get("vary", "").split(",")]
    assert "authorization" in vary, resp.headers.get("vary")


def test_authenticated_and_signed_reads_are_private(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    tokens = [{"name": "t", "token_sha256": digest, "scopes": ["admin"]}]
    runs = tmp_path / "runs"
    runs.mkdir()
    server = server_factory(
        env={
            "OUTLAST_AUTH__TOKENS": json.dumps(tokens),
            "OUTLAST_STREAMS__LONG_POLL_TIMEOUT": "0.5",
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
            "OUTLAST_TEST_RUNS": str(runs),
        },
        args=["--app", "tests.jobs.apps:app"],
    ).start()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    url = f"{server.url}/v1/stream/secret"
    put = httpx.put(url, headers={**auth, "Content-Type": "text/plain"}, content=b"data")
    assert put.status_code == 201

    # Catch-up read with a token, its 304, and a long-poll that finds data.
    read = httpx.get(url, params={"offset": "-1"}, headers=auth)
    assert read.status_code == 200
    _private(read)
    again = httpx.get(
        url, params={"offset": "-1"}, headers={**auth, "If-None-Match": read.headers["etag"]}
    )
    assert again.status_code == 304
    _private(again)
    poll = httpx.get(url, params={"offset": "-1", "live": "long-poll"}, headers=auth)
    assert poll.status_code == 200
    _private(poll)

    # A job's stream read through its signed link, without a token.
    job = httpx.post(
        f"{server.url}/v1/jobs", json={"task": "echo", "input": {"a": 1}}, headers=auth
    ).json()
    wait_for(
        lambda: (
            httpx.get(f"{server.url}/v1/jobs/{job['id']}", headers=auth).json()["state"]
            == "succeeded"
        )
    )
    assert "sig=" in job["stream"]
    signed = httpx.get(f"{server.url}{job['stream']}&offset=-1")
    assert signed.status_code == 200, signed.text
    _private(signed)


def test_reads_without_credentials_stay_public(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory().start()
    url = f"{server.url}/v1/stream/open"
    assert httpx.put(url, headers={"Content-Type": "text/plain"}, content=b"d").status_code == 201
    read = httpx.get(url, params={"offset": "-1"})
    assert read.status_code == 200
    assert read.headers["cache-control"].startswith("public")

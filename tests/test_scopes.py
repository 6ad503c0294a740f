"""Which scope each endpoint needs (docs/configuration.md#tokens-and-scopes): the documented
table is the server's table, and the documented ``php-app`` token can do what the docs say."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from outlast.api.scopes import required_scopes
from tests.conftest import ServerProcess, upstream_env
from tests.relay.helpers import FAST

DOCS = Path(__file__).resolve().parent.parent / "docs"
EXAMPLE = {"<id>": "job_06h0g7pdxg0008jt4d7bev374w9qvk88", "<name>": "chat-42", "<path>": "v1/x"}


def documented_table() -> list[tuple[str, str, frozenset[str] | None]]:
    """(method, path, scopes) for every request the scope table of docs/configuration.md lists."""
    text = (DOCS / "configuration.md").read_text()
    table = text.split("<!-- scope-table")[1].split("<!-- /scope-table -->")[0]
    rows = []
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue
        scopes = frozenset(re.findall(r"`([a-z:]+)`", cells[1])) or None
        for request in re.findall(r"`([A-Z]+ [^`]+)`", cells[0]):
            method, path = request.split(" ", 1)
            for placeholder, value in EXAMPLE.items():
                path = path.replace(placeholder, value)
            rows.append((method, path, scopes))
    return rows


def test_the_documented_table_is_the_servers() -> None:
    rows = documented_table()
    assert len(rows) >= 19
    for method, path, scopes in rows:
        assert required_scopes(method, path) == scopes, (method, path)
    # A path no row names needs admin.
    assert required_scopes("GET", "/v1/something-new") == frozenset({"admin"})


def php_app_scopes() -> list[str]:
    """The scopes of the php-app token as docs/configuration.md shows it."""
    line = next(
        line for line in (DOCS / "configuration.md").read_text().splitlines() if "php-app" in line
    )
    found = re.search(r"scopes = (\[[^\]]*\])", line)
    assert found is not None, line
    scopes: list[str] = json.loads(found.group(1))
    return scopes


def test_the_documented_php_app_token_does_what_the_docs_say(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    token = "php-app-secret"
    tokens = [
        {
            "name": "php-app",
            "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
            "scopes": php_app_scopes(),
        }
    ]
    server = server_factory(
        env={**upstream_env(upstream), **FAST, "OUTLAST_AUTH__TOKENS": json.dumps(tokens)}
    ).start()
    auth = {"Authorization": f"Bearer {token}"}

    def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{server.url}{path}", headers=auth, timeout=40, **kwargs)

    # Submit through the pass-through, as examples/php does, and read the whole answer.
    answer = call(
        "POST",
        "/v1/upstreams/fake/v1/chat/completions",
        json={"model": "m", "messages": [], "stream": True},
    )
    assert answer.status_code == 200, answer.text
    job_id = answer.headers["Outlast-Job-Id"]
    job = call("GET", f"/v1/jobs/{job_id}", params={"wait": 30})
    assert job.status_code == 200 and job.json()["state"] == "succeeded"
    assert call("GET", f"/v1/jobs/{job_id}/events").status_code == 200
    stream = call("GET", f"/v1/stream/jobs/{job_id}", params={"offset": "-1"})
    assert stream.status_code == 200, stream.text  # the job's own stream: jobs:read
    queues = call("GET", "/v1/queues")
    assert queues.status_code == 200, queues.text
    assert "default" in [q["name"] for q in queues.json()["queues"]]
    assert call("GET", "/v1/jobs").status_code == 200
    submitted = call("POST", "/v1/jobs", json={"task": "relay", "input": {"url": "x"}})
    assert submitted.status_code not in (401, 403), submitted.text  # allowed (422: bad input)
    assert call("POST", f"/v1/jobs/{job_id}/cancel").status_code == 202

    # What the token may not do, each refused with the scope it lacks.
    for method, path, scope in [
        ("PUT", "/v1/stream/other", "streams:write"),
        ("GET", "/v1/stream/other", "streams:read"),
        ("GET", "/metrics", "admin"),
    ]:
        refused = call(method, path)
        assert refused.status_code == 403, (method, path)
        assert refused.json()["error"]["code"] == "forbidden"
        assert f"'{scope}'" in refused.json()["error"]["message"]

    # Public without any token.
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert httpx.get(f"{server.url}{path}").status_code == 200, path
    assert httpx.get(f"{server.url}/v1/queues").status_code == 401


def test_a_credential_checked_while_the_store_is_unreachable_answers_503_with_retry_after() -> None:
    """The auth middleware loads the read-link key from the store first: while the store is
    unreachable the answer is 503 ``unavailable`` with the store's Retry-After, as documented in
    the OpenAPI document's shared 503."""
    import asyncio

    from outlast.api.middleware import STORE_UNAVAILABLE, AuthMiddleware
    from outlast.config import AuthSettings
    from outlast.errors import StoreUnavailable

    class Unreachable:
        async def load(self) -> bytes:
            raise StoreUnavailable("connection refused", retry_after=3)

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the request must not reach the endpoint")

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    middleware = AuthMiddleware(endpoint, AuthSettings(), Unreachable())  # type: ignore[arg-type]
    scope = {"type": "http", "method": "GET", "path": "/v1/queues", "headers": []}
    asyncio.run(middleware(scope, receive, send))
    start, body = sent
    assert start["status"] == STORE_UNAVAILABLE.status == 503
    assert (b"retry-after", b"3") in start["headers"]
    assert json.loads(body["body"])["error"]["code"] == STORE_UNAVAILABLE.code

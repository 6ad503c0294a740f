"""Request metrics are labelled by route template only: requests to made-up paths, and
requests refused by auth, are counted without creating a label series per path."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import ServerProcess

TOKEN = "metrics-test-token"
ROUTES = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/v1/jobs",
    "/v1/jobs/{id}",
    "/v1/jobs/{id}/cancel",
    "/v1/jobs/{id}/events",
    "/v1/queues",
    "/v1/proxy",
    "/v1/upstreams/{name}/{path}",
    "/v1/stream/{name}",
    "unmatched",
}
MADE_UP = [
    "/v1/jobs/job_x/user-data-{n}",
    "/v1/jobs/job_x/events/{n}",
    "/v1/jobs/{n}/a/b/c",
    "/v1/jobsxyz{n}",
    "/v1/upstreamsfoo{n}",
    "/admin-{n}",
    "/v1/queues/{n}",
]


@pytest.fixture
def backend() -> str:
    return "sqlite"


def _series(server: ServerProcess, headers: dict[str, str] | None = None) -> set[str]:
    text = httpx.get(f"{server.url}/metrics", headers=headers).text
    return {
        line.rsplit(" ", 1)[0]
        for line in text.splitlines()
        if line.startswith("outlast_http_request")
    }


def _routes(series: set[str]) -> set[str]:
    return {m for s in series for m in re.findall(r'route="([^"]*)"', s)}


def _made_up_requests(server: ServerProcess, start: int, headers: dict[str, str]) -> None:
    with httpx.Client(base_url=server.url, headers=headers) as client:
        for n in range(start, start + 20):
            for template in MADE_UP:
                path = template.format(n=n)
                client.get(path)
                client.post(path, json={})


def test_made_up_paths_create_no_series(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory().start()
    _series(server)  # the scrape itself is a request: its series exists from now on
    _made_up_requests(server, 0, {})
    first = _series(server)
    _made_up_requests(server, 100, {})
    assert _series(server) == first
    assert _routes(first) <= ROUTES, _routes(first) - ROUTES
    assert 'outlast_http_requests_total{method="GET",route="unmatched",status="404"}' in first


def test_requests_refused_by_auth_create_no_series(
    server_factory: Callable[..., ServerProcess],
) -> None:
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    tokens = [{"name": "t", "token_sha256": digest, "scopes": ["admin"]}]
    server = server_factory(env={"OUTLAST_AUTH__TOKENS": json.dumps(tokens)}).start()
    admin = {"Authorization": f"Bearer {TOKEN}"}
    _series(server, admin)
    _made_up_requests(server, 0, {})
    _made_up_requests(server, 0, {"Authorization": "Bearer wrong"})
    first = _series(server, admin)
    _made_up_requests(server, 100, {})
    _made_up_requests(server, 100, {"Authorization": "Bearer wrong"})
    second = _series(server, admin)
    assert second == first
    assert _routes(second) <= ROUTES, _routes(second) - ROUTES
    counted = httpx.get(f"{server.url}/metrics", headers=admin).text
    refused = sum(
        float(line.rsplit(" ", 1)[1])
        for line in counted.splitlines()
        if line.startswith("outlast_http_requests_total") and 'status="401"' in line
    )
    # 7 made-up paths x 2 methods x 40 numbers x 2 (no token, a wrong one): all counted.
    assert refused == 7 * 2 * 40 * 2

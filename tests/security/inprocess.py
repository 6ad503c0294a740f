"""outlast in this process: the ASGI app on ``httpx.ASGITransport`` over a real store, with a
worker running jobs, for hostile-request tests that need no server process."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from outlast.api.app import create_app
from outlast.config import load_settings
from outlast.server import Node, open_node

BASE_URL = "http://127.0.0.1"


def token_entry(name: str, token: str, scopes: list[str]) -> dict[str, Any]:
    """An ``[[auth.tokens]]`` entry for *token* (the config holds its SHA-256 only)."""
    return {
        "name": name,
        "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
        "scopes": scopes,
    }


@dataclass
class Running:
    client: httpx.AsyncClient
    node: Node


@contextlib.asynccontextmanager
async def running(store: str, overrides: dict[str, Any] | None = None) -> AsyncIterator[Running]:
    """One node (API and worker) on *store*, reached through an in-process client."""
    overrides = dict(overrides or {})
    overrides["server"] = {**overrides.get("server", {}), "store": store}
    settings = load_settings(environ={}, overrides=overrides)
    async with open_node(settings, workers=True) as node:
        app = create_app(
            settings, node.store, node.lifecycle, node.metrics, node.registry, node.worker
        )
        assert node.worker is not None
        await node.worker.start()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
                yield Running(client, node)
        finally:
            node.lifecycle.begin_drain()
            node.worker.stop_claiming()
            node.lifecycle.end_readers()
            await node.worker.drain(0)


def upstream_overrides(fake: Any, name: str = "fake") -> dict[str, Any]:
    """Settings that let the node reach the fake upstream (a loopback address), as a named
    upstream with a secret header and as a raw URL."""
    return {
        "upstreams": {
            name: {
                "url": fake.url,
                "allow_private": True,
                "headers": {"Authorization": "Bearer upstream-secret"},
            }
        },
        "egress": {"allowed_hosts": ["127.0.0.1"], "allow_private": True},
    }


async def finished(
    client: httpx.AsyncClient, job_id: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """The job once it has ended (a long-poll with a guard: it fails if the job does not end)."""
    resp = await client.get(f"/v1/jobs/{job_id}", params={"wait": "20"}, headers=headers)
    assert resp.status_code == 200, resp.text
    job: dict[str, Any] = resp.json()
    assert job["state"] in ("succeeded", "failed", "cancelled"), job
    return job

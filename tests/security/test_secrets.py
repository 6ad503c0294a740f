"""Upstream credentials a client gives outlast (``Upstream-Authorization``, relay and ``http``
headers, URL userinfo and query values) are used for the request but never shown: not in any
rendering of the job, not in its events, not in the logs; nor are tokens or ``sig`` values."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from outlast import redact
from outlast.logs import (
    ACCESS_LOGGER,
    JOBS_LOGGER,
    QUIET_LOGGERS,
    JSONFormatter,
    configure_logging,
)
from tests.security.inprocess import Running, finished, running, token_entry, upstream_overrides

TOKEN = "tok-3b1f-never-logged"
SECRETS = ["sk-live-0001", "pw-0002", "q-0003", "k-0004", "c-0005", "s-0006"]
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def _overrides(fake: Any) -> dict[str, Any]:
    overrides = upstream_overrides(fake)
    overrides["auth"] = {"tokens": [token_entry("ci", TOKEN, ["admin"])]}
    return overrides


async def _submit_with_secrets(node: Running, fake: Any) -> list[str]:
    """A proxy job and an http job, both carrying every kind of secret; returns their ids."""
    host = fake.url.split("://", 1)[1]
    proxy = await node.client.post(
        "/v1/proxy",
        content=b"{}",
        headers={
            **BEARER,
            "Content-Type": "application/json",
            "Upstream-URL": f"http://{host}/sse?n=1&key=proxy&t={SECRETS[2]}",
            "Upstream-Authorization": f"Bearer {SECRETS[0]}",
            "X-Api-Key": SECRETS[3],
        },
    )
    assert proxy.status_code == 201, proxy.text
    http = await node.client.post(
        "/v1/jobs",
        headers=BEARER,
        json={
            "task": "http",
            "input": {
                "url": f"http://user:{SECRETS[1]}@{host}/sse?n=1&key=http&token={SECRETS[2]}",
                "headers": {
                    "X-Api-Key": SECRETS[3],
                    "Cookie": f"sid={SECRETS[4]}",
                    "X-Session-Token": SECRETS[5],
                },
            },
        },
    )
    assert http.status_code == 202, http.text
    for resp in (proxy, http):
        assert not any(s in resp.text for s in SECRETS), resp.text
    return [proxy.json()["id"], http.json()["id"]]


def test_secrets_are_used_but_never_shown(tmp_path: Path, upstream: Any) -> None:
    async def scenario() -> None:
        async with running(f"sqlite:///{tmp_path / 'o.db'}", _overrides(upstream)) as node:
            ids = await _submit_with_secrets(node, upstream)
            shown = []
            for job_id in ids:
                job = await finished(node.client, job_id, BEARER)
                assert job["state"] == "succeeded", job
                shown.append((await node.client.get(f"/v1/jobs/{job_id}", headers=BEARER)).text)
                events = await node.client.get(f"/v1/jobs/{job_id}/events", headers=BEARER)
                shown.append(events.text)
                stream = await node.client.get(job["stream"] + "&offset=-1")
                shown.append(stream.text)
                shown.append(
                    (await node.client.post(f"/v1/jobs/{job_id}/cancel", headers=BEARER)).text
                )
            shown.append((await node.client.get("/v1/jobs", headers=BEARER)).text)
            for text in shown:
                for secret in SECRETS:
                    assert secret not in text, (secret, text)
            assert redact.REDACTED in shown[0]
        # The upstream got every one of them: they were kept for the request.
        proxy_seen, http_seen = upstream.last_headers["proxy"], upstream.last_headers["http"]
        assert proxy_seen["authorization"] == f"Bearer {SECRETS[0]}"
        assert proxy_seen["x-api-key"] == SECRETS[3]
        assert http_seen["authorization"].startswith("Basic ")  # the URL's userinfo
        assert http_seen["cookie"] == f"sid={SECRETS[4]}"
        assert http_seen["x-session-token"] == SECRETS[5]

    asyncio.run(scenario())


class _Lines(logging.Handler):
    """Every record, formatted as outlast writes its log lines."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JSONFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """outlast's own logging set-up (:func:`configure_logging`) for one test, its lines
    collected in a list instead of written to stderr; the previous set-up back afterwards."""
    root = logging.getLogger()
    names = [ACCESS_LOGGER, JOBS_LOGGER, "uvicorn.access", *QUIET_LOGGERS]
    saved = {}
    for name in names:
        logger = logging.getLogger(name)
        saved[name] = (logger.handlers[:], logger.propagate, logger.level, logger.disabled)
    root_handlers, root_level = root.handlers[:], root.level
    configure_logging("info")
    lines = _Lines()
    for logger in (root, logging.getLogger(ACCESS_LOGGER), logging.getLogger(JOBS_LOGGER)):
        logger.handlers[:] = [lines]
    yield lines.lines
    for name, (handlers, propagate, level, disabled) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:], logger.propagate, logger.disabled = handlers, propagate, disabled
        logger.setLevel(level)
    root.handlers[:] = root_handlers
    root.setLevel(root_level)


def test_logs_hold_no_token_sig_or_url_secret(
    tmp_path: Path, upstream: Any, logged: list[str]
) -> None:
    async def scenario() -> list[str]:
        async with running(f"sqlite:///{tmp_path / 'o.db'}", _overrides(upstream)) as node:
            ids = await _submit_with_secrets(node, upstream)
            sigs = []
            for job_id in ids:
                job = await finished(node.client, job_id, BEARER)
                sigs.append(job["stream"].rsplit("sig=", 1)[1])
                assert (await node.client.get(job["stream"] + "&offset=-1")).status_code == 200
            return sigs

    sigs = asyncio.run(scenario())
    text = "\n".join(logged)
    assert '"msg": "request"' in text and '"msg": "job started"' in text  # lines were written
    for secret in [*SECRETS, TOKEN, *sigs]:
        assert secret not in text, (secret, text)

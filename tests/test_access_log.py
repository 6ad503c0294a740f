"""The access log (SPEC §6): one JSON line per request on ``outlast.access``, buffered but never
lost at a clean exit, and off with ``[server] access_log = false``."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
from collections.abc import Callable

import httpx

from outlast.logs import ACCESS_LOGGER, AccessLog, BufferedLineHandler, job_id_of
from tests.conftest import ServerProcess


def _access_lines(text: str) -> list[dict[str, object]]:
    lines = []
    for raw in text.splitlines():
        if raw.startswith("{"):
            line = json.loads(raw)
            if line.get("logger") == ACCESS_LOGGER:
                lines.append(line)
    return lines


def test_every_request_is_logged_and_flushed_at_a_clean_exit(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory().start()
    url = f"{server.url}/v1/stream/logged"
    assert httpx.put(url, headers={"Content-Type": "application/json"}).status_code == 201
    body = b'{"hello": "world"}'
    resp = httpx.post(url, headers={"Content-Type": "application/json"}, content=body)
    assert resp.status_code == 204
    read = httpx.get(url, params={"offset": "-1"})
    assert httpx.get(f"{server.url}/v1/jobs/job_missing").status_code == 404
    # Stopped right away: lines still in the buffer must be written on the way out.
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0

    lines = _access_lines(server.log())
    requests = [(line["method"], line["path"], line["status"]) for line in lines]
    assert ("PUT", "/v1/stream/logged", 201) in requests
    assert ("POST", "/v1/stream/logged", 204) in requests
    assert ("GET", "/v1/stream/logged", 200) in requests
    assert ("GET", "/v1/jobs/job_missing", 404) in requests
    get = next(
        line for line in lines if line["path"] == "/v1/stream/logged" and line["method"] == "GET"
    )
    assert get["bytes"] == len(read.content)
    assert isinstance(get["duration_ms"], float) and get["duration_ms"] >= 0
    assert get["level"] == "info" and str(get["ts"]).endswith("Z")
    job = next(line for line in lines if line["path"] == "/v1/jobs/job_missing")
    assert job["job_id"] == "job_missing"


def test_access_log_can_be_turned_off(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(env={"OUTLAST_SERVER__ACCESS_LOG": "false"}).start()
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert _access_lines(server.log()) == []


def test_lines_are_batched_on_the_loop_and_flushed() -> None:
    stream = io.StringIO()
    logger = logging.Logger("test.access")
    handler = BufferedLineHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    access = AccessLog(logger)
    assert access.enabled()
    scope = {"method": "POST", "path": "/v1/stream/jobs/job_1"}

    async def requests() -> str:
        access.request(scope, 204, 0.0015, 0, None)
        access.request(scope, 204, 0.0015, 0, "job_2")
        return stream.getvalue()

    assert asyncio.run(requests()) == ""  # on the loop: waiting for the next batch
    handler.flush()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["job_id"] for line in lines] == ["job_1", "job_2"]
    assert lines[0]["duration_ms"] == 1.5
    assert lines[0]["msg"] == "request" and lines[0]["logger"] == "test.access"
    # Without a running loop a line is written at once.
    access.request(scope, 200, 0.001, 2, None)
    assert len(stream.getvalue().splitlines()) == 3


def test_other_logging_setups_get_ordinary_records() -> None:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.Logger("test.access.plain")
    logger.addHandler(Collect())
    AccessLog(logger).request({"method": "GET", "path": "/healthz"}, 200, 0.001, 15, None)
    assert len(records) == 1
    assert records[0].getMessage() == "request"
    assert records[0].status == 200  # type: ignore[attr-defined]
    assert records[0].bytes == 15  # type: ignore[attr-defined]


def test_job_ids_from_paths() -> None:
    assert job_id_of("/v1/jobs/job_abc") == "job_abc"
    assert job_id_of("/v1/jobs/job_abc/events") == "job_abc"
    assert job_id_of("/v1/stream/jobs/job_abc") == "job_abc"
    assert job_id_of("/v1/jobs") is None
    assert job_id_of("/v1/stream/other") is None


def test_a_submission_is_logged_with_its_job_id_and_no_colour_codes(
    server_factory: Callable[..., ServerProcess],
) -> None:
    loopback = {
        "OUTLAST_EGRESS__ALLOWED_HOSTS": '["127.0.0.1"]',
        "OUTLAST_EGRESS__ALLOW_PRIVATE": "1",
    }
    server = server_factory(env=loopback).start()
    # Delayed far ahead: accepted (202), never run.
    job = {"task": "http", "input": {"url": "http://127.0.0.1:9/"}, "delay": 3600}
    resp = httpx.post(f"{server.url}/v1/jobs", json=job)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0

    lines = _access_lines(server.log())
    submit = next(line for line in lines if (line["method"], line["path"]) == ("POST", "/v1/jobs"))
    assert submit["status"] == 202
    assert submit["job_id"] == job_id
    # uvicorn's lines carry their message again with ANSI colours: not a field of ours.
    every = [json.loads(raw) for raw in server.log().splitlines() if raw.startswith("{")]
    assert any(line["logger"].startswith("uvicorn") for line in every)
    assert not [line for line in every if "color_message" in line]
    assert "\x1b[" not in server.log()

"""outlast's own promises about ``/v1/stream`` beyond the conformance suite: EventSource
resumption, limits, error bodies, auth, readiness, metrics. Request-response rules run on the app
in this process (``inproc``); a live SSE reader and the command line on real processes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import InProcessServer, ServerProcess, free_port


def _sse_events(text: str) -> list[dict[str, str]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            fields[key] = fields[key] + "\n" + value if key in fields else value
        if fields:
            events.append(fields)
    return events


def _read_sse_until_up_to_date(
    client: httpx.Client, url: str, **kwargs: object
) -> list[dict[str, str]]:
    """Read SSE events until a control event says upToDate, then hang up."""
    events: list[dict[str, str]] = []
    buffer = ""
    with client.stream("GET", url, **kwargs) as resp:  # type: ignore[arg-type]
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/event-stream"
        for chunk in resp.iter_text():
            buffer += chunk
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                events.extend(_sse_events(block + "\n\n"))
                last = events[-1] if events else {}
                if last.get("event") == "control" and json.loads(last["data"]).get("upToDate"):
                    return events
    return events


def test_sse_resumes_from_last_event_id(server: ServerProcess) -> None:
    url = f"{server.url}/v1/stream/resume"
    assert httpx.put(url, headers={"Content-Type": "text/plain"}, content=b"one").status_code == 201
    with httpx.Client(timeout=10) as client:
        first = _read_sse_until_up_to_date(client, url, params={"offset": "-1", "live": "sse"})
        data = [e["data"] for e in first if e.get("event") == "data"]
        assert data == ["one"]
        last_id = first[-1]["id"]
        assert last_id == json.loads(first[-1]["data"])["streamNextOffset"]

        httpx.post(url, headers={"Content-Type": "text/plain"}, content=b"two")
        # EventSource reconnects to its original URL (offset=-1) with Last-Event-ID.
        again = _read_sse_until_up_to_date(
            client, url, params={"offset": "-1", "live": "sse"}, headers={"Last-Event-ID": last_id}
        )
        assert [e["data"] for e in again if e.get("event") == "data"] == ["two"]


def test_append_over_the_limit_is_413_and_stores_nothing(
    inproc_factory: Callable[..., InProcessServer],
) -> None:
    http = inproc_factory(env={"OUTLAST_LIMITS__APPEND_BYTES": "1024"}).client
    url = "/v1/stream/limited"
    assert http.put(url, headers={"Content-Type": "text/plain"}).status_code == 201
    resp = http.post(url, headers={"Content-Type": "text/plain"}, content=b"x" * 1025)
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "payload_too_large"
    # Also when the size is not declared up front (chunked upload).
    resp = http.post(
        url, headers={"Content-Type": "text/plain"}, content=iter([b"x" * 600, b"y" * 600])
    )
    assert resp.status_code == 413
    assert http.post(url, headers={"Content-Type": "text/plain"}, content=b"ok").status_code == 204
    assert http.get(url, params={"offset": "-1"}).text == "ok"


def test_errors_have_one_shape(inproc: InProcessServer) -> None:
    http = inproc.client
    cases = [
        http.get("/v1/stream/missing"),
        http.post("/v1/stream/missing", content=b"x", headers={"Content-Type": "a/b"}),
        http.get("/v1/stream/" + "n" * 2000),
        http.get("/nowhere"),
    ]
    assert [r.status_code for r in cases] == [404, 404, 400, 404]
    for resp in cases:
        body = resp.json()
        assert set(body) == {"error"}
        assert isinstance(body["error"]["code"], str) and body["error"]["code"]
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        assert resp.headers["x-content-type-options"] == "nosniff"


def test_bad_offsets_are_400_not_500(inproc: InProcessServer) -> None:
    http = inproc.client
    url = "/v1/stream/offsets"
    http.put(url, headers={"Content-Type": "text/plain"}, content=b"abc")
    for bad in ["", "abc", "-2", "0000000000000000_000000000000000x", "1_2", "9" * 300]:
        resp = http.get(url, params={"offset": bad})
        assert resp.status_code == 400, (bad, resp.status_code)
        assert resp.json()["error"]["code"] == "invalid_offset"


def test_health_readiness_and_metrics(inproc: InProcessServer) -> None:
    http = inproc.client
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").status_code == 200
    url = "/v1/stream/counted"
    http.put(url, headers={"Content-Type": "text/plain"})
    http.post(url, headers={"Content-Type": "text/plain"}, content=b"12345")
    text = http.get("/metrics").text
    assert "outlast_stream_appends_total 1.0" in text
    assert "outlast_stream_append_bytes_total 5.0" in text
    assert (
        'outlast_http_requests_total{method="PUT",route="/v1/stream/{name}",status="201"} 1.0'
        in text
    )


def _token_env(tokens: dict[str, list[str]]) -> dict[str, str]:
    config = [
        {"name": name, "token_sha256": hashlib.sha256(name.encode()).hexdigest(), "scopes": scopes}
        for name, scopes in tokens.items()
    ]
    return {"OUTLAST_AUTH__TOKENS": json.dumps(config)}


def test_bearer_tokens_and_scopes(inproc_factory: Callable[..., InProcessServer]) -> None:
    http = inproc_factory(
        env=_token_env({"reader": ["streams:read"], "writer": ["streams:read", "streams:write"]})
    ).client
    url = "/v1/stream/secured"

    def as_(token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}

    anon = http.put(url, headers={"Content-Type": "text/plain"})
    assert anon.status_code == 401
    assert anon.json()["error"]["code"] == "unauthorized"
    assert http.put(url, headers=as_("wrong")).status_code == 401
    denied = http.put(url, headers={**as_("reader"), "Content-Type": "text/plain"})
    assert denied.status_code == 403
    assert "streams:write" in denied.json()["error"]["message"]
    assert http.put(url, headers={**as_("writer"), "Content-Type": "text/plain"}).status_code == 201
    assert http.get(url, params={"offset": "-1"}, headers=as_("reader")).status_code == 200
    assert http.get(url, params={"offset": "-1"}).status_code == 401
    # Health stays open for load balancers; metrics need admin.
    assert http.get("/healthz").status_code == 200
    assert http.get("/metrics", headers=as_("writer")).status_code == 403
    # CORS preflight needs no token.
    pre = http.options(
        url, headers={"Origin": "http://example.test", "Access-Control-Request-Method": "GET"}
    )
    assert pre.status_code == 204
    assert "If-None-Match" in pre.headers["access-control-allow-headers"]


@pytest.mark.slow  # runs `outlast serve`
def test_refuses_public_bind_without_tokens(tmp_path: object) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "outlast",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
            "--store",
            f"sqlite:///{tmp_path}/x.db",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "--insecure" in proc.stderr


@pytest.mark.slow  # runs `outlast serve`
def test_unknown_config_key_is_named(tmp_path: object) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "outlast", "serve", "--port", str(free_port())],
        env={"OUTLAST_STREAMS__LONG_POLL_TIMEUOT": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 2
    assert "streams.long_poll_timeuot" in proc.stderr


@pytest.mark.parametrize(
    "body", [b"{not json", b"[]", b"[" * 100_000 + b"]" * 100_000], ids=["bad", "empty", "deep"]
)
def test_bad_json_appends_are_400(inproc: InProcessServer, body: bytes) -> None:
    http = inproc.client
    url = "/v1/stream/json-bad"
    http.put(url, headers={"Content-Type": "application/json"})
    resp = http.post(url, headers={"Content-Type": "application/json"}, content=body)
    assert resp.status_code == 400
    assert http.get(url, params={"offset": "-1"}).json() == []


def test_job_streams_are_read_only(inproc: InProcessServer) -> None:
    http = inproc.client
    url = "/v1/stream/jobs/job_aaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    for method in ("PUT", "POST", "DELETE"):
        resp = http.request(method, url, content=b"x", headers={"Content-Type": "text/plain"})
        assert resp.status_code == 405, method
        assert resp.json()["error"]["code"] == "read_only_stream"


def test_numbers_and_offsets_are_parsed_strictly(inproc: InProcessServer) -> None:
    http = inproc.client
    url = "/v1/stream/strict"
    http.put(url, headers={"Content-Type": "text/plain"}, content=b"abc")
    tail = http.head(url).headers["Stream-Next-Offset"]
    # A trailing newline or non-ASCII digits must not pass for an offset or a TTL.
    for bad in [tail + "\n", tail.replace("0", "٠", 1)]:
        assert http.get(url, params={"offset": bad}).status_code == 400
    for ttl in ["6_0", "+60", "060", "6e1"]:
        resp = http.put(f"{url}-ttl", headers={"Content-Type": "text/plain", "Stream-TTL": ttl})
        assert resp.status_code == 400, ttl

"""The OpenAI-compatible pass-through with the real ``openai`` SDK, and the Durable Proxy
endpoint, against the fake upstream on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ServerProcess, wait_for
from tests.fakes.upstream import FAKE_TEXT
from tests.relay.helpers import finished, relay_server, stored_events

pytestmark = pytest.mark.slow

MESSAGES: list[Any] = [{"role": "user", "content": "Say it."}]
# Keepalives every 50 ms, words every 150 ms: each gap between events spans several pings.
KEEPALIVE = "0.05"
WORD_INTERVAL = "0.15"
CHAT = "/v1/chat/completions"


class _Tee:
    """Records the raw bytes of every response the SDK reads, and counts its requests."""

    def __init__(self) -> None:
        self.raw = bytearray()
        self.requests = 0


class _SyncTee(httpx.BaseTransport):
    def __init__(self, tee: _Tee) -> None:
        self.tee = tee
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.tee.requests += 1
        response = self.inner.handle_request(request)
        tee, stream = self.tee, response.stream
        assert isinstance(stream, httpx.SyncByteStream)

        class Recorded(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                for chunk in stream:
                    tee.raw += chunk
                    yield chunk

            def close(self) -> None:
                stream.close()

        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=Recorded(),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self.inner.close()


class _AsyncTee(httpx.AsyncBaseTransport):
    def __init__(self, tee: _Tee) -> None:
        self.tee = tee
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.tee.requests += 1
        response = await self.inner.handle_async_request(request)
        tee, stream = self.tee, response.stream
        assert isinstance(stream, httpx.AsyncByteStream)

        class Recorded(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                async for chunk in stream:
                    tee.raw += chunk
                    yield chunk

            async def aclose(self) -> None:
                await stream.aclose()

        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=Recorded(),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


def sdk(server: ServerProcess, tee: _Tee, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.url}/v1/upstreams/fake/v1",
        api_key="not-used",
        http_client=httpx.Client(transport=_SyncTee(tee), timeout=60),
        **options,
    )


def async_sdk(server: ServerProcess, tee: _Tee) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{server.url}/v1/upstreams/fake/v1",
        api_key="not-used",
        http_client=httpx.AsyncClient(transport=_AsyncTee(tee), timeout=60),
    )


def passthrough_server(
    factory: Callable[..., ServerProcess], fake: Any, **extra: str
) -> ServerProcess:
    return relay_server(
        factory,
        fake,
        OUTLAST_SSE__KEEPALIVE=KEEPALIVE,
        OUTLAST_RELAY__FIRST_BYTE_TIMEOUT="30",
        **extra,
    )


def test_openai_sdk_streams_the_text_across_keepalives(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = passthrough_server(server_factory, upstream)
    tee = _Tee()
    with sdk(server, tee) as client:
        stream = client.chat.completions.create(
            model="fake",
            messages=MESSAGES,
            stream=True,
            extra_headers={"x-fake-interval": WORD_INTERVAL, "x-fake-key": "sync"},
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == FAKE_TEXT
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert tee.raw.count(b"\n: ping\n") >= 5  # the SDK read through many keepalives
    data_lines = [line for line in tee.raw.split(b"\n") if line.startswith(b"data:")]
    assert data_lines[-1] == b"data: [DONE]"  # the upstream's own end, passed on
    assert upstream.completed["sync"] == 1
    # The upstream got its secret header, not the client's.
    assert upstream.last_headers["sync"]["authorization"] == "Bearer upstream-secret"


def test_async_openai_sdk_streams_the_text_across_keepalives(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = passthrough_server(server_factory, upstream)
    tee = _Tee()

    async def run() -> list[Any]:
        async with async_sdk(server, tee) as client:
            stream = await client.chat.completions.create(
                model="fake",
                messages=MESSAGES,
                stream=True,
                extra_headers={"x-fake-interval": WORD_INTERVAL, "x-fake-key": "async"},
            )
            return [chunk async for chunk in stream]

    chunks = asyncio.run(run())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == FAKE_TEXT
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert tee.raw.count(b"\n: ping\n") >= 5
    assert upstream.completed["async"] == 1


def test_openai_sdk_without_streaming(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = passthrough_server(server_factory, upstream)
    with sdk(server, _Tee()) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="fake", messages=MESSAGES, extra_headers={"x-fake-key": "plain"}
        )
        completion = raw.parse()
    assert completion.choices[0].message.content == FAKE_TEXT
    assert completion.usage is not None and completion.usage.completion_tokens == 15
    job_id = raw.headers["outlast-job-id"]
    assert finished(server, job_id)["state"] == "succeeded"
    assert upstream.completed["plain"] == 1


def test_an_upstream_error_reaches_the_sdk_as_that_error(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = passthrough_server(server_factory, upstream)
    with sdk(server, _Tee(), max_retries=0) as client, pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="fake", messages=MESSAGES, stream=True, extra_headers={"x-fake-status": "400"}
        )
    assert err.value.status_code == 400
    assert "fake upstream says 400" in err.value.message
    assert upstream.requests[CHAT] == 1  # a 400 is not retried


def test_sdk_retries_with_an_idempotency_key_never_call_the_upstream_again(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    # The upstream answers 429: the relay retries it (its own policy: 1 + 2 attempts), then the
    # SDK retries its request twice more with the same Idempotency-Key and a new
    # x-stainless-retry-count each time, and gets the same finished job.
    server = passthrough_server(server_factory, upstream)
    tee = _Tee()
    with sdk(server, tee, max_retries=2) as client, pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model="fake",
            messages=MESSAGES,
            extra_headers={"x-fake-status": "429", "Idempotency-Key": "retry-me"},
            extra_body={"stream": False},
        )
    assert tee.requests == 3
    jobs = httpx.get(f"{server.url}/v1/jobs", params={"task": "relay"}).json()["jobs"]
    assert len(jobs) == 1
    assert upstream.requests[CHAT] == jobs[0]["attempt"] == jobs[0]["max_attempts"]


def test_a_repeated_request_shares_the_running_job(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = passthrough_server(server_factory, upstream)
    body = {"model": "fake", "messages": MESSAGES, "stream": True}
    headers = {"Idempotency-Key": "same", "x-fake-gate": "g", "x-fake-key": "shared"}

    def call() -> tuple[str, str]:
        url = f"{server.url}/v1/upstreams/fake{CHAT}"
        with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as resp:
            assert resp.status_code == 200
            text = ""
            for line in resp.iter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    text += chunk["choices"][0]["delta"].get("content") or ""
            return resp.headers["outlast-job-id"], text

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(call)
        wait_for(lambda: upstream.requests[CHAT] == 1, timeout=30)  # held at the gate
        second = pool.submit(call)
        upstream.open_gate("g")
        results = [first.result(timeout=60), second.result(timeout=60)]
    assert results[0] == results[1]
    assert results[0][1] == FAKE_TEXT
    assert upstream.requests[CHAT] == 1 and upstream.completed["shared"] == 1


def test_a_client_that_dropped_gets_the_whole_answer_again(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = passthrough_server(server_factory, upstream)
    options: dict[str, Any] = {
        "model": "fake",
        "messages": MESSAGES,
        "stream": True,
        "extra_headers": {
            "Idempotency-Key": "dropped",
            "x-fake-interval": "0.05",
            "x-fake-key": "dropped",
        },
    }
    with sdk(server, _Tee()) as client:
        stream = client.chat.completions.create(**options)
        for seen, _ in enumerate(stream, 1):
            if seen == 3:
                break
        stream.close()  # the PHP script was killed, the browser closed...
        wait_for(lambda: upstream.completed["dropped"] == 1, timeout=30)
        again = client.chat.completions.create(**options)
        text = "".join(c.choices[0].delta.content or "" for c in again if c.choices)
    assert text == FAKE_TEXT
    assert upstream.requests[CHAT] == 1


def test_a_relay_that_breaks_mid_stream_raises_in_the_sdk(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = passthrough_server(server_factory, upstream)
    received = ""
    with sdk(server, _Tee()) as client, pytest.raises(openai.APIError) as err:
        stream = client.chat.completions.create(
            model="fake", messages=MESSAGES, stream=True, extra_headers={"x-fake-cut-after": "4"}
        )
        for chunk in stream:
            received += chunk.choices[0].delta.content or ""
    assert received == " ".join(FAKE_TEXT.split(" ")[:4])  # what was relayed, then the error
    assert "without ids to resume from" in err.value.message
    assert upstream.requests[CHAT] == 1  # never repeated: it would duplicate output


def test_an_answer_closed_cleanly_mid_way_raises_in_the_sdk(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    # The upstream's body ends without a finish_reason or [DONE]: half an answer, not a whole.
    server = passthrough_server(server_factory, upstream)
    received = ""
    with sdk(server, _Tee()) as client, pytest.raises(openai.APIError) as err:
        stream = client.chat.completions.create(
            model="fake", messages=MESSAGES, stream=True, extra_headers={"x-fake-end-after": "4"}
        )
        for chunk in stream:
            received += chunk.choices[0].delta.content or ""
    assert received == " ".join(FAKE_TEXT.split(" ")[:4])
    assert "without data: [DONE] or a finish_reason" in err.value.message
    assert upstream.requests[CHAT] == 1


def test_unknown_upstream_is_404(server: ServerProcess) -> None:
    resp = httpx.post(f"{server.url}/v1/upstreams/nope/v1/chat/completions", json={})
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "unknown_upstream"


def test_a_pass_through_to_a_private_upstream_needs_allow_private(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = server_factory(env={"OUTLAST_UPSTREAMS__LOCAL__URL": upstream.url}).start()
    resp = httpx.post(f"{server.url}/v1/upstreams/local{CHAT}", json={"stream": True})
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "egress_denied"
    assert upstream.requests[CHAT] == 0


# -- Durable Proxy ---------------------------------------------------------------------------


def test_proxy_answers_201_before_the_upstream_has_answered(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = passthrough_server(server_factory, upstream)
    resp = httpx.post(
        f"{server.url}/v1/proxy",
        headers={"Upstream-URL": f"{upstream.url}/gate?gate=p&n=5&key=p", "Upstream-Method": "GET"},
    )
    assert resp.status_code == 201, resp.text
    job_id = resp.headers["outlast-job-id"]
    assert resp.headers["location"] == f"/v1/stream/jobs/{job_id}"
    assert resp.json()["id"] == job_id
    # The upstream is held at its gate: it has sent nothing, and outlast has answered anyway.
    assert upstream.sent["p"] == 0
    upstream.open_gate("p")
    job = finished(server, job_id)
    assert job["result"] == {"status": 200, "events": 6, "done": True}
    stream = httpx.get(f"{server.url}{resp.headers['location']}", params={"offset": "-1"}).json()
    events = [m["data"] for m in stream if m["type"] == "event"]
    assert events == [*(json.dumps({"i": i}) for i in range(5)), "[DONE]"]


def test_proxy_to_a_named_upstream_with_a_body(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = passthrough_server(server_factory, upstream)
    resp = httpx.post(
        f"{server.url}/v1/proxy",
        headers={"Upstream-Name": "fake", "Upstream-Path": CHAT, "x-fake-key": "proxied"},
        json={"model": "fake", "stream": True},
    )
    assert resp.status_code == 201, resp.text
    job = finished(server, resp.headers["outlast-job-id"])
    assert job["result"]["text"] == FAKE_TEXT
    assert upstream.last_headers["proxied"]["authorization"] == "Bearer upstream-secret"
    assert len(stored_events(server, job["id"])) == job["result"]["events"]


def test_proxy_refusals(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(env={"OUTLAST_EGRESS__ALLOWED_HOSTS": '["*"]'}).start()
    cases: list[tuple[dict[str, str], int]] = [
        ({"Upstream-URL": "http://127.0.0.1:9/x"}, 403),
        ({"Upstream-URL": "http://localhost:9/x"}, 403),
        ({"Upstream-URL": "http://[::1]:9/x"}, 403),
        ({"Upstream-URL": "http://169.254.169.254/latest/meta-data/"}, 403),
        ({"Upstream-URL": "http://10.1.2.3/x"}, 403),
        ({"Upstream-URL": "file:///etc/passwd"}, 422),
        ({}, 400),
        ({"Upstream-URL": "http://127.0.0.1:9/x", "Upstream-Name": "fake"}, 400),
    ]
    for headers, status in cases:
        resp = httpx.post(f"{server.url}/v1/proxy", headers=headers, content=b"{}")
        assert resp.status_code == status, (headers, resp.text)
    assert httpx.get(f"{server.url}/v1/jobs").json()["jobs"] == []

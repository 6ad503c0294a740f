"""The relay executor in-process, with ``httpx.MockTransport`` as the upstream and a small fake
of the store: what it sends upstream, how it resumes, and that stored events never wait for the
upstream's next chunk."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from outlast.config import RelaySettings, Settings, UpstreamSettings
from outlast.executors import TaskFailure
from outlast.executors.relay import run_relay
from outlast.store.base import ReadResult, StreamInfo, Unit
from outlast.tasks import Job


class FakeJobStream:
    """The job's stream as the relay sees it: messages it emitted, readable back."""

    def __init__(self, messages: list[dict[str, Any]] | None = None) -> None:
        self.messages = list(messages or [])

    async def emit(self, messages: list[dict[str, Any]]) -> None:
        self.messages += messages

    async def read(self, name: str, position: int, max_bytes: int) -> ReadResult:
        info = StreamInfo(1, name, "application/json", len(self.messages), False, 0.0, 0.0)
        units = [
            Unit(i, i + 1, 1, json.dumps(m).encode())
            for i, m in enumerate(self.messages[position:], position)
        ]
        return ReadResult(info, units, len(self.messages))

    def events(self) -> list[str]:
        return [m["data"] for m in self.messages if m["type"] == "event"]


def settings() -> Settings:
    upstream = UpstreamSettings(
        url="http://127.0.0.1:1", headers={"Authorization": "Bearer secret"}, allow_private=True
    )
    return Settings(
        upstreams={"up": upstream},
        relay=RelaySettings(first_byte_timeout=5, idle_timeout=5),
    )


def make_job(emit: Callable[[list[dict[str, Any]]], Any]) -> Job:
    return Job(
        id="job_test",
        task="relay",
        queue="default",
        attempt=1,
        max_attempts=1,
        input={},
        emitter=emit,
        loop=asyncio.get_running_loop(),
    )


async def relay(
    stream: FakeJobStream,
    handler: Callable[[httpx.Request], Any],
    value: dict[str, Any] | None = None,
    emit: Callable[[list[dict[str, Any]]], Any] | None = None,
) -> dict[str, Any]:
    value = value or {"upstream": "up", "path": "/v1/chat", "body": {"stream": True}}
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        return await run_relay(
            make_job(emit or stream.emit), value, settings=settings(), store=stream, client=client
        )  # type: ignore[arg-type]


SSE = {"content-type": "text/event-stream"}


def test_gzip_encoded_events_are_decoded() -> None:
    body = gzip.compress(b"data: one\nid: 1\n\ndata: two\nid: 2\n\ndata: [DONE]\n\n")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={**SSE, "content-encoding": "gzip"}, content=body)

    stream = FakeJobStream()
    result = asyncio.run(relay(stream, handler))
    assert result == {"status": 200, "events": 3, "done": True}
    assert stream.events() == ["one", "two", "[DONE]"]


def test_what_is_sent_upstream() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers=SSE, content=b"data: [DONE]\n\n")

    value = {
        "upstream": "up",
        "path": "/v1/chat?x=1",
        "body": {"stream": True},
        "headers": {
            "Authorization": "Bearer client",  # the upstream's own header wins
            "Host": "evil.example",  # owned by outlast
            "Last-Event-ID": "forged",  # only outlast resumes
            "x-trace": "t1",
        },
    }
    asyncio.run(relay(FakeJobStream(), handler, value))
    request = seen[0]
    assert str(request.url) == "http://127.0.0.1:1/v1/chat?x=1"
    assert request.method == "POST"
    assert json.loads(request.content) == {"stream": True}
    assert request.headers["authorization"] == "Bearer secret"
    assert request.headers["host"] == "127.0.0.1:1"
    assert request.headers["accept"] == "text/event-stream"
    assert request.headers["x-trace"] == "t1"
    assert "last-event-id" not in request.headers


def test_a_retry_resumes_after_the_last_stored_id() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers=SSE, content=b"data: c\nid: 3\n\ndata: [DONE]\n\n")

    stored = [
        {"type": "state", "state": "running", "attempt": 1},
        {"type": "event", "event": "message", "data": "a", "id": "1"},
        {"type": "event", "event": "message", "data": "b", "id": "2"},
        {"type": "error", "attempt": 1, "error": {"code": "upstream_error", "message": "cut"}},
    ]
    stream = FakeJobStream(stored)
    result = asyncio.run(relay(stream, handler))
    assert seen[0].headers["last-event-id"] == "2"
    assert stream.events() == ["a", "b", "c", "[DONE]"]
    assert result == {"status": 200, "events": 4, "done": True}


def test_a_finished_stream_is_not_requested_again() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("the upstream must not be called again")

    chunk = {"choices": [{"delta": {"content": "hi"}}]}
    stored = [
        {"type": "event", "event": "message", "data": json.dumps(chunk)},
        {"type": "event", "event": "message", "data": "[DONE]"},
    ]
    result = asyncio.run(relay(FakeJobStream(stored), handler))
    assert result == {"status": 200, "events": 2, "done": True, "text": "hi"}


def test_stored_events_never_wait_for_the_next_chunk() -> None:
    async def run() -> None:
        append_started = asyncio.Event()
        first_append_may_end = asyncio.Event()
        b_handed_over = asyncio.Event()
        silence_over = asyncio.Event()
        b_stored = asyncio.Event()
        stream = FakeJobStream()

        async def slow_emit(messages: list[dict[str, Any]]) -> None:
            if not stream.messages:  # the first append is slow to commit
                append_started.set()
                await first_append_may_end.wait()
            await stream.emit(messages)
            if "b" in stream.events():
                b_stored.set()

        class Body(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                yield b"data: a\n\n"
                await append_started.wait()
                yield b"data: b\n\n"  # arrives while "a" commits...
                b_handed_over.set()  # (the relay asked for more: it has taken "b")
                await silence_over.wait()  # ...and then the upstream falls silent
                yield b"data: [DONE]\n\n"

        def handler(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, headers=SSE, stream=Body())

        task = asyncio.ensure_future(relay(stream, handler, emit=slow_emit))
        async with asyncio.timeout(5):
            await b_handed_over.wait()
        first_append_may_end.set()
        # "b" is stored while the upstream is silent, not when its next chunk comes.
        async with asyncio.timeout(5):
            await b_stored.wait()
        assert stream.events() == ["a", "b"]
        assert not task.done()
        silence_over.set()
        assert await task == {"status": 200, "events": 3, "done": True}

    asyncio.run(run())


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            httpx.ConnectTimeout("timed out"),
            "connecting to the upstream took more than 10 s (connect_timeout)",
        ),
        (httpx.ConnectError("[Errno 111] Connection refused"), "cannot connect to the upstream"),
        (httpx.RemoteProtocolError("peer closed"), "the upstream connection broke: peer closed"),
    ],
)
def test_transport_failures_before_any_event_are_retryable(error: Exception, message: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(TaskFailure) as failure:
        asyncio.run(relay(FakeJobStream(), handler))
    assert failure.value.code == "upstream_error"
    assert failure.value.message.startswith(message)
    assert failure.value.retryable


def test_a_break_after_events_with_ids_is_retryable_and_keeps_them() -> None:
    class Body(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"data: a\nid: 7\n\ndata: b\nid: 8\n\ndata: unfinish"
            raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=SSE, stream=Body())

    stream = FakeJobStream()
    with pytest.raises(TaskFailure) as failure:
        asyncio.run(relay(stream, handler))
    assert failure.value.retryable
    assert failure.value.message == (
        "the upstream connection broke: connection reset, after 2 events "
        "(a retry resumes after id 8)"
    )
    assert stream.events() == ["a", "b"]  # stored before the attempt ended


def test_a_break_after_events_without_ids_is_interrupted() -> None:
    class Body(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"data: a\n\n"
            raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=SSE, stream=Body())

    stream = FakeJobStream()
    with pytest.raises(TaskFailure) as failure:
        asyncio.run(relay(stream, handler))
    assert failure.value.code == "interrupted"
    assert not failure.value.retryable
    assert stream.events() == ["a"]


def test_an_error_status_keeps_a_bounded_excerpt() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, content=b"overloaded " * 1000)

    with pytest.raises(TaskFailure) as failure:
        asyncio.run(relay(FakeJobStream(), handler))
    assert failure.value.code == "upstream_status"
    assert failure.value.retryable
    assert failure.value.details["status"] == 503
    assert failure.value.details["body"] == ("overloaded " * 1000)[:2048]


def _chat_chunk(content: str | None, finish: str | None = None) -> str:
    delta = {} if content is None else {"content": content}
    return json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


@pytest.mark.parametrize("with_ids", [False, True])
def test_an_openai_stream_ending_without_done_or_finish_reason_was_cut(with_ids: bool) -> None:
    # A proxy closed the connection cleanly mid-answer: the body ended, the answer did not.
    def event(data: str, i: int) -> bytes:
        return f"data: {data}\n".encode() + (f"id: {i}\n".encode() if with_ids else b"") + b"\n"

    def handler(request: httpx.Request) -> httpx.Response:
        body = event(_chat_chunk("The"), 1) + event(_chat_chunk(" quick"), 2)
        return httpx.Response(200, headers=SSE, content=body)

    stream = FakeJobStream()
    with pytest.raises(TaskFailure) as failure:
        asyncio.run(relay(stream, handler))
    assert "ended without data: [DONE] or a finish_reason" in failure.value.message
    assert len(stream.events()) == 2  # what arrived is kept
    if with_ids:  # retried, resuming after the last id
        assert failure.value.code == "upstream_error"
        assert failure.value.retryable
        assert failure.value.message.endswith("(a retry resumes after id 2)")
    else:  # repeating the request would duplicate output
        assert failure.value.code == "interrupted"
        assert not failure.value.retryable


def test_an_openai_stream_with_a_finish_reason_and_no_done_is_whole() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = f"data: {_chat_chunk('Hi')}\n\ndata: {_chat_chunk(None, 'stop')}\n\n"
        return httpx.Response(200, headers=SSE, content=body.encode())

    result = asyncio.run(relay(FakeJobStream(), handler))
    assert result == {"status": 200, "events": 2, "done": False, "text": "Hi"}


def test_other_formats_end_with_their_body() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = b'event: delta\ndata: {"text": "a"}\n\ndata: plain\n\n'
        return httpx.Response(200, headers=SSE, content=body)

    result = asyncio.run(relay(FakeJobStream(), handler))
    assert result == {"status": 200, "events": 2, "done": False}

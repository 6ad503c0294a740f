"""A fake upstream on 127.0.0.1 for relay and ``http`` task tests: a real uvicorn server in a
thread, with routes for each behaviour a real upstream (an LLM API, a slow endpoint) may show.
It counts what it sent, so a test can tell whether the upstream was read to its end.

Routes (query parameters in brackets):
- ``GET|POST /sse`` [n=10, interval=0.0, ids=1, done=1, event=, key=]: ``n`` events
  ``data: {"i": i}``, then ``data: [DONE]``; with ``ids=1`` each has ``id: i``; resumes after
  ``Last-Event-ID``. Counts events sent per ``key``.
- ``POST /v1/chat/completions``: OpenAI-style. With ``"stream": true`` the words of
  ``FAKE_TEXT`` as ``chat.completion.chunk`` events (``interval`` from the ``x-fake-interval``
  header), ending with ``data: [DONE]``; otherwise one ``chat.completion`` JSON answer. Header
  ``x-fake-key`` names the counters, ``x-fake-status`` answers that error status instead,
  ``x-fake-gate`` holds the answer until the test opens that gate, ``x-fake-cut-after`` cuts
  the stream after that many words (ids are never sent, so it cannot be resumed),
  ``x-fake-end-after`` ends the response cleanly after that many words, without a
  ``finish_reason`` or ``[DONE]`` (a proxy closing mid-answer; once per key), and
  ``x-fake-ids: 1`` gives each word chunk ``id: <word index>`` and resumes after
  ``Last-Event-ID``.
- ``/status/{code}``: that status with a JSON error body.
- ``/hang``: waits ``seconds`` before answering (never, by default).
- ``/stall`` [after=3, n=6, ids=1]: ``after`` events, then silence (the first time per key;
  a retry with ``Last-Event-ID`` gets the rest).
- ``/gate`` [gate=, n=5, size=0]: holds its answer until the test calls ``open_gate(gate)``,
  then sends ``n`` events like ``/sse`` (with ``size`` bytes of padding each).
- ``/drop`` [after=3, ids=1]: ``after`` events, then the connection is cut (once per key;
  the retry with ``Last-Event-ID`` gets the rest).
- ``/malformed``: lines an SSE parser must survive.
- ``/longline`` [size=2_000_000]: one line longer than any sane limit.
- ``/forever`` [interval=0.05]: events until the client goes away.
- ``/echo``: the request's method, headers and body as JSON.
- ``/cookie`` [name=]: records the ``Cookie`` header it was sent (``cookies_seen``, ``None``
  when none), then answers ``Set-Cookie: session=<name>`` with a small JSON body, or with
  ``data: [DONE]`` as an event stream when the request accepts one.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

FAKE_TEXT = "The quick brown fox jumps over the lazy dog, again and again, until the end."
SSE_HEADERS = {"Cache-Control": "no-cache"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeUpstream:
    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()  # events sent, per key
        self.requests: Counter[str] = Counter()  # requests, per path
        self.last_headers: dict[str, dict[str, str]] = {}
        self.dropped: set[str] = set()
        self.ended: set[str] = set()  # chat keys whose answer was ended early once
        self.completed: Counter[str] = Counter()  # streams sent to their end, per key
        self.opened: set[str] = set()  # gates the test opened
        self._gate_events: dict[str, asyncio.Event] = {}  # gates answers wait on (fake's loop)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stalled: set[str] = set()
        self.cookies_seen: list[tuple[str, str | None]] = []  # (name, Cookie header) per request
        self.port = _free_port()
        self.app = Starlette(
            routes=[
                Route("/sse", self.sse, methods=["GET", "POST"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/status/{code:int}", self.status, methods=["GET", "POST"]),
                Route("/hang", self.hang, methods=["GET", "POST"]),
                Route("/stall", self.stall, methods=["GET", "POST"]),
                Route("/drop", self.drop, methods=["GET", "POST"]),
                Route("/malformed", self.malformed, methods=["GET", "POST"]),
                Route("/longline", self.longline, methods=["GET", "POST"]),
                Route("/forever", self.forever, methods=["GET", "POST"]),
                Route("/gate", self.gated, methods=["GET", "POST"]),
                Route("/echo", self.echo, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
                Route("/cookie", self.cookie, methods=["GET", "POST"]),
            ]
        )
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
            )
        )
        self.thread = threading.Thread(target=self.server.run, name="fake-upstream", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeUpstream:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("fake upstream failed to start")
            threading.Event().wait(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        # Streams that never end (/hang, /forever, a stall) would hold a graceful exit forever.
        self.server.force_exit = True
        self.thread.join(timeout=10)

    def open_gate(self, name: str) -> None:
        """Let the answers waiting on gate *name* go (from the test's thread)."""
        self.opened.add(name)
        loop = self.loop
        if loop is not None:
            loop.call_soon_threadsafe(self._set_gate, name)

    def _set_gate(self, name: str) -> None:
        event = self._gate_events.get(name)
        if event is not None:
            event.set()

    async def _wait_gate(self, name: str) -> None:
        self.loop = asyncio.get_running_loop()
        if name in self.opened:
            return
        await self._gate_events.setdefault(name, asyncio.Event()).wait()

    def _note(self, request: Request) -> str:
        key = request.query_params.get("key", request.url.path)
        self.requests[request.url.path] += 1
        self.last_headers[key] = {k.lower(): v for k, v in request.headers.items()}
        return key

    # -- routes ---------------------------------------------------------------------------

    async def sse(self, request: Request) -> Response:
        key = self._note(request)
        q = request.query_params
        n, interval = int(q.get("n", "10")), float(q.get("interval", "0"))
        ids, done, event = q.get("ids", "1") == "1", q.get("done", "1") == "1", q.get("event")
        start = int(request.headers.get("last-event-id", "-1")) + 1

        async def body() -> AsyncIterator[bytes]:
            for i in range(start, n):
                lines = [f"event: {event}"] if event else []
                lines.append(f'data: {{"i": {i}}}')
                if ids:
                    lines.append(f"id: {i}")
                yield ("\n".join(lines) + "\n\n").encode()
                self.sent[key] += 1
                if interval:
                    await asyncio.sleep(interval)
            if done:
                yield b"data: [DONE]\n\n"
            self.completed[key] += 1

        return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)

    async def chat(self, request: Request) -> Response:
        key = request.headers.get("x-fake-key", "chat")
        self._note(request)
        self.last_headers[key] = {k.lower(): v for k, v in request.headers.items()}
        payload = await request.json()
        interval = float(request.headers.get("x-fake-interval", "0"))
        words = FAKE_TEXT.split(" ")
        if "x-fake-gate" in request.headers:
            await self._wait_gate(request.headers["x-fake-gate"])
        if "x-fake-status" in request.headers:
            code = int(request.headers["x-fake-status"])
            error = {"message": f"fake upstream says {code}", "type": "fake_error", "code": code}
            return JSONResponse({"error": error}, code)
        cut_after = int(request.headers.get("x-fake-cut-after", "-1"))
        end_after = int(request.headers.get("x-fake-end-after", "-1"))
        if end_after >= 0:
            end_after = -1 if key in self.ended else end_after
            self.ended.add(key)
        ids = request.headers.get("x-fake-ids") == "1"
        start = int(request.headers.get("last-event-id", "-1")) + 1
        if not payload.get("stream"):
            self.completed[key] += 1
            return JSONResponse(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": 0,
                    "model": payload.get("model", "fake"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": FAKE_TEXT},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": 1,
                        "completion_tokens": len(words),
                        "total_tokens": 1 + len(words),
                    },
                }
            )

        def chunk(delta: dict[str, Any], finish: str | None = None, i: int = -1) -> bytes:
            body = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": payload.get("model", "fake"),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            line = b"data: " + json.dumps(body).encode() + b"\n"
            return line + (f"id: {i}\n".encode() if ids and i >= 0 else b"") + b"\n"

        async def body() -> AsyncIterator[bytes]:
            if start == 0:
                yield chunk({"role": "assistant", "content": ""})
            for i, word in enumerate(words):
                if i < start:
                    continue
                if i == cut_after:
                    raise ConnectionResetError("the fake upstream cuts the connection")
                if i == end_after:
                    return  # a clean end, mid-answer
                yield chunk({"content": word if i == 0 else " " + word}, i=i)
                self.sent[key] += 1
                if interval:
                    await asyncio.sleep(interval)
            yield chunk({}, "stop")
            yield b"data: [DONE]\n\n"
            self.completed[key] += 1

        return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)

    async def status(self, request: Request) -> Response:
        self._note(request)
        code = request.path_params["code"]
        body = {
            "error": {"message": f"fake upstream says {code}", "type": "fake_error", "code": code}
        }
        return JSONResponse(body, code)

    async def hang(self, request: Request) -> Response:
        self._note(request)
        await asyncio.sleep(float(request.query_params.get("seconds", "3600")))
        return JSONResponse({"late": True})

    async def stall(self, request: Request) -> Response:
        key = self._note(request)
        q = request.query_params
        after, total, ids = int(q.get("after", "3")), int(q.get("n", "6")), q.get("ids", "1") == "1"
        start = int(request.headers.get("last-event-id", "-1")) + 1
        first_time = key not in self.stalled
        self.stalled.add(key)

        async def body() -> AsyncIterator[bytes]:
            for i in range(start, total):
                if first_time and i == after:
                    await asyncio.sleep(3600)
                yield (f'data: {{"i": {i}}}\n' + (f"id: {i}\n" if ids else "") + "\n").encode()
                self.sent[key] += 1
            yield b"data: [DONE]\n\n"
            self.completed[key] += 1

        return StreamingResponse(body(), media_type="text/event-stream")

    async def gated(self, request: Request) -> Response:
        key = self._note(request)
        q = request.query_params
        n, size = int(q.get("n", "5")), int(q.get("size", "0"))
        await self._wait_gate(q.get("gate", key))
        pad = "x" * size

        async def body() -> AsyncIterator[bytes]:
            for i in range(n):
                data = json.dumps({"i": i, "pad": pad} if size else {"i": i})
                yield f"data: {data}\nid: {i}\n\n".encode()
                self.sent[key] += 1
            yield b"data: [DONE]\n\n"
            self.completed[key] += 1

        return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)

    async def drop(self, request: Request) -> Response:
        key = self._note(request)
        q = request.query_params
        after, total, ids = int(q.get("after", "3")), int(q.get("n", "6")), q.get("ids", "1") == "1"
        start = int(request.headers.get("last-event-id", "-1")) + 1
        first_time = key not in self.dropped
        self.dropped.add(key)

        async def body() -> AsyncIterator[bytes]:
            for i in range(start, total):
                if first_time and i == after:
                    raise ConnectionResetError("the fake upstream cuts the connection")
                line = f'data: {{"i": {i}}}\n' + (f"id: {i}\n" if ids else "") + "\n"
                yield line.encode()
                self.sent[key] += 1
            yield b"data: [DONE]\n\n"
            self.completed[key] += 1

        return StreamingResponse(body(), media_type="text/event-stream")

    async def malformed(self, request: Request) -> Response:
        self._note(request)
        raw = (
            b"\xef\xbb\xbf: a comment after a BOM\r\n"
            b"data: first\r\r"
            b"bogus line without colon\n"
            b"data:second\nid: 1\x00ignored\nretry: abc\n\n"
            b"event: custom\ndata: third\ndata:  spaced\n\n"
            b"data: [DONE]\n\n"
            b"data: unfinished"
        )
        return Response(raw, media_type="text/event-stream")

    async def longline(self, request: Request) -> Response:
        self._note(request)
        size = int(request.query_params.get("size", "2000000"))

        async def body() -> AsyncIterator[bytes]:
            yield b"data: ok\n\n"
            yield b"data: " + b"x" * size + b"\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    async def forever(self, request: Request) -> Response:
        key = self._note(request)
        interval = float(request.query_params.get("interval", "0.05"))

        async def body() -> AsyncIterator[bytes]:
            i = 0
            while True:
                yield f'data: {{"i": {i}}}\n\n'.encode()
                self.sent[key] += 1
                i += 1
                await asyncio.sleep(interval)

        return StreamingResponse(body(), media_type="text/event-stream")

    async def cookie(self, request: Request) -> Response:
        name = request.query_params.get("name", "")
        self.cookies_seen.append((name, request.headers.get("cookie")))
        headers = {"Set-Cookie": f"session={name}; Path=/"}
        if "text/event-stream" in request.headers.get("accept", ""):
            return Response("data: [DONE]\n\n", headers=headers, media_type="text/event-stream")
        return JSONResponse({"name": name}, headers=headers)

    async def echo(self, request: Request) -> Response:
        self._note(request)
        body = await request.body()
        return JSONResponse(
            {
                "method": request.method,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": body.decode("utf-8", "replace"),
            }
        )

"""The fake SSE upstream: an OpenAI-style streaming endpoint on 127.0.0.1, in its own process.

    python -m bench.relay.upstream --port P

Any ``POST`` (or ``GET``) path answers ``200 text/event-stream`` at once (chunked, keep-alive),
then ``chat.completion.chunk`` events, then ``data: [DONE]``. Each event carries its sequence
number and its send time, ``"bench": {"s": 7, "t": <time.monotonic_ns()>}``, taken just before
its bytes are written: CLOCK_MONOTONIC is one clock for every process of the machine, so a
reader in another process subtracts it from its own receive time.

What a stream does comes from the ``"bench"`` object of the JSON request body (the same body
whether the load generator calls the upstream itself or outlast's relay calls it), or, for a
proxy that passes only the fields of the OpenAI API on (LiteLLM), from the content of the last
message when that is a JSON object with a ``"bench"`` key:

- ``gate``: the stream waits (sending ``: ping`` comments every ``PING_EVERY`` s, so the relay's
  idle timeout never fires) until ``POST /control/go?gate=<gate>``; every stream of a
  measurement then starts together, and nobody reads an event that was sent before its reader
  was connected;
- ``n``: events to send (default 10); ``seconds``: send until this long after the go instead;
- ``rate``: events/s per stream on an absolute schedule (late events are sent at once, not
  skipped); ``0`` = unthrottled, each event as soon as the socket takes it;
- ``spread``: start each stream at a random phase within its first interval, so that N streams
  at the same rate do not all send in the same millisecond;
- ``stamp``: ``"content"`` puts the sequence number and the send time into the chunk's
  ``delta.content`` as ``#s<seq>#t<ns>#`` instead of a ``"bench"`` field: a proxy that rebuilds
  each chunk from the fields it knows (LiteLLM) keeps the content, and drops the rest.

``GET /control/stats?gate=<gate>`` answers the gate's counters (streams waiting, running,
finished, cut by the client, events sent). stdlib only (+ uvloop when present).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import resource
import signal
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

PING_EVERY = 5.0  # seconds between comments while a stream waits at its gate
YIELD_EVERY = 64  # unthrottled: let the other streams run after this many events
HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
EVENT = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"bench","choices":[{"index":0,"delta":{"content":"tok%d "},"finish_reason":null}],'
    b'"bench":{"s":%d,"t":%d}}\n\n'
)
# The same chunk with its stamp in the content (``"stamp": "content"``), about as long.
EVENT_IN_CONTENT = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"bench","choices":[{"index":0,"delta":{"content":"tok%d #s%d#t%d# "},'
    b'"finish_reason":null}]}\n\n'
)
# What a reader looks for: the stamp as the chunk's "bench" field, or inside its content.
STAMP = re.compile(rb'"bench":\{"s":(\d+),"t":(\d+)\}|#s(\d+)#t(\d+)#')
DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"


def bench_params(body: bytes) -> dict[str, Any]:
    """What the stream is to do: the body's ``"bench"`` object, else the one in the content of
    its last message; ``{}`` when neither is there."""
    try:
        request = json.loads(body or b"{}")
        params = request.get("bench")
        if isinstance(params, dict):
            return params
        content = request["messages"][-1]["content"]
        params = json.loads(content).get("bench") if content.startswith("{") else None
    except (ValueError, AttributeError, KeyError, IndexError, TypeError):
        return {}
    return params if isinstance(params, dict) else {}


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@dataclass
class Gate:
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    t0: float = 0.0  # time.monotonic() of the go
    waiting: int = 0
    running: int = 0
    finished: int = 0
    cut: int = 0  # streams whose client went away before the end
    sent: int = 0
    last_send_ns: int = 0

    def stats(self) -> dict[str, Any]:
        return {
            "waiting": self.waiting,
            "running": self.running,
            "finished": self.finished,
            "cut": self.cut,
            "sent": self.sent,
            "opened": self.opened.is_set(),
            "last_send_ns": self.last_send_ns,
        }


class Upstream:
    def __init__(self) -> None:
        self.gates: dict[str, Gate] = {}
        self.requests = 0

    def gate(self, name: str) -> Gate:
        return self.gates.setdefault(name, Gate())

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: one request after the other
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                path, _, query = target.partition("?")
                self.requests += 1
                if path.startswith("/control/"):
                    await self.control(writer, method, path, parse_qs(query))
                else:
                    await self.stream(writer, body)
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except RuntimeError:  # uvloop: a write on a transport the client already closed
            pass
        finally:
            writer.close()

    async def control(
        self, writer: asyncio.StreamWriter, method: str, path: str, query: dict[str, list[str]]
    ) -> None:
        name = query.get("gate", [""])[0]
        if path == "/control/go" and method == "POST":
            gate = self.gate(name)
            gate.t0 = time.monotonic()
            gate.opened.set()
            answer: dict[str, Any] = gate.stats()
        elif path == "/control/stats":
            answer = self.gate(name).stats() if name else {"requests": self.requests}
        elif path == "/control/forget" and method == "POST":
            answer = self.gates.pop(name, Gate()).stats()
        else:
            answer = {"error": f"unknown control {method} {path}"}
        data = json.dumps(answer).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(data), data)
        )
        await writer.drain()

    async def stream(self, writer: asyncio.StreamWriter, body: bytes) -> None:
        params = bench_params(body)
        event = EVENT_IN_CONTENT if params.get("stamp") == "content" else EVENT
        gate = self.gate(str(params.get("gate", "")))
        if not params.get("gate"):
            gate.opened.set()  # no gate named: start at once
        n, seconds = int(params.get("n", 10)), float(params.get("seconds", 0))
        rate = float(params.get("rate", 0))
        writer.write(HEAD)
        await writer.drain()
        gate.waiting += 1
        try:
            while not gate.opened.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(PING_EVERY):
                        await gate.opened.wait()
                if not gate.opened.is_set():
                    writer.write(chunk(PING))
                    await writer.drain()
        finally:
            gate.waiting -= 1
        gate.running += 1
        try:
            interval = 1.0 / rate if rate > 0 else 0.0
            t0 = gate.t0 if params.get("gate") else time.monotonic()
            start = t0 + (random.random() * interval if params.get("spread") else 0.0)
            deadline = t0 + seconds if seconds > 0 else float("inf")
            seq = 0
            while seq < n if seconds <= 0 else time.monotonic() < deadline:
                if writer.transport.is_closing():
                    raise ConnectionResetError("the client went away")
                if interval:
                    delay = start + seq * interval - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if seconds > 0 and time.monotonic() >= deadline:
                        break
                sent_ns = time.monotonic_ns()
                writer.write(chunk(event % (seq, seq, sent_ns)))
                gate.sent += 1
                gate.last_send_ns = sent_ns
                seq += 1
                if interval or seq % YIELD_EVERY == 0:
                    await writer.drain()  # also notices a client that went away
                    if not interval:
                        await asyncio.sleep(0)
            writer.write(chunk(DONE) + b"0\r\n\r\n")
            await writer.drain()
            gate.finished += 1
        except (ConnectionError, RuntimeError):
            gate.cut += 1
            raise
        finally:
            gate.running -= 1


async def serve(port: int) -> None:
    upstream = Upstream()
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", port, backlog=4096)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"upstream listening on 127.0.0.1:{port}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.relay.upstream")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    # One socket per stream: 1,000 relays need more than the usual 1,024 descriptors.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        uvloop.run(serve(args.port))
    except ImportError:  # pragma: no cover - depends on the environment
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()

"""Asyncio load generator for the read-side workloads: fill, catch-up read, SSE fan-out.

Run as a subprocess by ``run.py`` (so that its CPU time is measured apart from the server's and
from the progress display) and identical for every server::

    python bench/streams/loadgen.py '{"op": "catchup", "base": "http://127.0.0.1:PORT", ...}'

It prints one JSON line, the result. Stdlib + aiohttp (+ uvloop, orjson when present) only; it
imports nothing from the rest of the repository.

Appends are driven by ``wrk`` instead (see ``append.lua``): a Python client cannot issue small
POSTs fast enough on a 2-core machine without becoming the bottleneck itself.

The SSE readers are a small HTTP/1.1 client written on ``asyncio.Protocol`` rather than aiohttp:
the receive time of every event is taken in ``data_received`` — the first Python code that sees the
bytes — so 100 readers woken by the same append do not queue behind each other's parsing before
they take their timestamp. Payloads are JSON-decoded only after the measurement window.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

_loads: Callable[[bytes], Any] = json.loads
try:  # orjson is ~5x faster on 1 KiB messages; the stdlib works too.
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    pass

# Every request asks for an uncompressed body: the reference server gzips catch-up responses
# when asked to, outlast may not, and MB/s should mean the same bytes for both.
IDENTITY = {"Accept-Encoding": "identity"}
JSON_HEADERS = {"Content-Type": "application/json", **IDENTITY}
# Guards so every loop ends by itself even against a server that stops answering.
REQUEST_TIMEOUT = 60.0
CONNECT_GRACE = 15.0  # seconds for 100 SSE readers to connect and see their first control event
DRAIN = 2.0  # seconds readers keep listening after the last append
MAX_RECONNECTS = 1_000  # over all readers, per SSE run


def message(size: int, **fields: Any) -> bytes:
    """A JSON object of exactly *size* bytes holding *fields* and a padding string."""
    body = {**fields, "pad": ""}
    bare = len(json.dumps(body, separators=(",", ":")))
    body["pad"] = "x" * max(0, size - bare)
    return json.dumps(body, separators=(",", ":")).encode()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


_TICK = os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(pids: list[int]) -> float:
    """CPU time of the server's processes (given by run.py), so that only the timed part of a
    workload is charged to it, not connecting readers or filling a stream."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICK
        except (OSError, ValueError, IndexError):
            pass
    return total


def machine_cpu_seconds() -> float:
    """Busy CPU time of the whole machine (all cores): what is left after the server's and the
    load generator's share was taken by other processes, and is reported as such."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: all but idle and iowait
    return (fields[0] + fields[1] + fields[2] + sum(fields[5:8])) / _TICK


# --------------------------------------------------------------------------------------------
# fill: write a stream of N messages of S bytes (setup for the catch-up read, not timed as such)


async def fill(spec: dict[str, Any]) -> dict[str, Any]:
    url = f"{spec['base']}/v1/stream/{quote(spec['stream'])}"
    total, size, batch = spec["messages"], spec["size"], spec.get("batch", 256)
    one = message(size, seq=0)
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        sent = 0
        while sent < total:
            n = min(batch, total - sent)
            # JSON mode: a POSTed array appends each element as its own message.
            body = b"[" + b",".join([one] * n) + b"]"
            async with session.post(url, data=body, headers=JSON_HEADERS) as resp:
                await resp.read()
                if resp.status not in (200, 204):
                    raise RuntimeError(f"fill: POST {url} answered {resp.status}")
            sent += n
    return {"messages": total, "bytes": total * size, "seconds": time.perf_counter() - started}


# --------------------------------------------------------------------------------------------
# catchup: read the whole stream from -1, following Stream-Next-Offset until Stream-Up-To-Date


async def read_once(session: aiohttp.ClientSession, url: str) -> tuple[int, int, list[bytes]]:
    offset, requests, total, bodies = "-1", 0, 0, []
    while True:
        async with session.get(url, params={"offset": offset}, headers=IDENTITY) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"catch-up: GET {url}?offset={offset} answered {resp.status}")
            requests += 1
            total += len(body)
            bodies.append(body)
            offset = resp.headers["Stream-Next-Offset"]
            if resp.headers.get("Stream-Up-To-Date", "").lower() == "true":
                return total, requests, bodies
        if requests > 1_000_000:
            raise RuntimeError("catch-up: no Stream-Up-To-Date after 1e6 requests")


def count_messages(bodies: list[bytes]) -> int:
    count = 0
    for body in bodies:
        if body.strip():
            value = _loads(body)
            count += len(value) if isinstance(value, list) else 1
    return count


async def catchup(spec: dict[str, Any]) -> dict[str, Any]:
    url = f"{spec['base']}/v1/stream/{quote(spec['stream'])}"
    min_seconds, max_reads = spec["seconds"], spec.get("max_reads", 1000)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await read_once(session, url)  # warm-up: caches, JIT, connection
        pids = spec.get("pids", [])
        cpu0, reads, all_bytes, requests, times = cpu_seconds(), 0, 0, 0, []
        server0, machine0 = server_cpu_seconds(pids), machine_cpu_seconds()
        started = time.perf_counter()
        messages = None
        # Whole reads, repeated until min_seconds have passed (at least one).
        while reads < max_reads:
            t0 = time.perf_counter()
            nbytes, nreq, bodies = await read_once(session, url)
            times.append(time.perf_counter() - t0)
            reads, all_bytes, requests = reads + 1, all_bytes + nbytes, requests + nreq
            if messages is None:  # verified once, outside the timed read
                pause, pause_cpu = time.perf_counter(), cpu_seconds()
                messages = count_messages(bodies)
                started += time.perf_counter() - pause
                cpu0 += cpu_seconds() - pause_cpu
                machine0 += cpu_seconds() - pause_cpu
            del bodies
            if time.perf_counter() - started >= min_seconds:
                break
        elapsed = sum(times)
        wall = time.perf_counter() - started
        server_cpu = (server_cpu_seconds(pids) - server0) / wall
        client_cpu = (cpu_seconds() - cpu0) / wall
        machine_cpu = (machine_cpu_seconds() - machine0) / wall
    return {
        "reads": reads,
        "bytes_per_read": all_bytes // reads,
        "requests_per_read": requests / reads,
        "messages_per_read": messages,
        "seconds": elapsed,
        "read_seconds": times,
        "mb_per_s": all_bytes / elapsed / 1e6,
        "server_cpu": server_cpu,
        "client_cpu": client_cpu,
        "other_cpu": max(0.0, machine_cpu - server_cpu - client_cpu),
    }


# --------------------------------------------------------------------------------------------
# sse: 1 writer at a steady rate, N SSE readers; delivered events/s and append→delivery latency


class ChunkedDecoder:
    """Incremental decoder of an HTTP/1.1 chunked body (sans-IO: bytes in, bytes out)."""

    def __init__(self) -> None:
        self._buf = b""
        self._left = 0  # bytes left in the current chunk (+2 for its CRLF)
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = []
        while self._buf and not self.done:
            if self._left:
                take = self._buf[: self._left]
                self._buf = self._buf[len(take) :]
                self._left -= len(take)
                # the last 2 bytes of each chunk are its CRLF, not data
                data_part = take[: max(0, len(take) - max(0, 2 - self._left))]
                out.append(data_part)
                continue
            end = self._buf.find(b"\r\n")
            if end < 0:
                break
            size = int(self._buf[:end].split(b";", 1)[0], 16)
            self._buf = self._buf[end + 2 :]
            if size == 0:
                self.done = True
                break
            self._left = size + 2
        return b"".join(out)


class SSEReader(asyncio.Protocol):
    """One SSE connection: parses events and records (receive time, payload) of data events."""

    def __init__(self, fanout: Fanout, index: int, path: str) -> None:
        self.fanout, self.index, self.path = fanout, index, path
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.headers_done = False
        self.chunked: ChunkedDecoder | None = None
        self.text = b""
        self.closed = asyncio.get_running_loop().create_future()
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; both have write/close.
        self.transport = transport  # type: ignore[assignment]
        host = self.fanout.host
        self.transport.write(  # type: ignore[union-attr]
            f"GET {self.path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
            f"Accept-Encoding: identity\r\nCache-Control: no-cache\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()  # before any parsing: the delivery time of what follows
        if not self.headers_done:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end].decode("latin-1"), self.head[end + 4 :]
            self.headers_done = True
            lines = head.split("\r\n")
            self.status = int(lines[0].split()[1])
            fields = {
                k.strip().lower(): v.strip().lower()
                for k, _, v in (line.partition(":") for line in lines[1:])
            }
            if self.status != 200:
                self.fanout.errors.append(f"reader {self.index}: HTTP {self.status}")
                self.transport.close()  # type: ignore[union-attr]
                return
            if "chunked" in fields.get("transfer-encoding", ""):
                self.chunked = ChunkedDecoder()
        if self.chunked is not None:
            data = self.chunked.feed(data)
        if not data:
            return
        text = self.text + data
        if b"\r" in text:
            text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        blocks = text.split(b"\n\n")
        self.text = blocks.pop()  # an unfinished event waits for more bytes
        for block in blocks:
            self.event(block, now)

    def event(self, block: bytes, now: int) -> None:
        kind, data = b"message", []
        for line in block.split(b"\n"):
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"event":
                kind = value
        if not data:
            return
        payload = b"\n".join(data)
        if kind == b"data":
            fan = self.fanout
            fan.deliveries.append((self.index, now, payload))
            if fan.expected and len(fan.deliveries) >= fan.expected:
                fan.delivered_all.set()
        elif kind == b"control":
            control = _loads(payload)
            self.fanout.offsets[self.index] = control.get("streamNextOffset", "")
            self.fanout.seen_control(self.index)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class Fanout:
    def __init__(self, spec: dict[str, Any]) -> None:
        parts = urlsplit(spec["base"])
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.stream = spec["stream"]
        self.readers = spec["readers"]
        self.rate, self.seconds, self.size = spec["rate"], spec["seconds"], spec["size"]
        self.offsets: dict[int, str] = {}
        self.deliveries: list[tuple[int, int, bytes]] = []
        self.errors: list[str] = []
        self.reconnects = 0
        self.ready: set[int] = set()
        self.all_ready = asyncio.Event()
        self.expected = 0  # data events that mean "every reader has every append"
        self.delivered_all = asyncio.Event()
        self.stopping = False
        self.first_send_ns = 0

    def seen_control(self, index: int) -> None:
        self.ready.add(index)
        if len(self.ready) == self.readers:
            self.all_ready.set()

    async def reader(self, index: int, offset: str) -> None:
        loop = asyncio.get_running_loop()
        self.offsets[index] = offset
        while not self.stopping:
            path = f"/v1/stream/{quote(self.stream)}?offset={quote(self.offsets[index])}&live=sse"
            try:
                _, proto = await loop.create_connection(
                    lambda path=path: SSEReader(self, index, path), self.host, self.port
                )
                await proto.closed
            except OSError as exc:
                self.errors.append(f"reader {index}: {exc!r}")
                await asyncio.sleep(0.05)
            # The server may end SSE responses (protocol §5.7 lets it, e.g. once a minute for
            # caches): reconnect from the last control offset, as a real client does.
            if not self.stopping:
                self.reconnects += 1
                if self.reconnects > MAX_RECONNECTS:
                    self.errors.append("too many reconnects")
                    return

    async def writer(self, session: aiohttp.ClientSession, url: str) -> tuple[int, float, int]:
        """Append for self.seconds; returns (sent, seconds, late).

        rate > 0: on an absolute schedule (no drift when one append is slow);
        rate <= 0: unthrottled, each append as soon as the previous one was acknowledged.
        """
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        start = time.perf_counter()
        self.first_send_ns = time.perf_counter_ns()
        seq = late = 0
        while True:
            now = time.perf_counter()
            if now - start >= self.seconds:
                break
            if interval:
                due = start + seq * interval
                if due - now > 0:
                    await asyncio.sleep(due - now)
                elif now - due > interval:
                    late += 1  # the writer fell a whole interval behind its schedule
            sent_ns = time.perf_counter_ns()
            bare = b'{"seq":%d,"t":%d,"pad":"' % (seq, sent_ns)
            body = bare + b"x" * max(0, self.size - len(bare) - 2) + b'"}'
            async with session.post(url, data=body, headers=JSON_HEADERS) as resp:
                await resp.read()
                if resp.status not in (200, 204):
                    raise RuntimeError(f"sse writer: POST answered {resp.status}")
            seq += 1
        return seq, time.perf_counter() - start, late


async def sse(spec: dict[str, Any]) -> dict[str, Any]:
    fan = Fanout(spec)
    url = f"{spec['base']}/v1/stream/{quote(fan.stream)}"
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        readers = [
            asyncio.create_task(fan.reader(i, spec.get("offset", "-1"))) for i in range(fan.readers)
        ]
        try:
            async with asyncio.timeout(CONNECT_GRACE):
                await fan.all_ready.wait()
        except TimeoutError:
            fan.errors.append(f"only {len(fan.ready)}/{fan.readers} readers connected")
        pids = spec.get("pids", [])
        cpu0, server0, wall0 = cpu_seconds(), server_cpu_seconds(pids), time.perf_counter()
        machine0 = machine_cpu_seconds()
        sent, writer_seconds, late = await fan.writer(session, url)
        # Let the last appends arrive, but stop as soon as every reader has them all (one data
        # event per append; a server that batches appends into one event waits the full drain).
        fan.expected = sent * fan.readers
        if len(fan.deliveries) >= fan.expected:
            fan.delivered_all.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(spec.get("drain", DRAIN)):
                await fan.delivered_all.wait()
        wall = time.perf_counter() - wall0
        client_cpu = (cpu_seconds() - cpu0) / wall
        server_cpu = (server_cpu_seconds(pids) - server0) / wall
        other_cpu = max(0.0, (machine_cpu_seconds() - machine0) / wall - server_cpu - client_cpu)
        fan.stopping = True
        for task in readers:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*readers, return_exceptions=True)
    result = summarize(fan, sent, writer_seconds, late, client_cpu, server_cpu)
    result["other_cpu"] = other_cpu
    return result


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def summarize(
    fan: Fanout, sent: int, seconds: float, late: int, cpu: float, server_cpu: float
) -> dict[str, Any]:
    seen: set[tuple[int, int]] = set()
    latencies: list[float] = []
    duplicates = 0
    for index, recv_ns, payload in fan.deliveries:
        value = _loads(payload)
        for msg in value if isinstance(value, list) else [value]:
            key = (index, msg["seq"])
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            latencies.append((recv_ns - msg["t"]) / 1e6)
    latencies.sort()
    expected = sent * fan.readers
    # Delivered events/s over the span from the first append to the last delivery: with a
    # writer that outruns the fan-out, deliveries go on after the last append.
    last = max((recv for _, recv, _ in fan.deliveries), default=fan.first_send_ns)
    span = max(seconds, (last - fan.first_send_ns) / 1e9)
    return {
        "sent": sent,
        "writer_seconds": seconds,
        "writer_late": late,
        "readers": fan.readers,
        "expected": expected,
        "delivered": len(seen),
        "missing": expected - len(seen),
        "duplicates": duplicates,
        "span_seconds": span,
        "events_per_s": len(seen) / span,
        "appends_per_s": sent / seconds,
        "latency_ms": {
            "p50": percentile(latencies, 50),
            "p90": percentile(latencies, 90),
            "p99": percentile(latencies, 99),
            "max": latencies[-1] if latencies else float("nan"),
            "mean": sum(latencies) / len(latencies) if latencies else float("nan"),
        },
        "reconnects": fan.reconnects,
        "errors": fan.errors[:20],
        "client_cpu": cpu,
        "server_cpu": server_cpu,
    }


# --------------------------------------------------------------------------------------------


def run_bounded(
    main: Callable[[], Coroutine[Any, Any, dict[str, Any]]], limit: float | None
) -> None:
    """Run a load generator's coroutine (uvloop when available), cut off after *limit* seconds
    (``None``: the coroutine bounds itself), and print its result as one JSON line for the
    harness that started it."""

    async def bounded() -> dict[str, Any]:
        async with asyncio.timeout(limit):
            return await main()

    try:
        import uvloop

        result = uvloop.run(bounded())
    except ImportError:  # pragma: no cover - depends on the environment
        result = asyncio.run(bounded())
    sys.stdout.write(json.dumps(result) + "\n")


OPS = {"fill": fill, "catchup": catchup, "sse": sse}


def main(argv: list[str]) -> None:
    spec = json.loads(argv[1])
    op = OPS[spec["op"]]
    run_bounded(lambda: op(spec), spec.get("limit", 600))  # the whole subprocess is bounded


if __name__ == "__main__":
    main(sys.argv)

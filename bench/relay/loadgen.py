"""The relay benchmark's load generator, run as a subprocess by ``run.py`` (so that its CPU is
measured apart from the server's, the upstream's and the progress display)::

    python -m bench.relay.loadgen '{"op": "streams", ...}'

It prints one JSON line, the result; progress lines go to the file named by ``"progress"``.

- ``streams``: N streams of the fake upstream read *directly* (``"mode": "direct"``: N POSTs to
  the upstream), *through outlast* (``"mode": "relay"``: N relay jobs, ``POST /v1/jobs``, each
  followed live on ``GET /v1/jobs/<id>/events`` by ``readers`` readers) or *through a proxy*
  (``"mode": "proxy"``: N streaming chat requests POSTed to ``"path"`` of the server, each read
  on its own answer: outlast's pass-through, the LiteLLM proxy). Every reader is connected
  before the upstream's gate opens, so every event is read live. Per event: receive time − the
  upstream's send stamp.
- ``scale``: memory per running relay and per idle reader, then the flow with every reader on:
  warm-up relays; RSS; R relays held open at the gate (no readers); RSS; R × k readers idle on
  their events; RSS; the gate opens and every reader must get every event, without one error.

The readers are a small HTTP/1.1 client on ``asyncio.Protocol`` (the one used for the streams
bench's SSE fan-out has its shape): the receive time is taken in ``data_received``, before any
parsing, and each event's stamp is found with one regular expression.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import time
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from bench.relay.upstream import STAMP
from bench.streams.loadgen import (
    ChunkedDecoder,
    cpu_seconds,
    machine_cpu_seconds,
    percentile,
    run_bounded,
    server_cpu_seconds,
)
from bench.streams.targets import proc_rss_bytes

UPSTREAM_NAME = "bench"  # the upstream's name in outlast's config (OUTLAST_UPSTREAMS__BENCH__URL)
UPSTREAM_PATH = "/v1/chat/completions"
CONNECTS_IN_FLIGHT = 200  # readers connecting at once (the rest queue behind them)
SUBMITS_IN_FLIGHT = 32  # relay jobs being submitted at once
READY_TIMEOUT = 60.0  # seconds for every relay to reach the gate and every reader to connect
JOB_TIMEOUT = 3600  # the relay jobs' own timeout: longer than any measurement
SETTLE = 3.0  # seconds before an RSS sample, for the server to finish what a step started
MAX_ERRORS = 50  # error messages kept (all are counted)


class Errors:
    """Every error counted by kind; the first messages kept as they were."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.samples: list[str] = []

    def add(self, kind: str, message: str, count: int = 1) -> None:
        self.counts[kind] += count
        if len(self.samples) < MAX_ERRORS:
            self.samples.append(f"{kind}: {message}"[:300])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "by_kind": dict(self.counts), "samples": self.samples}


class SSEConn(asyncio.Protocol):
    """One HTTP/1.1 request whose answer is an event stream: records, per stamped event, the
    latency (receive time − send stamp, ns) and checks the sequence numbers (no gap, no
    duplicate); sees ``data: [DONE]`` and the end of the chunked body."""

    def __init__(self, request: bytes, errors: Errors) -> None:
        loop = asyncio.get_running_loop()
        self.request, self.errors = request, errors
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.status = 0
        self.chunked: ChunkedDecoder | None = None
        self.text = b""
        self.latency = array("q")
        self.next_seq = 0
        self.gaps = self.duplicates = 0
        self.done = False  # data: [DONE] seen
        self.ended = False  # the body ended (or we closed it ourselves)
        self.last_ns = 0
        self.first_ns: int | None = None  # the latency of event 0 (a proxy answers with it)
        self.headed: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()  # before any parsing: the receive time of what follows
        if not self.status:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end].decode("latin-1"), self.head[end + 4 :]
            lines = head.split("\r\n")
            self.status = int(lines[0].split()[1])
            if not self.headed.done():
                self.headed.set_result(None)
            if self.status != 200:
                self.errors.add("http", f"{self.request.split(b' ', 2)[1]!r} → {self.status}")
                self.close()
                return
            if "chunked" in head.lower():
                self.chunked = ChunkedDecoder()
        if self.chunked is not None:
            data = self.chunked.feed(data)
        text = self.text + data
        blocks = text.split(b"\n\n")
        self.text = blocks.pop()
        for block in blocks:
            match = STAMP.search(block)
            if match is not None:
                seq = int(match[1] or match[3])
                self.latency.append(now - int(match[2] or match[4]))
                if seq == 0:
                    self.first_ns = self.latency[-1]
                self.last_ns = now
                if seq > self.next_seq:
                    self.gaps += seq - self.next_seq
                elif seq < self.next_seq:
                    self.duplicates += 1
                    continue
                self.next_seq = seq + 1
            elif b"data: [DONE]" in block:
                self.done = True
        if self.chunked is not None and self.chunked.done:
            self.close()

    def close(self) -> None:
        self.ended = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended and self.status == 200:
            self.errors.add("cut", f"connection lost before the end of the stream ({exc!r})")
        self.ended = True
        for future in (self.headed, self.closed):
            if not future.done():
                future.set_result(None)


def http_request(
    method: str, host: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
        f"Accept-Encoding: identity\r\nCache-Control: no-cache\r\n"
    )
    head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def open_conns(
    base: str,
    requests: list[bytes],
    errors: Errors,
    note: Callable[[str], None],
    wait_head: bool = True,
) -> list[SSEConn]:
    """Connect one reader per request, at most CONNECTS_IN_FLIGHT at a time, each until its
    response head arrived (with *wait_head*; else until its request is sent: a proxy may hold
    its head back until the upstream's first event)."""
    parts = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
    conns = [SSEConn(request, errors) for request in requests]
    headed = 0

    async def connect(conn: SSEConn) -> None:
        nonlocal headed
        async with gate:
            try:
                await loop.create_connection(lambda: conn, host, port)
                if wait_head:
                    await conn.headed
            except OSError as exc:
                errors.add("connect", repr(exc))
                conn.ended = True
                conn.connection_lost(exc)
        headed += 1
        if headed % 500 == 0 or headed == len(conns):
            note(f"{headed:,}/{len(conns):,} readers connected")

    await asyncio.gather(*(connect(c) for c in conns))
    return conns


def stream_body(
    gate: str, events: int, rate: float, seconds: float, in_content: bool = False
) -> dict[str, Any]:
    """The request every stream sends, directly or through the relay: an OpenAI-style chat
    completion request, plus what the fake upstream is to do. With *in_content*, what it is to
    do goes in the message, and the stamps come back in the chunks' content: a proxy that
    passes on only the fields of the OpenAI API (LiteLLM) keeps both."""
    params = {"gate": gate, "n": events, "rate": rate, "seconds": seconds, "spread": True}
    if in_content:
        content = json.dumps({"bench": {**params, "stamp": "content"}})
        return {
            "model": "bench",
            "stream": True,
            "messages": [{"role": "user", "content": content}],
        }
    return {
        "model": "bench",
        "stream": True,
        "messages": [{"role": "user", "content": "Count."}],
        "bench": params,
    }


class Bench:
    """One load generator run: the HTTP session, the clocks, the errors and the progress file."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.upstream: str = spec["upstream"]
        self.server: str = spec.get("server", "")
        self.errors = Errors()
        self.progress_path: str | None = spec.get("progress")
        self.session: aiohttp.ClientSession | None = None
        self.gates = 0
        self.waiting = 0  # streams at the last gate waited for

    def note(self, text: str) -> None:
        if self.progress_path:
            with contextlib.suppress(OSError), open(self.progress_path, "a") as fh:
                fh.write(text + "\n")

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self.session is not None
        return self.session

    def new_gate(self, label: str) -> str:
        self.gates += 1
        return f"{label}-{self.spec.get('tag', 'x')}-{self.gates}"

    async def gate_stats(self, gate: str) -> dict[str, Any]:
        url = f"{self.upstream}/control/stats"
        async with self.http.get(url, params={"gate": gate}) as resp:
            stats: dict[str, Any] = await resp.json()
            return stats

    async def wait_gate(self, gate: str, streams: int, what: str) -> None:
        """Until *streams* requests wait at the upstream's gate (guarded by READY_TIMEOUT)."""
        limit = float(self.spec.get("ready_timeout", READY_TIMEOUT))
        deadline = time.monotonic() + limit
        last = -1
        while True:
            waiting = self.waiting = (await self.gate_stats(gate))["waiting"]
            if waiting >= streams:
                return
            if waiting != last:
                self.note(f"{waiting:,}/{streams:,} {what} at the upstream")
                last = waiting
            if time.monotonic() > deadline:
                self.errors.add(
                    "not ready",
                    f"only {waiting}/{streams} {what} reached the upstream in {limit:g}s",
                )
                return
            await asyncio.sleep(0.05)

    async def go(self, gate: str) -> int:
        t0 = time.monotonic_ns()
        async with self.http.post(f"{self.upstream}/control/go", params={"gate": gate}) as resp:
            await resp.read()
        return t0

    async def submit(self, bodies: list[dict[str, Any]]) -> list[str]:
        """One relay job per body (POST /v1/jobs); their ids (a failed submit is an error)."""
        ids: list[str] = []
        gate = asyncio.Semaphore(SUBMITS_IN_FLIGHT)

        async def one(body: dict[str, Any]) -> None:
            job = {
                "task": "relay",
                "input": {
                    "upstream": UPSTREAM_NAME,
                    "path": UPSTREAM_PATH,
                    "method": "POST",
                    "body": body,
                },
                "timeout": JOB_TIMEOUT,
            }
            async with gate:
                try:
                    async with self.http.post(f"{self.server}/v1/jobs", json=job) as resp:
                        answer = await resp.json(content_type=None)
                        if resp.status != 202:
                            self.errors.add("submit", f"{resp.status} {str(answer)[:200]}")
                            return
                        ids.append(answer["id"])
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    self.errors.add("submit", repr(exc))
            if len(ids) % 200 == 0:
                self.note(f"{len(ids):,}/{len(bodies):,} relay jobs submitted")

        await asyncio.gather(*(one(b) for b in bodies))
        return ids

    async def job_states(self, ids: list[str]) -> dict[str, Any]:
        """Final state of every job: counts by state, and events stored per job."""
        states: Counter[str] = Counter()
        stored: list[int] = []
        gate = asyncio.Semaphore(SUBMITS_IN_FLIGHT)

        async def one(job_id: str) -> None:
            async with gate:
                url = f"{self.server}/v1/jobs/{job_id}"
                try:
                    async with self.http.get(url, params={"wait": "30"}) as resp:
                        job = await resp.json(content_type=None)
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    self.errors.add("job", f"GET {job_id}: {exc!r}")
                    return
            state = str(job.get("state"))
            states[state] += 1
            result = job.get("result") or {}
            if isinstance(result, dict) and isinstance(result.get("events"), int):
                stored.append(result["events"])
            if state != "succeeded":
                self.errors.add("job", f"{job_id} {state}: {str(job.get('error'))[:200]}")

        await asyncio.gather(*(one(i) for i in ids))
        return {"states": dict(states), "events_stored": sum(stored)}

    def reader_requests(self, mode: str, ids: list[str], readers: int, body: bytes) -> list[bytes]:
        if mode == "direct":
            host = urlsplit(self.upstream).netloc
            return [http_request("POST", host, UPSTREAM_PATH, body) for _ in ids]
        if mode == "proxy":
            host, headers = urlsplit(self.server).netloc, self.spec.get("headers", {})
            return [http_request("POST", host, self.spec["path"], body, headers) for _ in ids]
        host = urlsplit(self.server).netloc
        return [
            http_request("GET", host, f"/v1/jobs/{job_id}/events")
            for job_id in ids
            for _ in range(readers)
        ]

    async def finish(self, conns: list[SSEConn], limit: float) -> None:
        """Wait until every reader's stream ended (at most *limit* s; the rest are errors)."""
        pending = [c.closed for c in conns if not c.closed.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=limit)
            if still:
                self.errors.add(
                    "timeout",
                    f"{len(still)} readers not finished {limit:.0f}s after the go",
                    len(still),
                )
        for conn in conns:
            if not conn.ended:
                conn.close()

    def meter(self) -> Callable[[], dict[str, float]]:
        """Start measuring CPU (server, upstream, load generator, the rest of the machine);
        the returned function stops and answers, as fractions of one core."""
        pids, upstream_pids = self.spec.get("pids", []), self.spec.get("upstream_pids", [])
        t0, me0, m0 = time.perf_counter(), cpu_seconds(), machine_cpu_seconds()
        s0, u0 = server_cpu_seconds(pids), server_cpu_seconds(upstream_pids)

        def stop() -> dict[str, float]:
            wall = time.perf_counter() - t0
            out = {
                "server_cpu": (server_cpu_seconds(pids) - s0) / wall,
                "upstream_cpu": (server_cpu_seconds(upstream_pids) - u0) / wall,
                "client_cpu": (cpu_seconds() - me0) / wall,
            }
            machine = (machine_cpu_seconds() - m0) / wall
            out["other_cpu"] = max(0.0, machine - sum(out.values()))
            out["wall"] = wall
            return out

        return stop

    async def run_streams(
        self,
        mode: str,
        streams: int,
        readers: int,
        events: int,
        rate: float,
        seconds: float = 0.0,
        before_go: Callable[[], Awaitable[None]] | None = None,
        on_relays: Callable[[], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        """N streams, read directly or through outlast's relay; see the module docstring."""
        gate = self.new_gate(mode)
        in_content = bool(self.spec.get("stamp_in_content"))
        body = json.dumps(stream_body(gate, events, rate, seconds, in_content)).encode()
        ids = [str(i) for i in range(streams)]
        if mode == "relay":
            self.note(f"submitting {streams:,} relay jobs")
            ids = await self.submit([json.loads(body)] * streams)
            await self.wait_gate(gate, len(ids), "relays")
            if on_relays is not None:
                await on_relays()
        self.note(f"connecting {len(ids) * readers:,} readers")
        conns = await open_conns(
            self.upstream if mode == "direct" else self.server,
            self.reader_requests(mode, ids, readers, body),
            self.errors,
            self.note,
            wait_head=mode != "proxy",
        )
        if mode in ("direct", "proxy"):
            await self.wait_gate(gate, streams, "streams")
        if before_go is not None:
            await before_go()
        stop_meter = self.meter()
        self.note(f"streaming: {streams:,} streams × {len(conns) // max(1, streams):,} readers")
        go_ns = await self.go(gate)
        # Unthrottled: allow for as little as 1,000 events/s before calling readers late.
        expected_s = seconds or (events / rate if rate > 0 else max(10.0, events * streams / 1e3))
        await self.finish(conns, self.spec.get("grace", 60.0) + 3 * expected_s)
        end_ns = max((c.last_ns for c in conns), default=go_ns)
        cpu = stop_meter()
        sent = (await self.gate_stats(gate))["sent"]
        with contextlib.suppress(aiohttp.ClientError):
            await self.http.post(f"{self.upstream}/control/forget", params={"gate": gate})
        jobs = await self.job_states(ids) if mode == "relay" else {}
        return summarize(conns, streams, readers, sent, go_ns, end_ns, rate, cpu, jobs)


def summarize(
    conns: list[SSEConn],
    streams: int,
    readers: int,
    sent: int,
    go_ns: int,
    end_ns: int,
    rate: float,
    cpu: dict[str, float],
    jobs: dict[str, Any],
) -> dict[str, Any]:
    latencies = sorted(x for c in conns for x in c.latency)
    received = len(latencies) - sum(c.duplicates for c in conns)
    expected = sent * readers
    span = max(1e-9, (end_ns - go_ns) / 1e9)
    ms = [x / 1e6 for x in latencies]
    first = sorted(c.first_ns / 1e6 for c in conns if c.first_ns is not None)
    return {
        "streams": streams,
        "readers": len(conns),
        "readers_per_stream": readers,
        "rate_per_stream": rate,
        "offered_events_per_s": streams * rate if rate > 0 else None,
        "sent": sent,
        "expected": expected,
        "received": received,
        "missing": max(0, expected - received),
        "gaps": sum(c.gaps for c in conns),
        "duplicates": sum(c.duplicates for c in conns),
        "without_done": sum(1 for c in conns if not c.done),
        "span_seconds": span,
        "events_per_s": received / span,
        "upstream_events_per_s": sent / span,
        "latency_ms": {
            "p50": percentile(ms, 50),
            "p90": percentile(ms, 90),
            "p99": percentile(ms, 99),
            "p999": percentile(ms, 99.9),
            "max": ms[-1] if ms else float("nan"),
            "mean": sum(ms) / len(ms) if ms else float("nan"),
        },
        # Event 0 of each stream apart: through a proxy it also waits for the answer's head.
        "first_event_latency_ms": {
            "p50": percentile(first, 50),
            "p99": percentile(first, 99),
            "max": first[-1] if first else float("nan"),
        },
        "jobs": jobs,
        **cpu,
    }


# ------------------------------------------------------------------------------------ ops


def rss(pids: list[int]) -> int:
    return sum(proc_rss_bytes(pid) for pid in pids)


def peak_rss(pids: list[int]) -> int:
    """VmHWM, the high-water mark of RSS, summed over *pids*."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
    return total


async def op_streams(bench: Bench) -> dict[str, Any]:
    s = bench.spec
    return await bench.run_streams(
        s["mode"],
        s["streams"],
        s.get("readers", 1),
        s.get("events", 0),
        s.get("rate", 0.0),
        s.get("seconds", 0.0),
    )


async def op_scale(bench: Bench) -> dict[str, Any]:
    s = bench.spec
    outlast, redis = s["outlast_pids"], s.get("redis_pids", [])
    relays, per_relay = s["relays"], s["readers_per_relay"]
    samples: dict[str, Any] = {}

    async def sample(name: str) -> None:
        await asyncio.sleep(SETTLE)
        samples[name] = {
            "outlast": rss(outlast),
            "redis": rss(redis),
            "at": time.monotonic(),
            "relays_at_upstream": bench.waiting,
        }
        bench.note(f"RSS {name}: {samples[name]['outlast'] / 2**20:,.1f} MiB")

    # Warm-up: code paths loaded, pools and caches grown, before the first sample.
    bench.note("warm-up relays")
    warm = await bench.run_streams("relay", s.get("warmup_relays", 50), 2, 5, 0.0)
    await sample("idle")
    flow = await bench.run_streams(
        "relay",
        relays,
        per_relay,
        s["events"],
        s["rate"],
        on_relays=lambda: sample("relays"),
        before_go=lambda: sample("readers"),
    )
    samples["after"] = {"outlast": rss(outlast), "redis": rss(redis), "at": time.monotonic()}
    idle, run, read = samples["idle"], samples["relays"], samples["readers"]
    return {
        "relays": relays,
        # Memory per relay means something only when every relay was running at the upstream.
        "relays_at_upstream": run["relays_at_upstream"],
        "readers": relays * per_relay,
        "rss": samples,
        "peak_rss": peak_rss(outlast),
        "per_relay_bytes": (run["outlast"] - idle["outlast"]) / relays,
        "per_relay_redis_bytes": (run["redis"] - idle["redis"]) / relays,
        "per_reader_bytes": (read["outlast"] - run["outlast"]) / (relays * per_relay),
        "warmup_errors": warm["missing"],
        "flow": flow,
    }


OPS = {"streams": op_streams, "scale": op_scale}


async def main_async(spec: dict[str, Any]) -> dict[str, Any]:
    bench = Bench(spec)
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=SUBMITS_IN_FLIGHT * 2)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as bench.session:
        result = await OPS[spec["op"]](bench)
    result["errors"] = bench.errors.to_json()
    return result


def main(argv: list[str]) -> None:
    spec = json.loads(argv[1])
    # 10,000 readers are 10,000 sockets: take the hard limit of open files.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    run_bounded(lambda: main_async(spec), spec.get("limit", 1800))


if __name__ == "__main__":
    main(sys.argv)

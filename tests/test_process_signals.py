"""Real server processes, real signals: what is acknowledged survives ``kill -9``; SIGTERM ends
live readers cleanly and promptly, lets writes under way finish, and exits 0."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.conftest import ServerProcess, wait_for

pytestmark = pytest.mark.slow


def _metric(server: ServerProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + ("{" + want + "}" if want else " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _read_all(url: str) -> list[object]:
    messages: list[object] = []
    offset = "-1"
    while True:
        resp = httpx.get(url, params={"offset": offset}, timeout=10)
        assert resp.status_code == 200, resp.text
        messages.extend(resp.json())
        offset = resp.headers["Stream-Next-Offset"]
        if resp.headers.get("Stream-Up-To-Date") == "true":
            return messages


def test_acknowledged_appends_survive_sigkill(server: ServerProcess) -> None:
    """Writers append until the server is killed mid-flight; after a restart every message
    that got a 204 is there, in order, at the offset the 204 announced."""
    writers = 4
    acked: dict[int, list[tuple[int, str]]] = {w: [] for w in range(writers)}
    for w in range(writers):
        r = httpx.put(
            f"{server.url}/v1/stream/durable-{w}", headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 201

    stop = threading.Event()

    def write(w: int) -> None:
        with httpx.Client(timeout=5) as client:
            n = 0
            while not stop.is_set():
                try:
                    r = client.post(
                        f"{server.url}/v1/stream/durable-{w}",
                        content=json.dumps({"w": w, "n": n}),
                        headers={"Content-Type": "application/json"},
                    )
                except httpx.TransportError:
                    return  # the server died under us: this one was never acknowledged
                if r.status_code != 204:
                    return
                acked[w].append((n, r.headers["Stream-Next-Offset"]))
                n += 1

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    # Kill while appends are in flight, once a good number were acknowledged.
    wait_for(lambda: sum(len(v) for v in acked.values()) >= 400, timeout=60)
    server.signal(signal.SIGKILL)
    server.wait_exit()
    stop.set()
    for t in threads:
        t.join(timeout=10)

    server.start()
    for w in range(writers):
        url = f"{server.url}/v1/stream/durable-{w}"
        stored = _read_all(url)
        assert len(acked[w]) > 0
        # Everything acknowledged is there, in order; at most one more (committed, not acked).
        assert stored[: len(acked[w])] == [{"w": w, "n": n} for n, _ in acked[w]]
        assert len(stored) - len(acked[w]) in (0, 1)
        # Offsets are the ones announced: reading from the offset after message n starts at n+1.
        for n, offset in acked[w][:: max(1, len(acked[w]) // 20)]:
            resp = httpx.get(url, params={"offset": offset}, timeout=5)
            assert resp.status_code == 200
            rest = resp.json()
            if n + 1 < len(stored):
                assert rest[0] == {"w": w, "n": n + 1}


def _sse_lines(resp: httpx.Response) -> Iterator[str]:
    yield from resp.iter_lines()


def test_sigterm_ends_live_readers_and_exits_zero(
    server_factory: Callable[..., ServerProcess],
) -> None:
    # Long waits on purpose: if readers end, it is because of the shutdown, not a timeout.
    server = server_factory(
        env={"OUTLAST_STREAMS__LONG_POLL_TIMEOUT": "60", "OUTLAST_SSE__KEEPALIVE": "60"}
    ).start()
    url = f"{server.url}/v1/stream/live"
    r = httpx.put(url, headers={"Content-Type": "text/plain"}, content=b"hello")
    assert r.status_code == 201
    tail = r.headers["Stream-Next-Offset"]

    ended: dict[str, float] = {}
    outcomes: dict[str, object] = {}

    def sse_reader(key: str) -> None:
        with (
            httpx.Client(timeout=httpx.Timeout(5, read=120)) as client,
            client.stream("GET", url, params={"offset": "-1", "live": "sse"}) as resp,
        ):
            lines = list(_sse_lines(resp))
        ended[key] = time.monotonic()
        outcomes[key] = lines

    def long_poll_reader(key: str) -> None:
        with httpx.Client(timeout=httpx.Timeout(5, read=120)) as client:
            resp = client.get(url, params={"offset": tail, "live": "long-poll"})
        ended[key] = time.monotonic()
        outcomes[key] = resp.status_code

    threads = [threading.Thread(target=sse_reader, args=(f"sse-{i}",)) for i in range(3)]
    threads += [threading.Thread(target=long_poll_reader, args=(f"lp-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    wait_for(lambda: _metric(server, "outlast_stream_readers", mode="sse") == 3, timeout=10)
    wait_for(lambda: _metric(server, "outlast_stream_readers", mode="long-poll") == 2, timeout=10)

    # A write under way: its body is still arriving when the signal comes.
    body_continue = threading.Event()
    append_status: list[int] = []

    def slow_body() -> Iterator[bytes]:
        yield b" first half"
        body_continue.wait(timeout=10)
        yield b" second half"

    def slow_append() -> None:
        with httpx.Client(timeout=30) as client:
            resp = client.post(url, content=slow_body(), headers={"Content-Type": "text/plain"})
            append_status.append(resp.status_code)

    writer = threading.Thread(target=slow_append)
    writer.start()
    wait_for(
        lambda: (
            _metric(
                server,
                "outlast_http_requests_in_progress",
                method="POST",
                route="/v1/stream/{name}",
            )
            == 1
        ),
        timeout=10,
    )

    signalled = time.monotonic()
    server.signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=30)
    # The rest of the body only once every reader has ended: the write under way still
    # completes, and the long-polls cannot have been answered by it (a 200 would then be a race
    # with the append, not a sign of how shutdown ends them).
    body_continue.set()
    writer.join(timeout=30)
    code = server.wait_exit(timeout=30)

    assert code == 0, server.log()
    assert append_status == [204]
    assert set(ended) == {"sse-0", "sse-1", "sse-2", "lp-0", "lp-1"}
    slowest = max(ended.values()) - signalled
    # The spec asks for < 1 s; this guard only proves the shutdown ended them (their own
    # timeouts are 60 s). The measured figure is printed for the record.
    print(f"readers ended {slowest:.3f} s after SIGTERM")
    assert slowest < 10
    for key in ("lp-0", "lp-1"):
        assert outcomes[key] == 204  # a clean "nothing new": the client re-polls elsewhere
    for key in ("sse-0", "sse-1", "sse-2"):
        lines = outcomes[key]
        assert isinstance(lines, list)
        assert "data:hello" in lines  # got the data, then the stream simply ended
        assert any(line.startswith("data:{") and "streamNextOffset" in line for line in lines)

    # After a restart the write that was under way is there.
    server.start()
    resp = httpx.get(url, params={"offset": "-1"})
    assert resp.text == "hello first half second half"

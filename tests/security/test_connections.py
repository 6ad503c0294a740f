"""Hostile connections against a real uvicorn: huge or numerous headers (431), headers that
never end (memory stays bounded), headers sent slowly (closed), idle keep-alive connections
(closed), too many connections (refused), and readers that stop reading (SIGTERM still exits
at once). Raw sockets on 127.0.0.1; see docs/operations.md, "Security model"."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.conftest import ServerProcess, wait_for

MiB = 1 << 20
# A hostile header stream sends this much at most; far beyond every limit.
HOSTILE_BYTES = 96 * MiB


@pytest.fixture
def backend() -> str:
    return "sqlite"


def _connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    return sock


def _response(sock: socket.socket) -> bytes:
    """What the server sent until it closed the connection ('' if it dropped it)."""
    out = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            out += chunk
    return out


def _request_head(server: ServerProcess, path: str = "/healthz") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n".encode()


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_oversized_header_is_431(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory().start()
    with _connect(server) as sock:
        sock.sendall(_request_head(server) + b"X-Big: " + b"a" * (128 * 1024) + b"\r\n\r\n")
        answer = _response(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b'"request_header_fields_too_large"' in answer
    # Within the limit: served.
    resp = httpx.get(f"{server.url}/healthz", headers={"X-Big": "a" * (32 * 1024)})
    assert resp.status_code == 200


def test_too_many_headers_is_431(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(env={"OUTLAST_SERVER__MAX_HEADER_COUNT": "20"}).start()
    with _connect(server) as sock:
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(30))
        sock.sendall(_request_head(server) + many + b"\r\n")
        answer = _response(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    headers = {f"X-H{i}": "v" for i in range(15)}
    assert httpx.get(f"{server.url}/healthz", headers=headers).status_code == 200


def test_default_header_count_limit_is_100(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory().start()
    with _connect(server) as sock:
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
        sock.sendall(_request_head(server) + many + b"\r\n")
        answer = _response(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


def _endless_headers(server: ServerProcess, outcome: dict[int, str], key: int) -> None:
    """One connection that streams a header line that never ends, until the server stops it."""
    chunk = b"a" * 65536
    with _connect(server) as sock:
        try:
            sock.sendall(_request_head(server) + b"X-Endless: ")
            sent = 0
            while sent < HOSTILE_BYTES:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        else:
            outcome[key] = "all sent"
            return
        try:
            answer = _response(sock)
        except OSError:
            answer = b""
        outcome[key] = "431" if answer.startswith(b"HTTP/1.1 431 ") else "dropped"


def test_endless_headers_keep_memory_bounded(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory().start()
    assert server.proc is not None
    before = _rss(server.proc.pid)
    outcome: dict[int, str] = {}
    threads = [
        threading.Thread(target=_endless_headers, args=(server, outcome, i)) for i in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    after = _rss(server.proc.pid)
    print(f"RSS before {before / MiB:.1f} MiB, after {after / MiB:.1f} MiB; {outcome}")
    assert sorted(outcome) == [0, 1, 2]
    assert set(outcome.values()) <= {"431", "dropped"}, outcome
    assert after - before < 32 * MiB
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_slow_headers_are_cut_off(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(env={"OUTLAST_SERVER__HEADER_TIMEOUT": "0.5"}).start()
    with _connect(server) as partial, _connect(server) as silent:
        # Half a request, then nothing: the connection ends (408) instead of waiting forever.
        partial.sendall(_request_head(server) + b"X-Slow: 1\r\n")
        answer = _response(partial)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        # Nothing at all: closed too.
        assert _response(silent) == b""


def test_idle_keep_alive_connections_are_closed(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(env={"OUTLAST_SERVER__KEEP_ALIVE_TIMEOUT": "0.3"}).start()
    with _connect(server) as sock:
        sock.sendall(_request_head(server) + b"\r\n")
        answer = _response(sock)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


def _open_keep_alive(server: ServerProcess) -> socket.socket:
    """A connection that made one request and stays open (the server has counted it)."""

    def served() -> socket.socket | None:
        sock = _connect(server)
        sock.sendall(_request_head(server) + b"\r\n")
        with contextlib.suppress(ConnectionResetError):
            if sock.recv(65536).startswith(b"HTTP/1.1 200 "):
                return sock
        # Refused: a connection of an earlier request was still being closed.
        sock.close()
        return None

    sock: socket.socket = wait_for(served, timeout=10)
    return sock


def test_connection_cap(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(
        env={"OUTLAST_SERVER__MAX_CONNECTIONS": "4", "OUTLAST_SERVER__KEEP_ALIVE_TIMEOUT": "60"}
    ).start()
    held = [_open_keep_alive(server) for _ in range(4)]
    try:
        # One more is refused as soon as it is accepted, before it sends anything.
        with _connect(server) as extra:
            answer = _response(extra)
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
        assert b"retry-after: 1" in answer and b'"too_many_connections"' in answer
        held.pop().close()

        def served() -> bool:
            try:
                return httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(served, timeout=10)
    finally:
        for sock in held:
            sock.close()


@pytest.fixture
def stalled_readers() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    yield socks
    for sock in socks:
        sock.close()


def _readers(server: ServerProcess) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith('outlast_stream_readers{mode="sse"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.slow
def test_sigterm_is_not_held_by_readers_that_stop_reading(
    server_factory: Callable[..., ServerProcess], stalled_readers: list[socket.socket]
) -> None:
    """Readers that connect to a big stream and never read (a frozen tab, a killed PHP worker
    whose socket stays open): SIGTERM ends them by aborting writes that do not drain, and the
    process exits 0 without waiting out the request drain timeout."""
    server = server_factory(env={"OUTLAST_SSE__KEEPALIVE": "60"}).start()
    url = f"{server.url}/v1/stream/big"
    assert httpx.put(url, headers={"Content-Type": "text/plain"}).status_code == 201
    for _ in range(6):
        resp = httpx.post(url, headers={"Content-Type": "text/plain"}, content=b"z" * MiB)
        assert resp.status_code == 204
    for _ in range(20):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(_request_head(server, "/v1/stream/big?offset=-1&live=sse") + b"\r\n")
        stalled_readers.append(sock)
    wait_for(lambda: _readers(server) == 20, timeout=30)
    signalled = time.monotonic()
    server.signal(signal.SIGTERM)
    # uvicorn would wait 10 s for these connections before giving up on them: the server must
    # be gone well before that.
    assert server.wait_exit(timeout=8) == 0
    print(f"exited {time.monotonic() - signalled:.2f} s after SIGTERM")
    assert "timeout graceful shutdown exceeded" not in server.log()

"""Storage and file descriptors per unit of work, for the sizing sections of docs/deploy.md,
docs/operations.md and docs/redis.md.

    python -m bench.sizing [--store sqlite|redis] [--jobs 2000] [--relays 500] [--appends 5000]
                           [--readers 200]

On SQLite (the default), each measurement starts ``outlast serve`` on a fresh SQLite file, does N
units of one kind, stops it with SIGTERM (a clean exit folds the WAL back into the file) and
divides the growth of the file by N. On Redis, it starts a private ``redis-server`` (no
persistence), and divides the growth of its ``used_memory`` (``INFO memory``) over the N units,
measured with outlast still running, by N; less what its connections' buffers use
(``mem_clients_normal``), which is not what the units keep and varies with the connections open
at each look.

Kinds: a small Python job (``count`` of examples/myapp.py with ``n=1``: one output, its
result, its state messages), a relay job of 36 events (35 OpenAI-style chunks of about 200 bytes
and ``[DONE]``, from bench.relay.upstream), and a 1 KiB append to one stream. File descriptors
(SQLite only): ``/proc/<pid>/fd`` of the server idle, then with N SSE readers connected.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import redis
from bench.streams.targets import kill_group, start_redis

ROOT = Path(__file__).resolve().parent.parent
# Set by --store redis: the private redis-server's database the measurements use.
REDIS_URL = ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, db: Path | str, env: dict[str, str]) -> None:
        self.db = db
        store = db if isinstance(db, str) else f"sqlite:///{db}"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base = {k: v for k, v in os.environ.items() if not k.startswith("OUTLAST_")}
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "outlast", "serve", "--port", str(self.port)),
                *("--store", store, "--app", "examples.myapp:app"),
                *("--log-format", "json"),
            ],
            cwd=ROOT,
            env={**base, "OUTLAST_SERVER__ACCESS_LOG": "false", **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("outlast did not start")
            time.sleep(0.05)

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def _size(db: Path) -> int:
    """The store's bytes on disk: the file and whatever WAL is left (none after a clean exit)."""
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))


async def _jobs(client: httpx.AsyncClient, bodies: list[dict[str, Any]]) -> None:
    ids = []
    for body in bodies:
        resp = await client.post("/v1/jobs", json=body)
        resp.raise_for_status()
        ids.append(resp.json()["id"])
    for job_id in ids:
        job = (await client.get(f"/v1/jobs/{job_id}", params={"wait": 60})).json()
        assert job["state"] == "succeeded", job


def _used_memory(url: str) -> int:
    """Redis's memory in use, less its clients' buffers."""
    with redis.Redis.from_url(url) as client:
        info = client.info("memory")
    return int(info["used_memory"]) - int(info["mem_clients_normal"])


def measure(
    folder: Path,
    name: str,
    count: int,
    work: Callable[[httpx.AsyncClient], Awaitable[None]],
    env: dict[str, str],
) -> float:
    if REDIS_URL:
        return measure_redis(count, work, env)
    db = folder / f"{name}.db"
    Server(db, env).stop()  # the empty store: its schema
    empty = _size(db)
    server = Server(db, env)

    async def run() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            await work(client)

    asyncio.run(run())
    server.stop()
    return (_size(db) - empty) / count


def measure_redis(
    count: int, work: Callable[[httpx.AsyncClient], Awaitable[None]], env: dict[str, str]
) -> float:
    with redis.Redis.from_url(REDIS_URL) as client:
        client.flushdb()
    server = Server(REDIS_URL, env)
    before = _used_memory(REDIS_URL)

    async def run() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            await work(client)

    try:
        asyncio.run(run())
        after = _used_memory(REDIS_URL)
    finally:
        server.stop()
    return (after - before) / count


async def _readers(url: str, n: int, connected: asyncio.Event) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=None, limits=httpx.Limits()) as client:
        await client.put("/v1/stream/fds", headers={"Content-Type": "application/json"})
        started = 0

        async def follow() -> None:
            nonlocal started
            async with client.stream("GET", "/v1/stream/fds?offset=-1&live=sse") as resp:
                started += 1
                if started == n:
                    connected.set()
                async for _ in resp.aiter_bytes():
                    pass

        tasks = [asyncio.ensure_future(follow()) for _ in range(n)]
        await connected.wait()
        await asyncio.sleep(3600)  # cancelled by the caller once counted
        for task in tasks:
            task.cancel()


def measure_fds(folder: Path, readers: int) -> tuple[int, float]:
    server = Server(folder / "fds.db", {"OUTLAST_STREAMS__MAX_READERS_PER_STREAM": "100000"})
    idle = server.fds()

    async def run() -> int:
        connected = asyncio.Event()
        task = asyncio.ensure_future(_readers(server.url, readers, connected))
        await connected.wait()
        await asyncio.sleep(0.5)  # a measurement, not a test: let the server settle
        counted = server.fds()
        task.cancel()
        return counted

    busy = asyncio.run(run())
    server.stop()
    return idle, (busy - idle) / readers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--relays", type=int, default=500)
    parser.add_argument("--appends", type=int, default=5000)
    parser.add_argument("--readers", type=int, default=200)
    parser.add_argument("--store", choices=("sqlite", "redis"), default="sqlite")
    args = parser.parse_args()
    if args.store == "redis":
        workdir = Path(tempfile.mkdtemp(prefix="outlast-sizing-redis-"))
        proc, port = start_redis(workdir)
        global REDIS_URL
        REDIS_URL = f"redis://127.0.0.1:{port}/0"
        try:
            _main(args)
        finally:
            kill_group(proc)
            shutil.rmtree(workdir, ignore_errors=True)
    else:
        _main(args)


def _main(args: argparse.Namespace) -> None:
    big = {"OUTLAST_QUEUES__DEFAULT__CAPACITY": "100000"}
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        small = [{"task": "count", "input": {"n": 1}}] * args.jobs
        out["bytes_per_small_job"] = measure(
            folder, "jobs", args.jobs, lambda c: _jobs(c, small), big
        )

        upstream_port = _free_port()
        upstream = subprocess.Popen(
            [sys.executable, "-m", "bench.relay.upstream", "--port", str(upstream_port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", upstream_port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            relay_env = {
                **big,
                "OUTLAST_UPSTREAMS__BENCH__URL": f"http://127.0.0.1:{upstream_port}",
                "OUTLAST_UPSTREAMS__BENCH__ALLOW_PRIVATE": "true",
            }
            relay = {
                "task": "relay",
                "input": {
                    "upstream": "bench",
                    "path": "/v1/chat/completions",
                    "body": {"stream": True, "bench": {"n": 35}},
                },
            }
            out["bytes_per_relay_job_36_events"] = measure(
                folder, "relays", args.relays, lambda c: _jobs(c, [relay] * args.relays), relay_env
            )
        finally:
            upstream.terminate()
            upstream.wait(timeout=10)

        payload = b"x" * 1024

        async def appends(client: httpx.AsyncClient) -> None:
            headers = {"Content-Type": "application/octet-stream"}
            (await client.put("/v1/stream/sizing", headers=headers)).raise_for_status()
            for _ in range(args.appends):
                (
                    await client.post("/v1/stream/sizing", headers=headers, content=payload)
                ).raise_for_status()

        out["bytes_per_1kib_append"] = measure(folder, "appends", args.appends, appends, {})
        if not REDIS_URL:
            out["fds_idle"], out["fds_per_sse_reader"] = measure_fds(folder, args.readers)
    if REDIS_URL:
        with redis.Redis.from_url(REDIS_URL) as client:
            out["redis"] = client.info("server")["redis_version"]
    else:
        out["sqlite"] = __import__("sqlite3").sqlite_version
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

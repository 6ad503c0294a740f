"""Cross-process wake-up latency of ``outlast serve --workers 2``.

A reader long-polls a stream through one process; a writer appends through the other, one
append every ``--interval`` seconds. Each figure is the time from the writer's acknowledgement
(the append committed) to the reader's response carrying it, as seen by one event loop that
runs both clients; the process that answers each connection is told by ``/readyz`` (its pid).

    python -m bench.streams.wake [--store sqlite|redis] [--appends 1000] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import httpx
from bench.streams import targets


async def _client_for_each_process(base: str, count: int) -> list[httpx.AsyncClient]:
    """One-connection clients, one per process (new connections until each pid answered)."""
    found: dict[int, httpx.AsyncClient] = {}
    spare: list[httpx.AsyncClient] = []
    for _ in range(200):
        client = httpx.AsyncClient(limits=httpx.Limits(max_connections=1), timeout=30)
        pid = (await client.get(f"{base}/readyz")).json()["pid"]
        if pid in found:
            spare.append(client)
        else:
            found[pid] = client
        if len(found) == count:
            break
    for client in spare:
        await client.aclose()
    if len(found) < count:
        raise SystemExit(f"only {len(found)} processes answered")
    return list(found.values())


async def measure(base: str, appends: int, interval: float) -> list[float]:
    reader, writer = await _client_for_each_process(base, 2)
    url = f"{base}/v1/stream/wake-bench"
    await writer.put(url, headers={"Content-Type": "text/plain"})
    acked: dict[str, float] = {}
    seen: dict[str, float] = {}
    offset = (await reader.get(url, params={"offset": "-1"})).headers["Stream-Next-Offset"]

    async def follow() -> None:
        nonlocal offset
        while len(seen) < appends:
            resp = await reader.get(url, params={"offset": offset, "live": "long-poll"})
            now = time.perf_counter()
            if resp.status_code == 200:
                for item in resp.text.split("|")[:-1]:
                    seen[item] = now
            offset = resp.headers["Stream-Next-Offset"]

    following = asyncio.create_task(follow())
    for i in range(appends):
        resp = await writer.post(url, content=f"{i}|", headers={"Content-Type": "text/plain"})
        acked[str(i)] = time.perf_counter()
        assert resp.status_code == 204, resp.text
        await asyncio.sleep(interval)
    await asyncio.wait_for(following, 30)
    await reader.aclose()
    await writer.aclose()
    return [(seen[k] - acked[k]) * 1000 for k in acked]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser("bench.streams.wake", description=__doc__)
    p.add_argument("--store", choices=["sqlite", "redis"], default="sqlite")
    p.add_argument("--appends", type=int, default=1000)
    p.add_argument("--interval", type=float, default=0.01, help="seconds between appends")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    spec = targets.specs(workers=args.workers)[f"outlast-{args.store}-workers"]
    server = targets.start(spec)
    try:
        delays = asyncio.run(measure(server.base, args.appends, args.interval))
    finally:
        targets.stop(server)
    delays.sort()
    q = statistics.quantiles(delays, n=100)
    print(
        f"{spec.label}: {len(delays)} appends, ack → reader on the other process: "
        f"p50 {q[49]:.2f} ms, p99 {q[98]:.2f} ms, max {delays[-1]:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

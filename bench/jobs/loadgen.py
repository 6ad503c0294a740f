"""The jobs benchmark's load generator: one process per operation, run by ``workloads.py``.

    python bench/jobs/loadgen.py '{"op": "enqueue", "client": "celery", "broker_url": ..., ...}'

It prints one JSON line, the result. Operations:

- ``enqueue``  closed loop: ``producers`` producers enqueue no-op jobs as fast as they can for
               ``warmup`` + ``seconds``; enqueue/s over the last ``seconds``. With ``batch``
               above 1, each call enqueues that many jobs at once (the target's batch form).
- ``fill``     enqueue ``jobs`` jobs of ``task`` as fast as possible (untimed set-up of a drain).
- ``drain``    poll what is left every ``interval`` seconds until nothing is (or ``cap`` seconds
               passed); jobs/s between the first sample that shows progress and the last one.
- ``probe``    enqueue a few ``mark`` jobs and wait until they ran: the worker is up and warm.
- ``open``     open loop: ``rate`` ``mark`` jobs a second on an absolute schedule for ``seconds``;
               each job's start time (written by the task, see ``marks.py``) minus the time just
               before its enqueue call is its enqueue→start latency.

Over each timed window it measures its own CPU, the target's (the process trees of the given
``roots``: the workers and the Redis server) and the whole machine's, as the streams benchmark does.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import redis.asyncio
from bench.jobs import marks
from bench.jobs.clients import CLIENTS, Client
from bench.streams.loadgen import (
    cpu_seconds,
    machine_cpu_seconds,
    percentile,
    run_bounded,
    server_cpu_seconds,
)
from bench.streams.targets import process_tree

MAX_ERROR_SAMPLES = 5
PROBE_JOBS = 20
NOT_READY_LIMIT = 60.0  # seconds a drain waits for the target to answer or to start working


class Meter:
    """CPU of the target, of this process and of the rest of the machine over a window."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self.pids: list[int] = []

    def start(self) -> None:
        # The trees are walked when the window opens: a worker may fork its children late.
        self.pids = [pid for root in self.roots for pid in process_tree(root)]
        self.t0 = time.perf_counter()
        self.s0, self.c0 = server_cpu_seconds(self.pids), cpu_seconds()
        self.m0 = machine_cpu_seconds()

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        server = (server_cpu_seconds(self.pids) - self.s0) / wall
        client = (cpu_seconds() - self.c0) / wall
        machine = (machine_cpu_seconds() - self.m0) / wall
        return {
            "server_cpu": server,
            "client_cpu": client,
            "other_cpu": max(0.0, machine - server - client),
        }


class Producers:
    """Closed-loop producers: asyncio tasks for async clients, threads for sync ones."""

    def __init__(
        self, client: Client, task: str, count: int, budget: int | None, batch: int = 1
    ) -> None:
        self.client, self.task, self.count, self.batch = client, task, count, batch
        self.tickets = itertools.count()
        self.budget = budget
        self.stop = threading.Event()
        self.done = 0
        self.errors = 0
        self.samples: list[str] = []
        self.recording = False
        self.latencies: list[float] = []
        self._lock = threading.Lock()

    def _more(self) -> bool:
        if self.stop.is_set():
            return False
        return self.budget is None or next(self.tickets) < self.budget

    def _record(self, started: float, exc: BaseException | None) -> None:
        with self._lock:
            if exc is None:
                self.done += self.batch
                if self.recording:
                    self.latencies.append((time.perf_counter() - started) * 1000)
            else:
                self.errors += 1
                if len(self.samples) < MAX_ERROR_SAMPLES:
                    self.samples.append(f"{type(exc).__name__}: {exc}"[:300])

    def _run_sync(self) -> None:
        while self._more():
            started = time.perf_counter()
            try:
                if self.batch > 1:
                    self.client.enqueue_batch_sync(self.task, self.batch)
                else:
                    self.client.enqueue_sync(self.task, {})
            except Exception as exc:
                self._record(started, exc)
            else:
                self._record(started, None)

    async def _run_async(self) -> None:
        while self._more():
            started = time.perf_counter()
            try:
                if self.batch > 1:
                    await self.client.enqueue_batch(self.task, self.batch)
                else:
                    await self.client.enqueue(self.task, {})
            except Exception as exc:
                self._record(started, exc)
            else:
                self._record(started, None)

    def run(self) -> Awaitable[Any]:
        if self.client.sync:
            loop = asyncio.get_running_loop()
            return asyncio.gather(
                *(loop.run_in_executor(None, self._run_sync) for _ in range(self.count))
            )
        return asyncio.gather(*(self._run_async() for _ in range(self.count)))


# ------------------------------------------------------------------------------------ ops


async def enqueue(client: Client, spec: dict[str, Any]) -> dict[str, Any]:
    batch = spec.get("batch", 1)
    producers = Producers(client, "noop", spec["producers"], None, batch)
    meter = Meter(spec["roots"])
    running = asyncio.ensure_future(producers.run())
    try:
        await asyncio.sleep(spec["warmup"])
        meter.start()
        n0, t0 = producers.done, time.perf_counter()
        producers.recording = True
        await asyncio.sleep(spec["seconds"])
        producers.recording = False
        n1, t1 = producers.done, time.perf_counter()
        cpu = meter.stop()
    finally:
        producers.stop.set()
        await running
    lat = sorted(producers.latencies)
    return {
        "jobs": n1 - n0,
        "seconds": t1 - t0,
        "enqueue_per_s": (n1 - n0) / (t1 - t0),
        "enqueued": producers.done,
        "producers": spec["producers"],
        "batch": batch,
        "call_ms": {"p50": percentile(lat, 50), "p99": percentile(lat, 99)},
        "errors": producers.errors,
        "error_samples": producers.samples,
        **cpu,
    }


async def fill(client: Client, spec: dict[str, Any]) -> dict[str, Any]:
    producers = Producers(client, spec["task"], spec["producers"], spec["jobs"])
    started = time.perf_counter()
    await producers.run()
    seconds = time.perf_counter() - started
    if producers.errors:
        raise RuntimeError(f"{producers.errors} enqueues failed: {producers.samples}")
    return {"jobs": producers.done, "seconds": seconds, "enqueue_per_s": producers.done / seconds}


def _touch(path: str) -> None:
    Path(path).touch()


def _read_roots(path: str, default: list[int]) -> list[int]:
    try:
        return list(json.loads(Path(path).read_text()))
    except FileNotFoundError:
        return default


async def drain(client: Client, spec: dict[str, Any]) -> dict[str, Any]:
    expected, jobs, cap, interval = spec["expected"], spec["jobs"], spec["cap"], spec["interval"]
    # The harness starts the workers once this process is ready to watch (the file below), and
    # then writes down their process ids for the CPU accounting.
    _touch(spec["ready_file"])
    meter = Meter(spec["roots"])
    began = time.perf_counter()
    first: tuple[float, int] | None = None
    samples = 0
    while True:
        before = time.perf_counter()
        left = await client.remaining(expected)
        now = (before + time.perf_counter()) / 2  # the answer is from some time in between
        samples += 1
        if left is not None and first is None and left < jobs:
            if left == 0:
                raise RuntimeError(
                    f"all {jobs} jobs ran before the first sample showed progress: "
                    "use more jobs (--jobs)"
                )
            first = (now, left)
            meter.roots = _read_roots(spec["roots_file"], meter.roots)
            meter.start()
        elif first is not None and (left == 0 or now - first[0] >= cap):
            if left is None:
                raise RuntimeError("the target stopped answering during the drain")
            cpu = meter.stop()
            seconds = now - first[0]
            return {
                "jobs": jobs,
                "jobs_measured": first[1] - left,
                "seconds": seconds,
                "jobs_per_s": (first[1] - left) / seconds,
                "left_at_start": first[1],
                "left_at_end": left,
                "partial": left > 0,
                "startup_seconds": first[0] - began,
                "samples": samples,
                **cpu,
            }
        elif first is None and now - began > NOT_READY_LIMIT:
            raise RuntimeError(f"no job finished within {NOT_READY_LIMIT:.0f} s (left: {left})")
        await asyncio.sleep(interval)


def marks_redis(spec: dict[str, Any]) -> Any:
    """The marks' own Redis db (an async context manager that closes the client)."""
    return redis.asyncio.Redis.from_url(spec["marks_url"])


async def _call(client: Client, task: str, kwargs: dict[str, Any]) -> None:
    if client.sync:
        await asyncio.get_running_loop().run_in_executor(None, client.enqueue_sync, task, kwargs)
    else:
        await client.enqueue(task, kwargs)


async def _wait_until_done(client: Client, expected: int, timeout: float) -> None:
    # Polling: the state is in another process's Redis or server, no event reaches us here.
    async with asyncio.timeout(timeout):
        while (await client.remaining(expected)) != 0:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def probe(client: Client, spec: dict[str, Any]) -> dict[str, Any]:
    """The worker is up when a few jobs have run; `mark` warms the task's Redis connection."""
    started = time.perf_counter()
    await asyncio.gather(
        *(_call(client, "mark", {"seq": -1 - i, "sent": time.time()}) for i in range(PROBE_JOBS))
    )
    try:
        await _wait_until_done(client, spec["expected"] + PROBE_JOBS, NOT_READY_LIMIT)
    except TimeoutError:
        raise RuntimeError(f"probe jobs did not run within {NOT_READY_LIMIT:.0f} s") from None
    async with marks_redis(spec) as mredis:
        await mredis.delete(spec["marks_key"])
    return {"enqueued": PROBE_JOBS, "seconds": time.perf_counter() - started}


async def open_loop(client: Client, spec: dict[str, Any]) -> dict[str, Any]:
    rate, seconds = spec["rate"], spec["seconds"]
    count = round(rate * seconds)
    key = spec["marks_key"]
    errors: list[str] = []
    failed = 0
    late = 0

    async def one(seq: int) -> None:
        nonlocal failed
        # `sent` is read in the thread (or task) that makes the call, right before it.
        try:
            if client.sync:

                def call() -> None:
                    client.enqueue_sync("mark", {"seq": seq, "sent": time.time()})

                await asyncio.get_running_loop().run_in_executor(None, call)
            else:
                await client.enqueue("mark", {"seq": seq, "sent": time.time()})
        except Exception as exc:
            failed += 1
            if len(errors) < MAX_ERROR_SAMPLES:
                errors.append(f"{type(exc).__name__}: {exc}"[:300])

    meter = Meter(spec["roots"])
    meter.start()
    pending: list[asyncio.Task[None]] = []
    start = time.perf_counter() + 0.05
    for seq in range(count):
        due = start + seq / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif -delay > 1 / rate:
            late += 1  # a whole interval behind the schedule
        pending.append(asyncio.create_task(one(seq)))
    await asyncio.gather(*pending)
    producing = time.perf_counter() - start
    cpu = meter.stop()
    # Wait for the jobs to start: at most `wait` seconds after the last enqueue.
    deadline = time.perf_counter() + spec["wait"]
    async with marks_redis(spec) as mredis:
        while time.perf_counter() < deadline and await mredis.llen(key) < count - failed:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        raw = await mredis.lrange(key, 0, -1)
        await mredis.delete(key)
    latencies: list[float] = []
    seen: set[int] = set()
    duplicates = 0
    for line in raw:
        seq_s, sent_s, start_s = line.decode().split()
        seq = int(seq_s)
        if seq < 0:
            continue
        if seq in seen:
            duplicates += 1
            continue
        seen.add(seq)
        latencies.append((float(start_s) - float(sent_s)) * 1000)
    latencies.sort()
    return {
        "sent": count,
        "rate": rate,
        "seconds": producing,
        "enqueued": count,
        "started": len(seen),
        "missing": count - failed - len(seen),
        "duplicates": duplicates,
        "enqueue_errors": failed,
        "error_samples": errors,
        "producer_late": late,
        "latency_ms": {f"p{q}": percentile(latencies, q) for q in (50, 90, 99)}
        | {"max": max(latencies, default=float("nan"))},
        **cpu,
    }


OPS: dict[str, Callable[[Client, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "enqueue": enqueue,
    "fill": fill,
    "drain": drain,
    "probe": probe,
    "open": open_loop,
}


async def main_async(spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    # Sync clients run in threads: one per producer (the default pool has cores + 4 threads).
    loop.set_default_executor(ThreadPoolExecutor(max(spec.get("producers", 16), 16) + 4))
    client = CLIENTS[spec["client"]](spec)
    await client.open()
    try:
        async with asyncio.timeout(spec.get("limit", 600)):
            return await OPS[spec["op"]](client, spec)
    finally:
        await client.close()


def main(argv: list[str]) -> None:
    spec = json.loads(argv[1])
    # The tasks modules read where Redis is from the environment when they are imported.
    os.environ[marks.BROKER_ENV] = spec["broker_url"]
    os.environ[marks.URL_ENV] = spec["marks_url"]
    os.environ[marks.KEY_ENV] = spec["marks_key"]
    run_bounded(lambda: main_async(spec), None)  # main_async bounds the operation


if __name__ == "__main__":
    main(sys.argv)

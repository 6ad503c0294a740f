"""Completion webhook benchmark: how fast events reach a receiver after their jobs end.

    python -m bench.webhooks [--runs 3] [--jobs 1000] [--rate 50] [--seconds 6]
                             [--stores sqlite,redis] [--out docs/benchmarks.md|none]

For each store and run it starts ``outlast serve`` (a private redis-server for Redis) with a
receiver on 127.0.0.1 in this process (uvicorn, answering 204 at once), then measures:

- *burst*: ``--jobs`` jobs with a callback, submitted one by one, all ending at the same instant
  (the task sleeps until a given time): deliveries/s from that instant to the last event
  received, and the latency of each event (job end → receiver) p50/p99;
- *steady*: jobs ending one by one, ``--rate`` per second for ``--seconds``: latency p50/p99
  (the docs' target: p99 ≤ 50 ms with a loopback receiver).

A job's end is the event's ``timestamp`` (when the store committed the terminal state); the
receiver notes the time a request arrives. One machine, one clock. Medians of the runs go into
docs/benchmarks.md, the raw figures into bench/results/webhooks-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/webhooks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx
import uvicorn
from bench.streams.targets import HOST, REPO, clean_env, free_port, kill_group, spawn, start_redis

SECRET = "whsec_" + base64.b64encode(b"outlast webhook benchmark secret").decode()
START_TIMEOUT = 30.0
DELIVERY_TIMEOUT = 120.0


class Receiver:
    """An ASGI receiver on its own thread and loop: notes when each event arrives."""

    def __init__(self) -> None:
        self.port = free_port()
        self.arrivals: list[tuple[float, bytes]] = []
        config = uvicorn.Config(
            self.app,
            host=HOST,
            port=self.port,
            log_level="warning",
            access_log=False,
            interface="asgi3",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        arrived = time.time()
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.arrivals.append((arrived, body))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def start(self) -> Receiver:
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the receiver did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def latencies(self) -> list[float]:
        out = []
        for arrived, body in self.arrivals:
            ended = dt.datetime.fromisoformat(json.loads(body)["timestamp"]).timestamp()
            out.append(arrived - ended)
        return out


class Outlast:
    """``outlast serve`` on one store, in a temp dir of its own."""

    def __init__(self, store: str, receiver: Receiver, concurrency: int) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"outlast-bench-webhooks-{store}-"))
        self.redis = None
        url = f"sqlite:///{self.workdir}/outlast.db"
        if store == "redis":
            self.redis, redis_port = start_redis(self.workdir)
            url = f"redis://{HOST}:{redis_port}/0"
        self.port = free_port()
        self.argv = [
            sys.executable,
            "-m",
            "outlast",
            "serve",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--store",
            url,
            "--app",
            "bench.webhooks.tasks:app",
        ]
        env = clean_env(
            {
                "PYTHONPATH": str(REPO),
                "OUTLAST_SERVER__ACCESS_LOG": "false",
                "OUTLAST_QUEUES__DEFAULT__CONCURRENCY": str(concurrency),
                "OUTLAST_QUEUES__DEFAULT__CAPACITY": str(max(1000, concurrency * 2)),
                "OUTLAST_WEBHOOKS__SECRET": SECRET,
                "OUTLAST_WEBHOOKS__ALLOWED_HOSTS": f'["{HOST}"]',
                "OUTLAST_WEBHOOKS__ALLOW_PRIVATE": "true",
            }
        )
        self.proc = spawn(self.argv, self.workdir, self.workdir / "server.log", env, cwd=REPO)
        self.url = f"http://{HOST}:{self.port}"
        self.callback = f"http://{HOST}:{receiver.port}/hook"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError((self.workdir / "server.log").read_text())
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("outlast did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        kill_group(self.proc)
        if self.redis is not None:
            kill_group(self.redis)
        shutil.rmtree(self.workdir, ignore_errors=True)


def machine_info() -> dict[str, Any]:
    import platform
    import subprocess

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    summary = (
        f"{os.cpu_count()} cores ({model}), Linux {platform.release()}; Python "
        f"{platform.python_version()}; {redis.stdout.strip().split(' sha=')[0]}. Load average "
        f"{load} at the start (this machine is shared with other work)."
    )
    return {"summary": summary}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _wait_for(receiver: Receiver, count: int) -> None:
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while len(receiver.arrivals) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{len(receiver.arrivals)} of {count} events after {DELIVERY_TIMEOUT}s"
            )
        time.sleep(0.05)


async def _submit_all(url: str, bodies: list[dict[str, Any]]) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        sem = asyncio.Semaphore(32)

        async def one(body: dict[str, Any]) -> None:
            async with sem:
                resp = await client.post(f"{url}/v1/jobs", json=body)
                resp.raise_for_status()

        await asyncio.gather(*(one(b) for b in bodies))


def burst(server: Outlast, receiver: Receiver, jobs: int) -> dict[str, Any]:
    """*jobs* jobs that all end at one instant: deliveries/s and latency."""
    receiver.arrivals.clear()
    at = time.time() + 5.0 + jobs * 0.03  # after every submission is in, on a busy machine
    body = {"task": "end_at", "input": {"at": at}, "callback": server.callback}
    submitting = time.monotonic()
    asyncio.run(_submit_all(server.url, [body] * jobs))
    if time.time() >= at:
        took = time.monotonic() - submitting
        raise RuntimeError(f"the submissions took {took:.1f} s, longer than planned: no burst")
    _wait_for(receiver, jobs)
    latencies = receiver.latencies()
    last = max(arrived for arrived, _ in receiver.arrivals)
    first_end = min(a - lat for (a, _), lat in zip(receiver.arrivals, latencies, strict=True))
    return {
        "events": jobs,
        "deliveries_per_s": jobs / (last - first_end),
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000,
    }


def steady(server: Outlast, receiver: Receiver, rate: float, seconds: float) -> dict[str, Any]:
    """Jobs ending one by one, *rate* per second: latency."""
    receiver.arrivals.clear()
    count = int(rate * seconds)
    body = {"task": "end_at", "input": {"at": 0}, "callback": server.callback}
    started = time.monotonic()
    with httpx.Client(timeout=30) as client:
        for n in range(count):
            time.sleep(max(0.0, started + n / rate - time.monotonic()))
            client.post(f"{server.url}/v1/jobs", json=body).raise_for_status()
    _wait_for(receiver, count)
    latencies = receiver.latencies()
    return {
        "events": count,
        "rate": rate,
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000,
    }


def _version() -> str:
    import subprocess

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        cwd=REPO,
    ).stdout.strip()
    return f"commit {commit}" + (" + uncommitted changes" if dirty else "")


def render(results: dict[str, Any]) -> str:
    runs = results["runs"]
    labels = {"sqlite": "outlast (SQLite)", "redis": "outlast (Redis)"}
    cfg = results["config"]
    machine = results["machine"]
    lines = [
        "## Webhooks",
        "",
        f"Command: `{results['command']}` · {results['date']} · {len(runs)} run(s), medians"
        f" (each run's figure in brackets) · {results['version']}.",
        "",
        f"Machine: {machine.get('summary', '')}",
        "",
        "A receiver on 127.0.0.1 (uvicorn in the benchmark's process) answers 204 at once. "
        "*Latency* = the receiver's clock when the request arrives minus the event's "
        "`timestamp` (when the store committed the job's end). **Burst**: "
        f"{cfg['jobs']:,} jobs with a callback, submitted first, all end at the same instant; "
        "deliveries/s = events / (last arrival − first job end). **Steady**: jobs ending one "
        f"by one, {cfg['rate']:g}/s for {cfg['seconds']:g} s.",
        "",
        "| Store | burst deliveries/s | burst p50 (ms) | burst p99 (ms) "
        "| steady p50 (ms) | steady p99 (ms) ↓ |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def cell(store: str, phase: str, key: str, fmt: str) -> str:
        values = [run[store][phase][key] for run in runs if store in run]
        each = " · ".join(format(v, fmt) for v in values)
        median = format(statistics.median(values), fmt)
        return f"{median} ({each})" if len(values) > 1 else median

    for store in cfg["stores"]:
        lines.append(
            f"| {labels[store]} | {cell(store, 'burst', 'deliveries_per_s', ',.0f')} "
            f"| {cell(store, 'burst', 'p50_ms', '.1f')} | {cell(store, 'burst', 'p99_ms', '.1f')} "
            f"| {cell(store, 'steady', 'p50_ms', '.1f')} "
            f"| {cell(store, 'steady', 'p99_ms', '.1f')} |"
        )
    lines += ["", "Target (docs/webhooks.md): delivery p99 ≤ 50 ms with a loopback receiver.", ""]
    for store in cfg["stores"]:
        p99 = statistics.median(run[store]["steady"]["p99_ms"] for run in runs)
        verdict = "**met**" if p99 <= 50 else "**not met**"
        lines.append(f"- {labels[store]}, steady: p99 {p99:.1f} ms — {verdict}")
    for store in cfg["stores"]:
        p99 = statistics.median(run[store]["burst"]["p99_ms"] for run in runs)
        verdict = "**met**" if p99 <= 50 else "**not met**"
        lines.append(
            f"- {labels[store]}, burst of {cfg['jobs']:,}: p99 {p99:,.0f} ms — {verdict}: the "
            "events of jobs that end at one instant wait for each other (at most 64 attempts in "
            "flight per node, each a signed HTTP request and a store write), so the p99 "
            "of a burst is the time to drain it: jobs / deliveries/s."
        )
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    text = path.read_text()
    start = text.find("## Webhooks")
    if start == -1:
        path.write_text(text.rstrip("\n") + "\n\n" + section)
        return
    end = text.find("\n## ", start + 1)
    rest = "" if end == -1 else text[end + 1 :]
    path.write_text(text[:start] + section + ("\n" + rest if rest else ""))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--jobs", type=int, default=1000, help="jobs ending at once (1000)")
    p.add_argument("--rate", type=float, default=50.0, help="steady: jobs ending per second (50)")
    p.add_argument("--seconds", type=float, default=6.0, help="steady: for this long (6)")
    p.add_argument("--stores", default="sqlite,redis")
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    p.add_argument("--json", dest="json_path")
    args = p.parse_args(argv)
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if unknown := [s for s in args.stores if s not in ("sqlite", "redis")]:
        p.error(f"unknown store(s): {', '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    now = dt.datetime.now(dt.UTC)
    results: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "bench.webhooks", *(argv or sys.argv[1:])]),
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "version": _version(),
        "machine": machine_info(),
        "config": {
            "jobs": args.jobs,
            "rate": args.rate,
            "seconds": args.seconds,
            "stores": args.stores,
        },
        "runs": [],
    }
    receiver = Receiver().start()
    try:
        for number in range(1, args.runs + 1):
            run: dict[str, Any] = {}
            for store in args.stores:
                server = Outlast(store, receiver, concurrency=args.jobs)
                try:
                    run[store] = {
                        "burst": burst(server, receiver, args.jobs),
                        "steady": steady(server, receiver, args.rate, args.seconds),
                    }
                finally:
                    server.stop()
                b, s = run[store]["burst"], run[store]["steady"]
                print(
                    f"run {number} · {store:6} · burst {b['deliveries_per_s']:,.0f}/s "
                    f"p50 {b['p50_ms']:.1f} ms p99 {b['p99_ms']:.1f} ms · "
                    f"steady p50 {s['p50_ms']:.1f} ms p99 {s['p99_ms']:.1f} ms",
                    flush=True,
                )
            results["runs"].append(run)
    finally:
        receiver.stop()
    stamp = now.strftime("%Y-%m-%dT%H%M")
    json_path = Path(args.json_path or REPO / "bench" / "results" / f"webhooks-{stamp}.json")
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    if args.out != "none":
        write_section(Path(args.out), render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

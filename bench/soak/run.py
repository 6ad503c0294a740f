"""Soak: does a long run stay bounded? A real ``outlast serve`` on SQLite relays jobs from the
relay benchmark's fake upstream without a pause, while the WAL, the RSS and the open file
descriptors of the server are sampled.

    python -m bench.soak [--minutes 10] [--clients 40] [--events 36]

Each client submits a relay job of ``--events`` events (sent unthrottled by the upstream),
waits for it to finish, and submits the next. The summary compares the figures after the
warm-up with those at the end; raw samples go into bench/results/soak-<date>.json and the
summary into the Soak section of docs/benchmarks.md. The store is deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from bench.relay import workloads
from bench.streams import report as streams_report
from bench.streams.run import machine_info
from bench.streams.targets import REPO, Server
from rich.console import Console

from outlast.store.sqlite_engine import WAL_MAX_BYTES

SECTION = "soak"
# As the relay benchmark's load generator names them (bench/relay/loadgen.py).
UPSTREAM_NAME = "bench"
UPSTREAM_PATH = "/v1/chat/completions"
JOB_TIMEOUT = 3600
MIB = 1 << 20


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="length of the load (default 10)")
    p.add_argument("--clients", type=int, default=40, help="concurrent clients (default 40)")
    p.add_argument("--events", type=int, default=36, help="events per relay job (default 36)")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds before RSS is compared")
    p.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"), help="'none' to skip")
    p.add_argument("--json", dest="json_path", help="raw results (default bench/results/soak-*)")
    return p.parse_args(argv)


class Load:
    def __init__(self, base: str, events: int) -> None:
        self.base = base
        self.events = events
        self.finished: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.resent = 0
        self.run = time.time_ns()  # keys of one run never meet another's
        self.stop = asyncio.Event()

    async def client(self, http: httpx.AsyncClient, index: int) -> None:
        body = {
            "model": "bench",
            "stream": True,
            "messages": [{"role": "user", "content": "Count."}],
            "bench": {"n": self.events, "rate": 0},
        }
        job = {
            "task": "relay",
            "input": {"upstream": UPSTREAM_NAME, "path": UPSTREAM_PATH, "method": "POST"}
            | {"body": body},
            "timeout": JOB_TIMEOUT,
        }
        n = 0
        while not self.stop.is_set():
            n += 1
            submit = {**job, "key": f"soak-{self.run}-{index}-{n}"}
            try:
                answer = await self.call(http, "POST", "/v1/jobs", json=submit)
                if answer.status_code not in (200, 202):
                    self.errors[f"submit {answer.status_code}"] += 1
                    await asyncio.sleep(0.5)  # a refusal: do not spin on it
                    continue
                job_id = answer.json()["id"]
                while True:
                    got = await self.call(http, "GET", f"/v1/jobs/{job_id}", params={"wait": 30})
                    state = got.json().get("state")
                    if state in ("succeeded", "failed", "cancelled"):
                        self.finished[state] += 1
                        break
            except (httpx.HTTPError, ValueError) as exc:
                self.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.5)

    async def call(self, http: httpx.AsyncClient, method: str, path: str, **kw: Any) -> Any:
        """One request, sent again once when a kept-alive connection turns out closed (the
        server closes idle ones; a submit carries an idempotency key, so a resend is safe)."""
        try:
            return await http.request(method, self.base + path, **kw)
        except (httpx.ReadError, httpx.RemoteProtocolError):
            self.resent += 1
            return await http.request(method, self.base + path, **kw)


def sample(server: Server, db: Path, load: Load, t0: float) -> dict[str, Any]:
    def size(path: Path) -> int:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0

    fds = 0
    for pid in server.pids():
        with contextlib.suppress(OSError):  # it may have just exited
            fds += len(os.listdir(f"/proc/{pid}/fd"))
    return {
        "t": round(time.monotonic() - t0, 1),
        "wal": size(db.with_name(db.name + "-wal")),
        "shm": size(db.with_name(db.name + "-shm")),
        "db": size(db),
        "rss": server.rss_bytes(),
        "fds": fds,
        "jobs": sum(load.finished.values()),
    }


async def soak(args: argparse.Namespace, server: Server, db: Path, console: Console) -> Any:
    load = Load(server.base, args.events)
    samples: list[dict[str, Any]] = []
    t0 = time.monotonic()
    limits = httpx.Limits(max_connections=args.clients + 10)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        clients = [asyncio.create_task(load.client(http, i)) for i in range(args.clients)]
        try:
            while time.monotonic() - t0 < args.minutes * 60:
                await asyncio.sleep(args.every)
                if not server.alive():
                    raise RuntimeError(f"the server exited:\n{server.log_tail()}")
                s = sample(server, db, load, t0)
                samples.append(s)
                console.print(
                    f"{s['t']:6.0f}s  jobs {s['jobs']:>7,}  WAL {s['wal'] / MIB:6.1f} MiB  "
                    f"db {s['db'] / MIB:7.1f} MiB  RSS {s['rss'] / MIB:6.1f} MiB  fds {s['fds']}"
                )
        finally:
            load.stop.set()
            for task in clients:
                task.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
    return samples, load


def summarize(args: argparse.Namespace, samples: list[dict[str, Any]], load: Load) -> Any:
    warm = next((s for s in samples if s["t"] >= args.warmup), samples[0])
    end = samples[-1]
    minutes = max((end["t"] - warm["t"]) / 60, 1e-9)
    return {
        "wal_max": max(s["wal"] for s in samples),
        "wal_bound": WAL_MAX_BYTES,
        "shm_max": max(s["shm"] for s in samples),
        "db_end": end["db"],
        "rss_warm": warm["rss"],
        "rss_end": end["rss"],
        "rss_slope_mib_per_min": round((end["rss"] - warm["rss"]) / MIB / minutes, 2),
        "fds_warm": warm["fds"],
        "fds_end": end["fds"],
        "fds_max": max(s["fds"] for s in samples),
        "jobs": end["jobs"],
        "jobs_per_s": round(end["jobs"] / end["t"], 1),
        "finished": dict(load.finished),
        "errors": dict(load.errors),
        "resent": load.resent,
    }


def render(data: dict[str, Any]) -> str:
    s, c = data["summary"], data["config"]
    mib = lambda n: f"{n / MIB:,.1f} MiB"  # noqa: E731
    bounded = "yes" if s["wal_max"] <= s["wal_bound"] else "**no**"
    errors = ", ".join(f"{n} × {kind}" for kind, n in s["errors"].items()) or "none"
    lines = [
        f"<!-- bench:{SECTION} -->",
        "## Soak",
        "",
        f"`{data['command']}` on {data['date']}, {data['version']}; {data['machine']['cores']} "
        f"cores shared with other work. One `outlast serve` (SQLite) relays jobs of "
        f"{c['events']} events from the fake upstream of the relay benchmark, {c['clients']} "
        f"clients each submitting the next job as soon as the last one ended, for "
        f"{c['minutes']:g} minutes; the server is sampled every {c['every']:g} s and compared "
        f"after a {c['warmup']:g} s warm-up.",
        "",
        "| Figure | Value |",
        "|---|---|",
        f"| relay jobs finished | {s['jobs']:,} ({s['jobs_per_s']:,} /s), "
        f"{s['finished'].get('succeeded', 0):,} succeeded |",
        f"| client errors | {errors} (and {s['resent']} requests sent again on a new "
        "connection after a kept-alive one was closed) |",
        f"| WAL, largest sample | {mib(s['wal_max'])} (bound {mib(s['wal_bound'])}: {bounded}) |",
        f"| WAL index (`-shm`), largest | {mib(s['shm_max'])} |",
        f"| database at the end | {mib(s['db_end'])} |",
        f"| RSS after warm-up → end | {mib(s['rss_warm'])} → {mib(s['rss_end'])} "
        f"({s['rss_slope_mib_per_min']:+} MiB/min) |",
        f"| open fds after warm-up → end (max) | {s['fds_warm']} → {s['fds_end']} "
        f"({s['fds_max']}) |",
        "",
        f"Raw samples: `{data['json']}`.",
        "",
        f"<!-- /bench:{SECTION} -->",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    upstream = workloads.start_upstream()
    server: Server | None = None
    try:
        spec = workloads.specs(upstream)["outlast-sqlite"]
        server = workloads.start(spec, keep=False)
        db = server.workdir / "outlast.db"
        console.print(f"soak: {server.version}, store {db}, {args.minutes:g} min")
        samples, load = asyncio.run(soak(args, server, db, console))
        version = server.version
    finally:
        if server is not None:
            workloads.targets.stop(server, keep=False)  # the store goes with its directory
        workloads.stop_upstream(upstream)
    stamp = dt.datetime.now(dt.UTC)
    json_path = Path(
        args.json_path or REPO / "bench" / "results" / f"soak-{stamp:%Y-%m-%dT%H%M}.json"
    )
    data = {
        "command": "python -m bench.soak " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": f"{stamp:%Y-%m-%d %H:%M} UTC",
        "version": version,
        "machine": machine_info(),
        "config": {
            k: getattr(args, k) for k in ("minutes", "clients", "events", "warmup", "every")
        },
        "json": str(json_path.relative_to(REPO))
        if json_path.is_relative_to(REPO)
        else str(json_path),
        "summary": summarize(args, samples, load),
        "samples": samples,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    section = render(data)
    if args.out != "none":
        saved, streams_report.SECTION = streams_report.SECTION, SECTION
        try:
            streams_report.write_section(Path(args.out), section)
        finally:
            streams_report.SECTION = saved
    console.print(section)
    return 0 if data["summary"]["wal_max"] <= WAL_MAX_BYTES else 1

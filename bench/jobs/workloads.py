"""The four jobs workloads (docs/benchmarks.md#targets), as run against one target in one
:class:`Slot`.

Each starts what it needs of the target, drives it through ``loadgen.py`` (a subprocess, so that
its CPU is counted apart from the target's and from the progress display) and returns one
JSON-able result:

1. ``enqueue``  enqueue/s of no-op jobs, ``producers`` producers in a closed loop, no worker
                running (outlast: ``serve --no-jobs``, its API alone); ``enqueue_batch``:
                the same, each call enqueueing ``batch`` jobs at once;
2. ``noop``     drain of ``jobs`` no-op jobs enqueued beforehand (untimed), jobs/s;
3. ``sleep10``  the same with jobs that sleep 10 ms, at concurrency 10: the ceiling is 1000/s;
4. ``latency``  enqueue→start p50/p99 of ``mark`` jobs enqueued at ``rate``/s, open loop;
5. ``noop_keys`` (outlast only) the no-op drain with flow control at work: jobs spread over
                ``KEYS`` concurrency keys with mixed priorities, on a queue with
                ``per_key_concurrency = 1``; its cost is read against ``noop`` of the same run.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.jobs.targets import CONCURRENCY, Slot
from bench.streams.workloads import Tick, run_child

LOADGEN = Path(__file__).resolve().parent / "loadgen.py"
SLEEP_SECONDS = 0.01  # the sleep10 task
CEILING = CONCURRENCY / SLEEP_SECONDS  # jobs/s of 10 ms jobs at concurrency 10: 1000
SETUP_LIMIT = 600.0  # seconds an untimed step (filling a queue) may take at most


@dataclass(frozen=True)
class Config:
    duration: float = 10.0  # seconds of the enqueue phase and of the open loop
    warmup: float = 1.0  # seconds of untimed enqueues before the timed ones
    jobs: int = 10_000  # jobs in each drain
    producers: int = 16  # concurrent producers (threads or asyncio tasks) when enqueueing
    batch: int = 100  # jobs per call of the enqueue_batch workload
    rate: float = 100.0  # jobs/s of the open loop
    cap: float = 30.0  # seconds a drain is measured at most (slow targets: a partial drain)
    interval: float = 0.02  # seconds between two looks at what is left of a drain
    wait: float = 5.0  # seconds the open loop waits, after its last enqueue, for jobs to start


def run_for_slot(
    script: Path, slot: Slot, op: str, spec: dict[str, Any], timeout: float, tick: Tick, log: Path
) -> dict[str, Any]:
    """Run *script* (a load generator) with *op* against *slot*'s target; its JSON result."""
    full = {
        "op": op,
        "client": slot.spec.client,
        "broker_url": slot.broker_url,
        "marks_url": slot.marks_url,
        "marks_key": slot.marks_key,
        "base": slot.base,
        **spec,
    }
    out = run_child([sys.executable, str(script), json.dumps(full)], timeout, tick, log)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def loadgen(
    slot: Slot, op: str, spec: dict[str, Any], cfg: Config, limit: float, tick: Tick, log: Path
) -> dict[str, Any]:
    full = {"producers": cfg.producers, "roots": slot.roots(), "limit": limit, **spec}
    return run_for_slot(LOADGEN, slot, op, full, limit + 15, tick, log)


def enqueue(slot: Slot, cfg: Config, tick: Tick, log: Path, batch: int = 1) -> dict[str, Any]:
    slot.start(with_workers=False)
    res = loadgen(
        slot,
        "enqueue",
        {"warmup": cfg.warmup, "seconds": cfg.duration, "batch": batch},
        cfg,
        cfg.warmup + cfg.duration + 60,
        tick,
        log,
    )
    slot.enqueued += res["enqueued"]
    res["ok"] = res["errors"] == 0
    return res


def drain(slot: Slot, task: str, cfg: Config, tick: Tick, log: Path) -> dict[str, Any]:
    """Fill the queue with `cfg.jobs` jobs while nothing consumes it, then start the workers
    and measure how fast the queue empties."""
    if slot.spec.is_outlast:
        slot.start(with_workers=False)  # outlast's API alone takes the jobs
    fill = loadgen(
        slot, "fill", {"task": task, "jobs": cfg.jobs}, cfg, SETUP_LIMIT, lambda s: tick(0), log
    )
    slot.enqueued += fill["jobs"]
    slot.stop()
    # The workers start once the drain's watcher is up (it touches `ready`): from its first
    # look on, every job that finishes is seen. Their process ids go to `roots` for the CPU.
    ready, roots = slot.workdir / "drain.ready", slot.workdir / "drain.roots"

    def start_when_ready(seconds: float) -> None:
        if not slot.procs and ready.exists():
            slot.start(with_workers=True, wait=False)
            roots.with_suffix(".tmp").write_text(json.dumps(slot.roots()))
            roots.with_suffix(".tmp").rename(roots)
        tick(seconds)

    res = loadgen(
        slot,
        "drain",
        {
            "expected": slot.enqueued,
            "jobs": cfg.jobs,
            "cap": cfg.cap,
            "interval": cfg.interval,
            "ready_file": str(ready),
            "roots_file": str(roots),
        },
        cfg,
        cfg.cap + 120,
        start_when_ready,
        log,
    )
    slot.check_alive()
    res["fill_seconds"] = fill["seconds"]
    res["fill_per_s"] = fill["enqueue_per_s"]
    if task == "sleep10":
        res["ceiling"] = CEILING
        res["ceiling_share"] = res["jobs_per_s"] / CEILING
    res["ok"] = not res["partial"]
    return res


def latency(slot: Slot, cfg: Config, tick: Tick, log: Path) -> dict[str, Any]:
    slot.start(with_workers=True)
    probe = loadgen(slot, "probe", {"expected": slot.enqueued}, cfg, 120, lambda s: tick(0), log)
    slot.enqueued += probe["enqueued"]
    res = loadgen(
        slot,
        "open",
        {"rate": cfg.rate, "seconds": cfg.duration, "wait": cfg.wait},
        cfg,
        cfg.duration + cfg.wait + 60,
        tick,
        log,
    )
    slot.enqueued += res["enqueued"]
    slot.check_alive()
    res["probe_seconds"] = probe["seconds"]
    res["ok"] = res["missing"] == 0 and res["duplicates"] == 0 and res["enqueue_errors"] == 0
    return res


def run_workload(key: str, slot: Slot, cfg: Config, tick: Tick, log: Path) -> dict[str, Any]:
    if key == "enqueue":
        return enqueue(slot, cfg, tick, log)
    if key == "enqueue_batch":
        return enqueue(slot, cfg, tick, log, cfg.batch)
    if key in ("noop", "sleep10"):
        return drain(slot, key, cfg, tick, log)
    if key == "noop_keys":
        if not slot.spec.is_outlast:
            raise ValueError("concurrency keys and priorities are outlast's own")
        slot.extra_env = {"OUTLAST_QUEUES__DEFAULT__PER_KEY_CONCURRENCY": "1"}
        try:
            return drain(slot, key, cfg, tick, log)
        finally:
            slot.extra_env = {}
    if key == "latency":
        return latency(slot, cfg, tick, log)
    raise ValueError(key)

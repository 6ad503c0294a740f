"""What an emit costs on the Redis store, by the size of its job's input.

    python -m bench.emit_cost [--emits 2000] [--emitters 16] [--runs 3]

Starts a private redis-server (no persistence), opens the store in this process, submits and
claims one job per emitter with an input of 100 B, then of 100 KiB, and has each emitter emit
one small message at a time (each awaited, as a task's ``ctx.emit`` does). Reports, per input
size, the emits per second (median of the runs) and the bytes Redis sent per emit
(``INFO stats`` total_net_output_bytes: what the store read back, a figure that does not depend
on the machine's load). The two should be about equal: an emit reads the job's lease, not its
input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from bench.streams.targets import kill_group, start_redis

from outlast.models import NewJob
from outlast.store import open_store

SIZES = {"100 B": 100, "100 KiB": 100 * 1024}


async def one_run(url: str, size: int, emitters: int, emits: int) -> tuple[float, float]:
    with redis.Redis.from_url(url) as admin:
        admin.flushdb()
    store = await open_store(url)
    try:
        jobs = []
        for _ in range(emitters):
            new = NewJob(
                task="t", queue="q", input={"text": "x" * size}, max_attempts=1, timeout=600
            )
            jobs.append((await store.submit_job(new, capacity=emitters)).job)
        claimed = await store.claim_jobs("q", "bench", emitters, 600.0)
        with redis.Redis.from_url(url) as admin:
            sent_before = int(admin.info("stats")["total_net_output_bytes"])

        async def emitter(job_id: str, attempt: int) -> None:
            for n in range(emits // emitters):
                await store.emit(job_id, "bench", attempt, [{"type": "output", "n": n}])

        started = time.perf_counter()
        await asyncio.gather(*(emitter(j.id, j.attempt) for j in claimed))
        elapsed = time.perf_counter() - started
        with redis.Redis.from_url(url) as admin:
            sent = int(admin.info("stats")["total_net_output_bytes"]) - sent_before
        done = emits // emitters * emitters
        return done / elapsed, sent / done
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--emits", type=int, default=2000)
    parser.add_argument("--emitters", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    # The private server has no AOF on purpose: no warning about it.
    logging.getLogger("outlast.store.redis").setLevel(logging.ERROR)
    workdir = Path(tempfile.mkdtemp(prefix="outlast-bench-emit-"))
    proc, port = start_redis(workdir)
    out: dict[str, Any] = {}
    try:
        url = f"redis://127.0.0.1:{port}/0"
        for label, size in SIZES.items():
            runs = [
                asyncio.run(one_run(url, size, args.emitters, args.emits)) for _ in range(args.runs)
            ]
            out[label] = {
                "emits_per_s": round(statistics.median(r[0] for r in runs)),
                "redis_bytes_sent_per_emit": round(statistics.median(r[1] for r in runs)),
            }
    finally:
        kill_group(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    first, second = (out[label] for label in SIZES)
    out["ratio_100KiB_to_100B"] = round(second["emits_per_s"] / first["emits_per_s"], 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""The workloads, as run against one started server: each returns one JSON-able result.

Every workload runs its load generator as a child process (``wrk`` for appends, ``loadgen.py``
for the rest) and measures, over the timed part only, the CPU time of the server's process tree
(from /proc) and of the load generator (from the child's rusage): the report shows both, so a
reader can check that the load generator was not the bottleneck.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from bench.streams.loadgen import machine_cpu_seconds
from bench.streams.targets import Server

HERE = Path(__file__).resolve().parent
LOADGEN = HERE / "loadgen.py"
APPEND_LUA = HERE / "append.lua"
MESSAGE_SIZE = 1024  # bytes of every JSON message the workloads append
WRITERS = 16
SUBPROCESS_GRACE = 60.0  # seconds a load generator may run past its nominal duration

Tick = Callable[[float], None]  # progress callback: seconds elapsed in the current step


@dataclass(frozen=True)
class Config:
    duration: float = 10.0  # seconds of each timed append / read / SSE phase
    warmup: float = 2.0  # seconds of untimed appends before each timed append phase
    catchup_mb: int = 64  # MiB in the catch-up stream
    sse_readers: int = 100
    sse_rate: float = 50.0  # appends/s of the steady SSE writer
    sse_max: bool = True  # also run the SSE fan-out with an unthrottled writer
    wrk_threads: int = WRITERS


def message(size: int = MESSAGE_SIZE) -> bytes:
    body = {"writer": "bench", "seq": 0, "pad": ""}
    bare = len(json.dumps(body, separators=(",", ":")))
    body["pad"] = "x" * (size - bare)
    return json.dumps(body, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------- helpers


def create(server: Server, name: str) -> None:
    resp = httpx.put(
        f"{server.base}/v1/stream/{quote(name)}",
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    if resp.status_code not in (200, 201):
        raise RuntimeError(f"PUT {name} answered {resp.status_code}: {resp.text[:200]}")


def delete(server: Server, name: str) -> None:
    # Frees the server's memory between runs; a failure here changes no figure.
    with contextlib.suppress(httpx.HTTPError):
        httpx.delete(f"{server.base}/v1/stream/{quote(name)}", timeout=30)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_child(argv: list[str], limit: float, tick: Tick, log: Path) -> str:
    """Run a load generator to its end (at most *limit* s); its stdout. Killed on any exit."""
    started = time.monotonic()
    with open(log, "ab") as err, tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True
        )
        try:
            while proc.poll() is None:
                elapsed = time.monotonic() - started
                if elapsed > limit:
                    raise RuntimeError(f"{Path(argv[0]).name} ran over {limit:.0f}s")
                tick(elapsed)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(0.1)
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        tail = " | ".join(text.strip().splitlines()[-3:])
        raise RuntimeError(f"{Path(argv[0]).name} exited {proc.returncode} ({tail}); see {log}")
    return text


@contextlib.contextmanager
def cpu_meter(server: Server):  # type: ignore[no-untyped-def]
    """Measures wall time and the CPU of the server and of the children that exit meanwhile."""
    box: dict[str, float] = {}
    s0, c0, t0 = server.cpu_seconds(), children_cpu(), time.perf_counter()
    m0 = machine_cpu_seconds()
    yield box
    wall = time.perf_counter() - t0
    box["wall"] = wall
    box["server_cpu"] = (server.cpu_seconds() - s0) / wall
    box["client_cpu"] = (children_cpu() - c0) / wall
    machine = (machine_cpu_seconds() - m0) / wall
    box["other_cpu"] = max(0.0, machine - box["server_cpu"] - box["client_cpu"])


def loadgen(spec: dict[str, Any], limit: float, tick: Tick, log: Path) -> dict[str, Any]:
    spec = {**spec, "limit": limit}
    out = run_child([sys.executable, str(LOADGEN), json.dumps(spec)], limit + 10, tick, log)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------------- appends


def wrk(
    server: Server,
    prefix: str,
    mode: str,
    seconds: float,
    cfg: Config,
    body: Path,
    tick: Tick,
    log: Path,
) -> dict[str, Any]:
    exe = shutil.which("wrk")
    if not exe:
        raise RuntimeError("wrk not found (apt-get install wrk)")
    argv = [
        exe,
        "-t",
        str(cfg.wrk_threads),
        "-c",
        str(WRITERS),
        "-d",
        f"{max(1, math.ceil(seconds))}s",  # wrk takes whole seconds only
        "--timeout",
        "10s",
        "-s",
        str(APPEND_LUA),
        server.base,
        "--",
        prefix,
        mode,
        str(body),
    ]
    out = run_child(argv, seconds + SUBPROCESS_GRACE, tick, log)
    for line in out.splitlines():
        if line.startswith("WRK_RESULT "):
            result: dict[str, Any] = json.loads(line[len("WRK_RESULT ") :])
            return result
    raise RuntimeError(f"wrk printed no result:\n{out[-2000:]}")


def append(
    server: Server, run: int, mode: str, cfg: Config, tick: Tick, log: Path
) -> dict[str, Any]:
    """16 wrk connections, closed loop, POSTing a 1 KiB JSON message each: per-writer streams
    (mode "per-writer") or all on one stream (mode "shared")."""
    prefix = f"bench-r{run}-append-{mode}-"
    names = [f"{prefix}{i}" for i in range(1 if mode == "shared" else WRITERS)]
    for name in names:
        create(server, name)
    with tempfile.NamedTemporaryFile(suffix=".json") as body:
        body.write(message())
        body.flush()
        path = f"/v1/stream/{prefix}"
        body_path = Path(body.name)
        try:
            if cfg.warmup > 0:
                wrk(server, path, mode, cfg.warmup, cfg, body_path, tick, log)
            with cpu_meter(server) as cpu:
                res = wrk(
                    server,
                    path,
                    mode,
                    cfg.duration,
                    cfg,
                    body_path,
                    lambda s: tick(cfg.warmup + s),
                    log,
                )
        finally:
            for name in names:
                delete(server, name)
    errors = sum(res["errors"].values())
    seconds = res["duration_us"] / 1e6
    return {
        "appends_per_s": res["requests"] / seconds,
        "requests": res["requests"],
        "seconds": seconds,
        "errors": res["errors"],
        "ok": errors == 0,
        "latency_ms": {k: v / 1000 for k, v in res["latency_us"].items()},
        "server_cpu": cpu["server_cpu"],
        "client_cpu": cpu["client_cpu"],
        "other_cpu": cpu["other_cpu"],
    }


# ---------------------------------------------------------------------------------- catch-up


def catchup(server: Server, run: int, cfg: Config, tick: Tick, log: Path) -> dict[str, Any]:
    """Fill a stream with catchup_mb MiB of 1 KiB messages (untimed), then read it from -1,
    following Stream-Next-Offset until Stream-Up-To-Date, repeatedly for `duration` seconds."""
    name = f"bench-r{run}-catchup"
    messages = cfg.catchup_mb * 1024 * 1024 // MESSAGE_SIZE
    create(server, name)
    try:
        fill = loadgen(
            {
                "op": "fill",
                "base": server.base,
                "stream": name,
                "messages": messages,
                "size": MESSAGE_SIZE,
            },
            600,
            lambda s: tick(0),
            log,
        )
        res = loadgen(
            {
                "op": "catchup",
                "base": server.base,
                "stream": name,
                "seconds": cfg.duration,
                "pids": server.pids(),
            },
            cfg.duration * 10 + 120,
            tick,
            log,
        )
    finally:
        delete(server, name)
    res.update(
        {
            "fill_seconds": fill["seconds"],
            "fill_mb_per_s": fill["bytes"] / fill["seconds"] / 1e6,
            "messages_written": messages,
            "ok": res["messages_per_read"] == messages,
        }
    )
    return res


# ---------------------------------------------------------------------------------- SSE


def sse(
    server: Server, run: int, cfg: Config, rate: float, tick: Tick, log: Path
) -> dict[str, Any]:
    """1 writer (at `rate` appends/s, or unthrottled when rate <= 0), `sse_readers` readers."""
    name = f"bench-r{run}-sse-{'max' if rate <= 0 else int(rate)}"
    create(server, name)
    try:
        res = loadgen(
            {
                "op": "sse",
                "base": server.base,
                "stream": name,
                "pids": server.pids(),
                "readers": cfg.sse_readers,
                "rate": rate,
                "seconds": cfg.duration,
                "size": MESSAGE_SIZE,
                "drain": 2.0 if rate > 0 else 5.0,
            },
            cfg.duration + 120,
            tick,
            log,
        )
    finally:
        delete(server, name)
    # An unthrottled writer may outrun the fan-out: undelivered events are then expected.
    res["ok"] = res["duplicates"] == 0 and not res["errors"] and (rate <= 0 or res["missing"] == 0)
    return res

"""The relay benchmark's pieces as seen from the harness: the fake upstream's process, the
outlast targets configured for it, the LiteLLM proxy as a peer, and one function per workload,
each running the load generator (``bench/relay/loadgen.py``) as a child process and returning
its JSON result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from bench.streams import targets
from bench.streams.targets import HOST, Server, TargetSpec
from bench.streams.workloads import Tick, run_child

SUBPROCESS_GRACE = 600.0  # seconds a load generator may run past its nominal duration
# Relays the queue may run at once: more than any workload starts, so that the queue is never
# what limits them (the rule: queue concurrency must allow N relays at once).
CONCURRENCY = 5000
CAPACITY = 50_000
# The LiteLLM proxy, from its own environment (bench/README.md says how to make it).
LITELLM = targets.BENCH_DIR / ".venv-litellm" / "bin" / "litellm"
LITELLM_KEY = "sk-outlast-bench"  # its master key: every request must carry it
LITELLM_START_TIMEOUT = 120.0  # seconds: it imports a lot, in each worker
# Off everything LiteLLM would fetch or send outside: the model cost map (bundled copy instead),
# telemetry; and no database, so no Prisma. Each is checked in bench/README.md.
LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY": "False",
    "LITELLM_MODE": "PRODUCTION",
    "LITELLM_MASTER_KEY": LITELLM_KEY,
    "LITELLM_LOG": "ERROR",
    "DISABLE_SCHEMA_UPDATE": "True",
    "NO_DOCS": "True",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
# The pass-through path of outlast for the fake upstream, and LiteLLM's own.
PASS_THROUGH_PATH = "/v1/upstreams/bench/v1/chat/completions"
LITELLM_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Config:
    levels: tuple[int, ...] = (1, 100, 1000)  # concurrent streams of the latency workload
    rate: float = 10.0  # events/s per stream in the latency workload
    duration: float = 10.0  # seconds of events per stream (latency, ceiling)
    ceiling_streams: int = 100
    ceiling_events: int = 1000  # events per stream of the ceiling, sent unthrottled
    relays: int = 1000  # the scale workload: relays held open
    readers_per_relay: int = 10  # ... and idle readers on each
    scale_events: int = 20  # events per relay once the gate opens
    scale_rate: float = 2.0  # events/s per relay then


# ------------------------------------------------------------------------------ the upstream


@dataclass
class Upstream:
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def pids(self) -> list[int]:
        return targets.process_tree(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None


def start_upstream() -> Upstream:
    workdir = Path(tempfile.mkdtemp(prefix="outlast-bench-upstream-"))
    port = targets.free_port()
    argv = [sys.executable, "-m", "bench.relay.upstream", "--port", str(port)]
    proc = targets.spawn(
        argv, workdir, workdir / "upstream.log", targets.clean_env({}), targets.REPO
    )
    upstream = Upstream(proc, port, workdir)
    deadline = time.monotonic() + targets.START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the fake upstream exited: {(workdir / 'upstream.log').read_text()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"{upstream.base}/control/stats", timeout=1.0).raise_for_status()
            return upstream
        time.sleep(0.05)
    stop_upstream(upstream)
    raise RuntimeError("the fake upstream did not answer")


def stop_upstream(upstream: Upstream, keep: bool = False) -> None:
    targets.kill_group(upstream.proc)
    if not keep:
        shutil.rmtree(upstream.workdir, ignore_errors=True)


# ------------------------------------------------------------------------------ the targets

LABELS = {
    "outlast-sqlite": "outlast (SQLite)",
    "outlast-redis": "outlast (Redis)",
}


def specs_label(name: str) -> str:
    if is_litellm(name):
        workers = litellm_workers(name)
        return f"LiteLLM proxy ({workers} worker{'s' if workers > 1 else ''})"
    return LABELS.get(name, name)


def is_litellm(name: str) -> bool:
    """``litellm`` (one worker) or ``litellm-<N>w`` (N workers)."""
    return re.fullmatch(r"litellm(-[1-9][0-9]*w)?", name) is not None


def litellm_workers(name: str) -> int:
    return int(name.removeprefix("litellm-").removesuffix("w")) if "-" in name else 1


def litellm_name(workers: int) -> str:
    return "litellm" if workers == 1 else f"litellm-{workers}w"


def has_litellm() -> bool:
    return os.access(LITELLM, os.X_OK)


def has_redis_store() -> bool:
    return importlib.util.find_spec("outlast.store.redis") is not None


def specs(
    upstream: Upstream,
    outlast_cmd: str | None = None,
    outlast_args: list[str] | None = None,
    litellm: tuple[int, ...] = (),
) -> dict[str, TargetSpec]:
    """outlast-sqlite and outlast-redis from the streams bench, configured for the upstream
    (with *outlast_args* after their command line, ``--workers 2`` say), and the LiteLLM proxy
    with each number of workers in *litellm*."""
    env = {
        "OUTLAST_UPSTREAMS__BENCH__URL": upstream.base,
        "OUTLAST_UPSTREAMS__BENCH__ALLOW_PRIVATE": "true",
        # Relays run on the built-in "relay" queue (256 at once by default); "default" too,
        # for an outlast that still runs them there.
        **{
            f"OUTLAST_QUEUES__{queue}__{key}": str(value)
            for queue in ("DEFAULT", "RELAY")
            for key, value in (("CONCURRENCY", CONCURRENCY), ("CAPACITY", CAPACITY))
        },
    }
    base = targets.specs(outlast_cmd)
    out = {
        name: dataclasses.replace(
            base[name], env=env, argv=_with_args(base[name].argv, outlast_args or [])
        )
        for name in ("outlast-sqlite", "outlast-redis")
    }
    for workers in litellm:
        name = litellm_name(workers)
        out[name] = TargetSpec(
            name,
            specs_label(name),
            "litellm",
            functools.partial(_litellm_argv, upstream.base, workers),
            env=LITELLM_ENV,
            start_timeout=LITELLM_START_TIMEOUT,
        )
    return out


def _with_args(
    argv: Callable[[int, Path, str], list[str]], extra: list[str]
) -> Callable[[int, Path, str], list[str]]:
    return lambda port, workdir, store: [*argv(port, workdir, store), *extra]


def _litellm_argv(upstream: str, workers: int, port: int, workdir: Path, store: str) -> list[str]:
    """LiteLLM's command line, its config written into *workdir*: one model, ``bench``, on the
    fake upstream as an OpenAI-compatible API."""
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: bench\n"
        "    litellm_params:\n"
        "      model: openai/bench\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: sk-upstream-bench\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  drop_params: true\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
    )
    return [
        str(LITELLM),
        "--config",
        str(config),
        "--host",
        HOST,
        "--port",
        str(port),
        "--num_workers",
        str(workers),
    ]


def proxy_spec(server: Server) -> dict[str, Any]:
    """Where the load generator POSTs its streaming chat requests on *server*: outlast's
    pass-through, or LiteLLM's endpoint with its key."""
    if server.spec.kind == "litellm":
        return {"path": LITELLM_PATH, "headers": {"Authorization": f"Bearer {LITELLM_KEY}"}}
    return {"path": PASS_THROUGH_PATH, "headers": {}}


def split_args(text: str | None) -> list[str]:
    return shlex.split(text) if text else []


def start(spec: TargetSpec, keep: bool) -> Server:
    try:
        server = targets.start(spec, keep=keep)
    except RuntimeError:  # once more: a first start can trip on a cold disk
        time.sleep(2)
        server = targets.start(spec, keep=keep)
    if spec.kind == "litellm":
        server.version = litellm_version()
    return server


def litellm_version() -> str:
    python = LITELLM.parent / "python"
    code = "import importlib.metadata as m; print(m.version('litellm'))"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=30)
        if out.returncode == 0:
            return f"litellm {out.stdout.strip()}"
    return "litellm"


# ------------------------------------------------------------------------------ workloads


def loadgen(
    spec: dict[str, Any], limit: float, tick: Tick, log: Path, show: Callable[[str], None]
) -> dict[str, Any]:
    """Run the load generator on *spec*; its progress lines go to *show*."""
    with tempfile.NamedTemporaryFile("r", suffix=".progress") as progress:
        spec = {**spec, "limit": limit, "progress": progress.name}

        def on_tick(elapsed: float) -> None:
            tick(elapsed)
            lines = progress.read().splitlines()
            if lines:
                show(lines[-1])

        argv = [sys.executable, "-m", "bench.relay.loadgen", json.dumps(spec)]
        out = run_child(argv, limit + 30, on_tick, log)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _pids(server: Server | None, upstream: Upstream) -> dict[str, Any]:
    return {"pids": server.pids() if server else [], "upstream_pids": upstream.pids()}


def _streams_spec(
    mode: str,
    upstream: Upstream,
    server: Server | None,
    streams: int,
    events: int,
    rate: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The load generator's spec for *streams* streams of *events* events at *rate* events/s
    each (0: unthrottled), read directly or through *server*; *extra* adds to it."""
    return {
        "op": "streams",
        "mode": mode,
        "upstream": upstream.base,
        "server": server.base if server else "",
        "streams": streams,
        "events": events,
        "rate": rate,
        **(extra or {}),
        **_pids(server, upstream),
    }


def latency(
    mode: str,
    streams: int,
    cfg: Config,
    upstream: Upstream,
    server: Server | None,
    tick: Tick,
    log: Path,
    show: Callable[[str], None],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """N streams at cfg.rate events/s for cfg.duration s, read directly or through a relay;
    *extra* adds to the load generator's spec."""
    events = max(1, round(cfg.rate * cfg.duration))
    spec = _streams_spec(mode, upstream, server, streams, events, cfg.rate, extra)
    return loadgen(spec, cfg.duration * 4 + SUBPROCESS_GRACE, tick, log, show)


def proxy_latency(
    streams: int,
    cfg: Config,
    upstream: Upstream,
    server: Server | None,
    tick: Tick,
    log: Path,
    show: Callable[[str], None],
) -> dict[str, Any]:
    """N streaming chat requests at cfg.rate events/s for cfg.duration s, each read on its own
    answer: from the upstream itself (*server* ``None``), through outlast's pass-through or
    through LiteLLM. The stamps travel in the chunks' content, for every reader alike."""
    extra = {"stamp_in_content": True, **(proxy_spec(server) if server else {})}
    mode = "proxy" if server else "direct"
    return latency(mode, streams, cfg, upstream, server, tick, log, show, extra)


def ceiling(
    mode: str,
    cfg: Config,
    upstream: Upstream,
    server: Server | None,
    tick: Tick,
    log: Path,
    show: Callable[[str], None],
) -> dict[str, Any]:
    """cfg.ceiling_streams streams of cfg.ceiling_events events each, unthrottled, one reader
    each: events/s from the go until the last delivery. A count rather than a time: the relay
    reads up to 16 MiB ahead of its store, so an upstream sending for a fixed time would leave
    a backlog of unknown length behind it."""
    spec = _streams_spec(mode, upstream, server, cfg.ceiling_streams, cfg.ceiling_events, 0.0)
    return loadgen(spec, cfg.duration * 10 + SUBPROCESS_GRACE, tick, log, show)


def scale(
    cfg: Config,
    upstream: Upstream,
    server: Server,
    tick: Tick,
    log: Path,
    show: Callable[[str], None],
) -> dict[str, Any]:
    """Memory per running relay and per idle reader; then the flow with every reader on."""
    spec = {
        "op": "scale",
        "upstream": upstream.base,
        "server": server.base,
        "relays": cfg.relays,
        "readers_per_relay": cfg.readers_per_relay,
        "events": cfg.scale_events,
        "rate": cfg.scale_rate,
        "outlast_pids": targets.process_tree(server.proc.pid),
        "redis_pids": targets.process_tree(server.redis.pid) if server.redis else [],
        **_pids(server, upstream),
    }
    expected = cfg.scale_events / cfg.scale_rate
    return loadgen(spec, expected * 4 + SUBPROCESS_GRACE + 600, tick, log, show)


def server_log_problems(server: Server, limit: int = 5) -> dict[str, Any]:
    """Warnings and errors in the server's log (JSON lines), counted by message."""
    counts: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in server.log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                if "Traceback" in line or "Error" in line:
                    counts[line.strip()[:160]] = counts.get(line.strip()[:160], 0) + 1
                continue
            if isinstance(entry, dict) and entry.get("level") in ("warning", "error", "critical"):
                msg = str(entry.get("msg", ""))
                if "no auth tokens configured" in msg:
                    continue
                key = f"{entry['level']}: {_shape(msg)}"
                counts[key] = counts.get(key, 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    return {"total": sum(counts.values()), "top": dict(top)}


def _shape(message: str) -> str:
    """A log message with its job ids and numbers taken out, so that alike lines group."""
    message = re.sub(r"job_[0-9a-z]+", "<job>", message)
    return re.sub(r"\d+(\.\d+)?", "N", message)[:160]

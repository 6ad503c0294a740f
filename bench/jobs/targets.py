"""The job servers under test, and the one Redis they share in a run.

A *target* is a recipe (:class:`TargetSpec`): which client enqueues to it (``clients.py``) and
which worker processes run its jobs. A :class:`Slot` is one target set up for one workload: its
own Redis database (emptied first), its own temp dir, and its workers, started and stopped by
the workload, each in its own process group (stopping kills whatever it spawned).

- ``outlast-sqlite``  ``outlast serve --app bench.jobs.outlast_tasks:app`` on SQLite, queue
                      ``default`` with concurrency 10 and a capacity no workload reaches
- ``outlast-redis``   the same on ``--store redis://…`` (needs ``outlast.store.redis``)
- ``celery``          ``celery worker --pool threads --concurrency 10`` (Redis broker)
- ``dramatiq``        ``dramatiq --processes 1 --threads 10`` (Redis broker)
- ``rq``              ten ``rq worker --worker-class rq.worker.SimpleWorker`` processes
- ``arq``             ``arq WorkerSettings`` (arq's defaults: ``max_jobs=10``, ``poll_delay=0.5``)
- ``arq-fast``        the same with ``poll_delay=0.01``

Every worker runs with its own default log level and writes its log to a file in the slot's dir.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
from bench.jobs import marks
from bench.streams import targets as stargets
from bench.streams.targets import HOST, REPO, clean_env, free_port, kill_group, spawn

CONCURRENCY = 10  # jobs at once, for every target (the target: 10 ms jobs at concurrency 10)
# outlast answers 429 past a queue's capacity; the peers have no such bound. No workload comes
# near this, so outlast never refuses a job here.
CAPACITY = 10_000_000
START_TIMEOUT = 30.0
BIN = Path(sys.executable).parent  # the peers' console scripts, from the same environment


@dataclass(frozen=True)
class TargetSpec:
    name: str
    label: str
    client: str  # key of clients.CLIENTS
    dists: tuple[str, ...]  # distributions whose versions the report names
    workers: Callable[[Slot], list[list[str]]]  # the worker processes' command lines
    outlast_store: Callable[[Slot], str] | None = None  # outlast targets: the store URL
    outlast_cmd: str | None = None  # outlast targets: --outlast-cmd (the serve command template)
    outlast_workers: int = 1  # outlast targets: processes of `serve --workers N`

    @property
    def is_outlast(self) -> bool:
        return self.outlast_store is not None


def _outlast(slot: Slot) -> list[list[str]]:
    assert slot.spec.outlast_store is not None
    # The streams benchmark's `outlast serve` command line, with the tasks (and workers or not).
    command = stargets.outlast_command(slot.spec.outlast_cmd, slot.spec.outlast_workers)
    argv = command(slot.port, slot.workdir, slot.spec.outlast_store(slot))
    argv += ["--app", "bench.jobs.outlast_tasks:app"]
    return [argv + ([] if slot.with_workers else ["--no-jobs"])]


def _script(name: str) -> str:
    exe = BIN / name
    return str(exe) if exe.exists() else (shutil.which(name) or name)


def _outlasts(outlast_cmd: str | None, workers: int) -> dict[str, TargetSpec]:
    """outlast on each store, in one process and with ``serve --workers N``."""
    stores: dict[str, tuple[str, Callable[[Slot], str]]] = {
        "sqlite": ("SQLite", lambda s: f"sqlite:///{s.workdir}/outlast.db"),
        "redis": ("Redis", lambda s: s.broker_url),
    }
    found: dict[str, TargetSpec] = {}
    for suffix, n, extra in (("", 1, ""), ("-workers", workers, f", --workers {workers}")):
        for store, (label, url) in stores.items():
            name = f"outlast-{store}{suffix}"
            found[name] = TargetSpec(
                name,
                f"outlast ({label}{extra})",
                "outlast",
                ("outlast",),
                _outlast,
                outlast_store=url,
                outlast_cmd=outlast_cmd,
                outlast_workers=n,
            )
    return found


def specs(outlast_cmd: str | None = None, workers: int = 2) -> dict[str, TargetSpec]:
    return {
        **_outlasts(outlast_cmd, workers),
        "celery": TargetSpec(
            "celery",
            "Celery (threads)",
            "celery",
            ("celery", "kombu"),
            lambda s: [
                [
                    _script("celery"),
                    "-A",
                    "bench.jobs.celery_tasks",
                    "worker",
                    "--pool",
                    "threads",
                    "--concurrency",
                    str(CONCURRENCY),
                ]
            ],
        ),
        "dramatiq": TargetSpec(
            "dramatiq",
            "Dramatiq (threads)",
            "dramatiq",
            ("dramatiq",),
            lambda s: [
                [
                    _script("dramatiq"),
                    "bench.jobs.dramatiq_tasks",
                    "--processes",
                    "1",
                    "--threads",
                    str(CONCURRENCY),
                ]
            ],
        ),
        "rq": TargetSpec(
            "rq",
            "RQ (SimpleWorker ×10)",
            "rq",
            ("rq",),
            lambda s: (
                [
                    [
                        _script("rq"),
                        "worker",
                        "--worker-class",
                        "rq.worker.SimpleWorker",
                        "--url",
                        s.broker_url,
                        "default",
                    ]
                ]
                * CONCURRENCY
            ),
        ),
        "arq": TargetSpec(
            "arq",
            "arq (poll_delay=0.5)",
            "arq",
            ("arq",),
            lambda s: [[_script("arq"), "bench.jobs.arq_tasks.WorkerSettings"]],
        ),
        "arq-fast": TargetSpec(
            "arq-fast",
            "arq (poll_delay=0.01)",
            "arq",
            ("arq",),
            lambda s: [[_script("arq"), "bench.jobs.arq_tasks.FastWorkerSettings"]],
        ),
    }


def outlast_redis_available() -> bool:
    """outlast-redis runs once outlast has a Redis store (being written alongside this)."""
    try:
        return importlib.util.find_spec("outlast.store.redis") is not None
    except ModuleNotFoundError:
        return False


def version_of(spec: TargetSpec) -> str:
    if spec.is_outlast:
        return stargets.version_of(stargets.specs(spec.outlast_cmd)["outlast-sqlite"])
    parts = []
    for dist in spec.dists:
        try:
            parts.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{dist} (not installed)")
    return ", ".join(parts)


# ------------------------------------------------------------------------------ the Redis


@dataclass
class RedisServer:
    """One private redis-server per run (no RDB, no AOF), shared by every target in turn:
    database 0 holds the marks, each target has its own database."""

    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path

    @classmethod
    def start(cls) -> RedisServer:
        workdir = Path(tempfile.mkdtemp(prefix="outlast-bench-jobs-redis-"))
        try:
            proc, port = stargets.start_redis(workdir)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return cls(proc, port, workdir)

    def url(self, db: int) -> str:
        return f"redis://{HOST}:{self.port}/{db}"

    def flush(self, db: int) -> None:
        with redis.Redis.from_url(self.url(db)) as client:
            client.flushdb()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, keep: bool = False) -> None:
        kill_group(self.proc)
        if not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def version(self) -> str:
        with redis.Redis.from_url(self.url(0)) as client:
            return str(client.info("server").get("redis_version", ""))


# ------------------------------------------------------------------------------ a slot


@dataclass
class Slot:
    spec: TargetSpec
    redis: RedisServer
    db: int
    workdir: Path
    run: int
    port: int = 0
    with_workers: bool = True
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)  # what was started, for the report
    enqueued: int = 0  # jobs enqueued since the db was emptied (RQ counts what is left by it)
    extra_env: dict[str, str] = field(default_factory=dict)  # one workload's own settings

    @property
    def broker_url(self) -> str:
        return self.redis.url(self.db)

    @property
    def marks_url(self) -> str:
        return self.redis.url(0)

    @property
    def marks_key(self) -> str:
        return f"marks:{self.spec.name}:{self.run}"

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "worker.log"

    def env(self) -> dict[str, str]:
        env = clean_env(
            {
                marks.BROKER_ENV: self.broker_url,
                marks.URL_ENV: self.marks_url,
                marks.KEY_ENV: self.marks_key,
                "PYTHONPATH": str(REPO),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.spec.is_outlast:
            env["OUTLAST_QUEUES__DEFAULT__CONCURRENCY"] = str(CONCURRENCY)
            env["OUTLAST_QUEUES__DEFAULT__CAPACITY"] = str(CAPACITY)
        env.update(self.extra_env)
        return env

    def start(self, with_workers: bool = True, wait: bool = True) -> None:
        """Start the target: its workers, or (outlast, ``with_workers=False``) its API alone.
        Peers without workers need nothing started: their clients talk to Redis. With *wait*,
        return once outlast answers HTTP (the peers' workers are probed by the workloads)."""
        self.with_workers = with_workers
        if not self.spec.is_outlast and not with_workers:
            return
        env = self.env()
        try:
            for argv in self.spec.workers(self):
                self.commands.append(argv)
                # cwd = the repository: every worker imports bench.jobs.<target>_tasks.
                self.procs.append(spawn(argv, self.workdir, self.log, env, cwd=REPO))
            if self.spec.is_outlast and wait:
                self.wait_http()
        except BaseException:
            self.stop()
            raise

    def wait_http(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/healthz", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.spec.name} did not answer within {START_TIMEOUT:.0f} s")

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{self.spec.name}: a worker exited with {proc.returncode}:\n{self.log_tail()}"
                )
        if not self.redis.alive():
            raise RuntimeError("redis-server died")

    def roots(self) -> list[int]:
        """What counts as the target: its processes (and their children), and the Redis."""
        return [p.pid for p in self.procs] + [self.redis.proc.pid]

    def stop(self) -> None:
        # All at once, then wait: ten RQ workers each get their SIGTERM without queueing.
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            kill_group(proc)
        self.procs.clear()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def open_slot(spec: TargetSpec, redis_server: RedisServer, db: int, run: int) -> Slot:
    redis_server.flush(db)
    workdir = Path(tempfile.mkdtemp(prefix=f"outlast-bench-jobs-{spec.name}-"))
    # outlast keeps its port across restarts within the slot: the load generator knows it.
    return Slot(spec, redis_server, db, workdir, run, port=free_port() if spec.is_outlast else 0)


def close_slot(slot: Slot, keep: bool = False) -> None:
    slot.stop()
    with contextlib.suppress(Exception):
        slot.redis.flush(slot.db)
    if not keep:
        shutil.rmtree(slot.workdir, ignore_errors=True)

"""A cluster on one machine: a real ``redis-server`` and real outlast processes sharing it.

``cluster()`` gives a :class:`Cluster` with its own Redis (AOF, ``appendfsync always``); it
starts ``serve`` nodes (API + workers) and ``worker`` nodes (workers only) on that Redis, each
named by ``OUTLAST_TEST_NODE`` so that the tasks of :mod:`tests.cluster.apps` record where they
ran. Every node is killed at the end of the test.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import RedisProcess, ServerProcess, free_port, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
APP = "tests.cluster.apps:app"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


@dataclass
class WorkerProcess:
    """One ``outlast worker`` subprocess (no HTTP: readiness is read from its log)."""

    name: str
    store: str
    env: dict[str, str]
    log_path: Path
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> WorkerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        command = [sys.executable, "-m", "outlast", "worker", "--store", self.store]
        self.proc = subprocess.Popen(
            [*command, "--app", APP, *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            return "serving queues" in self.log()

        wait_for(ready, timeout=timeout)
        return self

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@dataclass
class Run:
    """One run of a task body: where, which attempt, from when to when (``None``: cut off)."""

    node: str
    attempt: int
    start: float
    end: float | None
    how: str  # "end" | "stop" | "" (never reported: its node died)


@dataclass
class Cluster:
    redis: RedisProcess
    runs_dir: Path
    tmp: Path
    nodes: list[ServerProcess | WorkerProcess] = field(default_factory=list)

    def env(self, name: str, extra: dict[str, str] | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OUTLAST_")}
        env.update(
            {
                "PYTHONPATH": str(REPO_ROOT),
                "OUTLAST_TEST_RUNS": str(self.runs_dir),
                "OUTLAST_TEST_NODE": name,
                "OUTLAST_STREAMS__LONG_POLL_TIMEOUT": "0.5",
                "OUTLAST_JOBS__BACKOFF_BASE": "0.05",
                "OUTLAST_JOBS__BACKOFF_MAX": "0.5",
            }
        )
        env.update(extra or {})
        return env

    def serve(
        self, name: str, env: dict[str, str] | None = None, args: list[str] | None = None
    ) -> ServerProcess:
        node = ServerProcess(
            store=self.redis.url,
            port=free_port(),
            env=self.env(name, env),
            args=["--app", APP, *(args or [])],
            log_path=self.tmp / f"node-{name}.log",
        )
        self.nodes.append(node)
        return node.start()

    def worker(
        self, name: str, env: dict[str, str] | None = None, args: list[str] | None = None
    ) -> WorkerProcess:
        node = WorkerProcess(
            name=name,
            store=self.redis.url,
            env=self.env(name, env),
            log_path=self.tmp / f"node-{name}.log",
            args=list(args or []),
        )
        self.nodes.append(node)
        return node.start()

    def runs(self, job_id: str) -> list[Run]:
        """The runs of one job's task body, in the order they started."""
        path = self.runs_dir / job_id
        if not path.exists():
            return []
        runs: list[Run] = []
        open_runs: dict[tuple[str, int], Run] = {}
        for line in path.read_text().splitlines():
            what, node, attempt, at = line.split()
            key = (node, int(attempt))
            if what == "start":
                run = Run(node, int(attempt), float(at), None, "")
                open_runs[key] = run
                runs.append(run)
            else:
                run = open_runs.pop(key)
                run.end, run.how = float(at), what
        return sorted(runs, key=lambda r: r.start)

    def logs(self) -> str:
        return "\n".join(f"--- {n.log_path.name}\n{n.log()}" for n in self.nodes)


@pytest.fixture
def cluster(
    tmp_path: Path, redis_factory: Callable[[], RedisProcess]
) -> Iterator[Callable[[], Cluster]]:
    made: list[Cluster] = []

    def make() -> Cluster:
        runs = tmp_path / "runs"
        runs.mkdir()
        made.append(Cluster(redis_factory(), runs, tmp_path))
        return made[-1]

    yield make
    for c in made:
        for node in c.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGKILL)
                node.proc.wait(timeout=10)


def submit(url: str, client: httpx.Client | None = None, **fields: object) -> httpx.Response:
    post = client.post if client is not None else httpx.post
    return post(f"{url}/v1/jobs", json={"task": "step", **fields}, timeout=15)


def wait_terminal(url: str, job_ids: list[str], timeout: float = 120.0) -> dict[str, dict]:  # type: ignore[type-arg]
    """Every job's final record (long-polls, one job after another)."""
    final: dict[str, dict] = {}  # type: ignore[type-arg]
    with httpx.Client(timeout=15) as client:
        for job_id in job_ids:

            def terminal(job_id: str = job_id) -> dict | None:  # type: ignore[type-arg]
                resp = client.get(f"{url}/v1/jobs/{job_id}", params={"wait": 5})
                assert resp.status_code == 200, resp.text
                job = resp.json()
                return job if job["state"] in TERMINAL else None

            final[job_id] = wait_for(terminal, timeout=timeout)
    return final


def assert_one_node_at_a_time(c: Cluster, job_ids: list[str]) -> None:
    """No two runs of one job overlapped in time: each began after the previous one ended (or,
    for a run cut off by its node's death, after that node stopped renewing its lease)."""
    for job_id in job_ids:
        runs = c.runs(job_id)
        assert runs, f"{job_id} never ran"
        for before, after in itertools.pairwise(runs):
            if before.end is not None:
                assert after.start >= before.end, (job_id, runs)

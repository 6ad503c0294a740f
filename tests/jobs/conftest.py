"""Fixtures for the jobs tests: servers that load :mod:`tests.jobs.apps`, and small helpers.

Every server comes from the shared ``server_factory``, so each test runs once per store
backend (SQLite, Redis) without knowing which one it is on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
APP = "tests.jobs.apps:app"


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """The folder where test tasks record their runs and look for gate files."""
    folder = tmp_path / "runs"
    folder.mkdir()
    return folder


@pytest.fixture
def jobs_server_factory(
    server_factory: Callable[..., ServerProcess], runs: Path
) -> Callable[..., ServerProcess]:
    """Build (not start) a server that serves the test tasks; ``env`` adds settings."""

    def make(
        *,
        env: dict[str, str] | None = None,
        store: str | None = None,
        args: list[str] | None = None,
    ) -> ServerProcess:
        full_env = {
            # The app module is imported by the server; the repo root makes `tests` importable
            # whatever the current directory of the test run.
            "PYTHONPATH": str(REPO_ROOT),
            "OUTLAST_TEST_RUNS": str(runs),
            "OUTLAST_STREAMS__LONG_POLL_TIMEOUT": "0.5",
            "OUTLAST_JOBS__BACKOFF_BASE": "0.05",
            **(env or {}),
        }
        return server_factory(env=full_env, args=["--app", APP, *(args or [])], store=store)

    return make


@pytest.fixture
def jobs_server(jobs_server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """A running server with the test tasks and default settings."""
    return jobs_server_factory().start()


@dataclass
class WorkerProcess:
    """One ``outlast worker`` subprocess (workers only, no listener) on a given store."""

    store: str
    env: dict[str, str]
    log_path: Path
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        command = [sys.executable, "-m", "outlast", "worker", "--store", self.store]
        self.proc = subprocess.Popen(
            [*command, "--app", APP, *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        # Ready once it says so; a worker has no health endpoint.
        wait_for(self._ready, timeout=20)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
        return "serving queues" in self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def worker_factory(runs: Path, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``outlast worker`` processes on a store: ``worker_factory(store, args=[...])``."""
    made: list[WorkerProcess] = []

    def make(store: str, *, args: list[str] | None = None) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OUTLAST_")}
        env.update({"PYTHONPATH": str(REPO_ROOT), "OUTLAST_TEST_RUNS": str(runs)})
        worker = WorkerProcess(
            store, env, tmp_path / f"worker-{len(made)}.log", args=list(args or [])
        )
        made.append(worker)
        return worker.start()

    yield make
    for worker in made:
        if worker.proc is not None and worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait(timeout=10)

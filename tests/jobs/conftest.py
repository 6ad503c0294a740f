"""Fixtures for the jobs tests: servers that load :mod:`tests.jobs.apps`, and small helpers.

Every server comes from the shared ``server_factory``, so each test runs once per store
backend (SQLite, Redis) without knowing which one it is on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServerProcess

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

"""Shared fixtures: real outlast server processes on 127.0.0.1, and a waiting helper.

Servers run as subprocesses (``python -m outlast serve``) so that tests can send them real
signals. Every wait is on a condition with a timeout as a guard, never a bare sleep.

Backends: tests that take the ``backend`` fixture (directly, or through ``server``,
``server_factory``, ``store_url`` or ``inproc``) run once per store backend in :data:`BACKENDS`
(``OUTLAST_TEST_BACKENDS``, see :mod:`tests.tiers`). Redis runs as real ``redis-server``
processes on 127.0.0.1 (``redis_factory``), with AOF and ``appendfsync always`` so that what
outlast acknowledged survives a Redis restart.

Tiers (:mod:`tests.tiers`): a test that starts a process is marked ``slow``, automatically when
it uses one of the fixtures here that start one; ``pytest -m "not slow"`` runs the rest, and
fails any of them that starts a process. ``inproc`` (:mod:`tests.inproc`) runs the app in the
test's process, for tests that need no real server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

# The tiers (slow marks, the no-subprocess guard, the backend list) and the in-process app: their
# hooks and fixtures take effect by being names of this conftest.
from tests.inproc import InProcessServer, inproc, inproc_factory
from tests.tiers import (
    BACKENDS,
    backend_params,
    pytest_collection_modifyitems,
    pytest_runtest_call,
    pytest_runtest_setup,
    pytest_runtest_teardown,
)

__all__ = [
    "BACKENDS",
    "InProcessServer",
    "backend_params",
    "inproc",
    "inproc_factory",
    "pytest_collection_modifyitems",
    "pytest_runtest_call",
    "pytest_runtest_setup",
    "pytest_runtest_teardown",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll *condition* until it returns something truthy; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {condition}")
        time.sleep(interval)


@dataclass
class ServerProcess:
    """One ``outlast serve`` subprocess and what it needs to be restarted on the same store."""

    store: str
    port: int
    env: dict[str, str]
    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    history: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> ServerProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "outlast",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--store",
                self.store,
                *self.args,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, timeout=timeout)
        return self

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        self.history.append(code)
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@dataclass
class RedisProcess:
    """One ``redis-server`` on 127.0.0.1 with its data in its own folder (AOF, fsync always)."""

    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def db_url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 10.0) -> RedisProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        exe = shutil.which("redis-server")
        assert exe is not None, "redis-server is needed: scripts/test installs it"
        self.dir.mkdir(parents=True, exist_ok=True)
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(
            [
                exe,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                log_text = (self.dir / "redis.log").read_text(errors="replace")
                code = self.proc.returncode
                raise AssertionError(f"redis-server exited with {code}:\n{log_text}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    return sock.recv(64).startswith(b"+PONG")
            except OSError:
                return False

        wait_for(ready, timeout=timeout)
        return self

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """SIGTERM: redis-server flushes its AOF and exits. SIGKILL: it dies at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)
            self.proc.wait(timeout=30)


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[[], RedisProcess]]:
    """Start real ``redis-server`` processes: ``redis_factory()``; each is stopped afterwards."""
    started: list[RedisProcess] = []

    def make() -> RedisProcess:
        server = RedisProcess(port=free_port(), dir=tmp_path / f"redis-{len(started)}")
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop(signal.SIGKILL)


@pytest.fixture(params=backend_params())
def backend(request: pytest.FixtureRequest) -> str:
    """The store backend a test runs on; tests that use it run once per backend."""
    return str(request.param)


@pytest.fixture
def store_url_factory(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[[], str]:
    """Fresh, empty stores of the test's backend: a new SQLite file, or a new Redis database
    (0-15) on one ``redis-server`` started for the test."""
    made: list[str] = []
    redis: list[RedisProcess] = []
    # Only the Redis variant asks for redis_factory: a SQLite test starts no process.
    redis_factory = request.getfixturevalue("redis_factory") if backend == "redis" else None

    def make() -> str:
        index = len(made)
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path}/outlast-{index}.db"
        elif backend == "redis":
            assert redis_factory is not None
            if not redis:
                redis.append(redis_factory())
            assert index < 16, "one redis-server has 16 databases"
            url = redis[0].db_url(index)
        else:  # pragma: no cover - a backend listed in BACKENDS without a recipe here
            raise AssertionError(f"no store recipe for backend {backend!r}")
        made.append(url)
        return url

    return make


@pytest.fixture
def store_url(store_url_factory: Callable[[], str]) -> str:
    """One fresh, empty store of the test's backend."""
    return store_url_factory()


@pytest.fixture
def server_factory(
    tmp_path: Path, store_url_factory: Callable[[], str]
) -> Iterator[Callable[..., ServerProcess]]:
    """Build (not start) servers: ``server_factory(env={...}, args=[...], store=URL)``.

    Without ``store``, each server gets a fresh store of the test's backend; pass another
    server's ``store`` to share one (a restart, or several nodes on one Redis).
    """
    servers: list[ServerProcess] = []

    def make(
        *,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        store: str | None = None,
    ) -> ServerProcess:
        index = len(servers)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("OUTLAST_")}
        full_env.update(env or {})
        server = ServerProcess(
            store=store or store_url_factory(),
            port=free_port(),
            env=full_env,
            args=list(args or []),
            log_path=tmp_path / f"server-{index}.log",
        )
        servers.append(server)
        return server

    yield make
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            server.signal(signal.SIGKILL)
            server.proc.wait(timeout=10)


@pytest.fixture
def server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """A running server with a short long-poll timeout, on a fresh SQLite store."""
    return server_factory(env={"OUTLAST_STREAMS__LONG_POLL_TIMEOUT": "0.5"}).start()


@pytest.fixture
def upstream() -> Iterator[Any]:
    """A fake upstream (SSE, OpenAI-style, faults) on 127.0.0.1; see tests/fakes/upstream.py."""
    from tests.fakes.upstream import FakeUpstream

    fake = FakeUpstream().start()
    yield fake
    fake.stop()


def upstream_env(fake: Any, name: str = "fake") -> dict[str, str]:
    """Settings that let a server reach the fake upstream (a loopback address)."""
    prefix = f"OUTLAST_UPSTREAMS__{name.upper()}"
    return {
        f"{prefix}__URL": fake.url,
        f"{prefix}__ALLOW_PRIVATE": "true",
        f"{prefix}__HEADERS": '{"Authorization": "Bearer upstream-secret"}',
        "OUTLAST_EGRESS__ALLOWED_HOSTS": '["127.0.0.1"]',
        "OUTLAST_EGRESS__ALLOW_PRIVATE": "true",
    }

"""Shared fixtures: real outlast server processes on 127.0.0.1, and a waiting helper.

Servers run as subprocesses (``python -m outlast serve``) so that tests can send them real
signals. Every wait is on a condition with a timeout as a guard, never a bare sleep.
"""

from __future__ import annotations

import os
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


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Build (not start) servers: ``server_factory(env={...}, args=[...])``."""
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
            store=store or f"sqlite:///{tmp_path}/outlast-{index}.db",
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

"""Log lines for people on a terminal, JSON lines for machines (docs/operations.md#logs): a real
``outlast serve`` with a pseudo-terminal or a pipe as its stderr, and ``--log-format``."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, wait_for

# Every test here starts `outlast` processes.
pytestmark = pytest.mark.slow

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _serve(tmp_path: Path, *, terminal: bool, args: list[str], env: dict[str, str]) -> str:
    """Run ``outlast serve`` until it answers a request, stop it, and return its stderr."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OUTLAST_")}
    full_env.update(env)
    command = [
        sys.executable,
        *("-m", "outlast", "serve", "--port", str(port)),
        *("--store", f"sqlite:///{tmp_path}/logs-{port}.db"),
        *args,
    ]
    chunks: list[bytes] = []
    if terminal:
        master, slave = pty.openpty()
        proc = subprocess.Popen(command, env=full_env, stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)

        def drain() -> None:
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the last writer closed the terminal
                    return
                if not data:
                    return
                chunks.append(data)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
    else:
        proc = subprocess.Popen(
            command, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    try:

        def healthy() -> bool:
            assert proc.poll() is None, b"".join(chunks).decode(errors="replace")
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, timeout=20)
        proc.send_signal(signal.SIGTERM)
        if terminal:
            assert proc.wait(timeout=30) == 0
            reader.join(timeout=10)
            return b"".join(chunks).decode(errors="replace")
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0
        return err.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
        if terminal:
            reader.join(timeout=10)
            with contextlib.suppress(OSError):  # closed already on the way out
                os.close(master)


def _assert_json(output: str) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines
    parsed = [json.loads(line) for line in lines]  # every line is a JSON object
    assert any(p["msg"].startswith("Started server process") for p in parsed)
    assert any(p.get("path") == "/healthz" and p.get("status") == 200 for p in parsed)


def _assert_text(output: str) -> None:
    plain = ANSI.sub("", output)
    lines = [line for line in plain.splitlines() if line.strip()]
    assert lines
    assert not [line for line in lines if line.lstrip().startswith("{")], plain
    # time, level, logger, message
    assert re.search(
        r"^\d\d:\d\d:\d\d\.\d{3} INFO +uvicorn\.error: Started server process", plain, re.M
    )
    assert re.search(r"outlast\.access: GET /healthz 200 [\d.]+ ms \d+ B", plain), plain


def test_a_terminal_gets_text_lines(tmp_path: Path) -> None:
    output = _serve(tmp_path, terminal=True, args=[], env={})
    _assert_text(output)
    assert "\x1b[32mINFO" in output  # the level in colour, as uvicorn does on a terminal


def test_a_pipe_gets_json_lines(tmp_path: Path) -> None:
    _assert_json(_serve(tmp_path, terminal=False, args=[], env={}))


@pytest.mark.parametrize(
    ("terminal", "args", "env", "expected"),
    [
        (True, ["--log-format", "json"], {}, "json"),
        (False, ["--log-format", "text"], {}, "text"),
        (False, [], {"OUTLAST_LOGS__FORMAT": "text"}, "text"),
        (True, ["--log-format", "json"], {"OUTLAST_LOGS__FORMAT": "text"}, "json"),
    ],
)
def test_the_format_can_be_chosen(
    tmp_path: Path, terminal: bool, args: list[str], env: dict[str, str], expected: str
) -> None:
    output = _serve(tmp_path, terminal=terminal, args=args, env=env)
    if expected == "json":
        _assert_json(output)
    else:
        _assert_text(output)


def test_worker_takes_the_flag_too() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "outlast", "worker", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--log-format [auto|text|json]" in result.stdout

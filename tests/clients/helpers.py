"""What the real-client tests share: the events a job's native SSE view must deliver, read
independently from the job's durable stream, and a subprocess whose output lines are collected
as they come."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Any

from tests.conftest import ServerProcess
from tests.relay.helpers import all_messages

CLIENTS = Path(__file__).parent


def expected_events(server: ServerProcess, job_id: str) -> list[tuple[str, Any]]:
    """``(event type, data)`` of every message of the job's stream, as the SSE view renders
    them: upstream events under their own type, the rest as ``outlast.<type>`` JSON."""
    out: list[tuple[str, Any]] = []
    for message in all_messages(server, job_id):
        if message["type"] == "event":
            out.append((message.get("event") or "message", message["data"]))
        else:
            out.append((f"outlast.{message['type']}", message))
    return out


def as_received(event: str, data: str) -> tuple[str, Any]:
    return (event, json.loads(data) if event.startswith("outlast.") else data)


class LineReader:
    """Runs a command and gathers its stdout lines in a thread (the test waits on them)."""

    def __init__(self, args: list[str], **popen: Any) -> None:
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
        )
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.lines) if line.startswith("{")]

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self._thread.join(timeout=10)
        return code

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def close(self) -> None:
        """Kill it if it still runs, and release its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._thread.join(timeout=10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

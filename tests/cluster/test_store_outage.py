"""A Redis outage seen from the nodes: a few log lines rather than a storm, little CPU, ``/readyz``
503 while the store cannot be reached, and the work waiting in the store done once it is back."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.cluster.conftest import Cluster, submit, wait_terminal
from tests.conftest import wait_for

pytestmark = pytest.mark.slow

# How long the outage is watched. Each loop that calls the store backs off up to a few seconds
# between calls; the log says "unreachable" once, then one summary per half a minute.
WINDOW = 5.0
MAX_LINES = 10  # per node, in the window
MAX_CPU_SHARE = 0.25  # of one core, per node, in the window


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def _readyz(url: str) -> int:
    return httpx.get(f"{url}/readyz", timeout=5).status_code


def test_a_redis_outage_is_quiet_cheap_and_shown_by_readyz(cluster: Callable[[], Cluster]) -> None:
    c = cluster()
    a = c.serve("a")
    w = c.worker("w")
    assert _readyz(a.url) == 200
    # Work that waits in the store through the outage: due only once Redis is gone.
    ids = [submit(a.url, input={"ms": 1, "n": n}, delay=1.0).json()["id"] for n in range(10)]

    c.redis.stop(signal.SIGKILL)
    wait_for(lambda: _readyz(a.url) == 503, timeout=15)
    resp = httpx.get(f"{a.url}/readyz", timeout=5)
    assert resp.json()["error"]["code"] == "store_unreachable"
    assert "Retry-After" in resp.headers
    wait_for(lambda: "store unreachable" in w.log(), timeout=15)

    # A measurement window, not a synchronisation: nothing is waited for, only counted.
    nodes = [a, w]
    assert all(n.proc is not None for n in nodes)
    lines = [len(n.log().splitlines()) for n in nodes]
    cpu = [_cpu_seconds(n.proc.pid) for n in nodes]  # type: ignore[union-attr]
    started = time.monotonic()
    time.sleep(WINDOW)
    elapsed = time.monotonic() - started
    for node, lines_before, cpu_before in zip(nodes, lines, cpu, strict=True):
        assert node.proc is not None
        written = node.log().splitlines()[lines_before:]
        assert len(written) <= MAX_LINES, "\n".join(written[:50])
        used = _cpu_seconds(node.proc.pid) - cpu_before
        assert used <= MAX_CPU_SHARE * elapsed, (node.log_path.name, used, elapsed)
        # The state change is said, not each failed call.
        assert "store unreachable" in node.log(), node.log()

    c.redis.start()
    wait_for(lambda: _readyz(a.url) == 200, timeout=30)
    final = wait_terminal(a.url, ids, timeout=60)
    assert {job["state"] for job in final.values()} == {"succeeded"}, c.logs()
    for node in nodes:
        wait_for(lambda node=node: "store reachable again" in node.log(), timeout=30)
    assert "Traceback" not in c.logs(), c.logs()

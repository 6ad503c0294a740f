"""Units of ``serve --workers N`` (docs/operations.md, "Several processes: --workers"); the
processes themselves are tested in ``tests/jobs/test_workers.py``."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from outlast import cli
from outlast.config import load_settings
from outlast.metrics import Metrics
from outlast.supervisor import bind_shared, process_count, sweep_stale_peer_dirs


def test_workers_0_means_one_process_per_core(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./outlast.toml
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    settings = load_settings(environ={}, overrides={"server": {"workers": 0}})
    assert process_count(settings) == 6
    settings = load_settings(environ={}, overrides={"server": {"workers": 3}})
    assert process_count(settings) == 3


def test_every_process_listens_on_the_port_the_parent_reserved() -> None:
    reserved = bind_shared("127.0.0.1", 0, listen=False)
    port = reserved.getsockname()[1]
    listeners = [bind_shared("127.0.0.1", port, listen=True) for _ in range(2)]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # accepted by one of the two listeners' queues
        # Another program (no SO_REUSEPORT) cannot take the port meanwhile.
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
    finally:
        for sock in (*listeners, reserved):
            sock.close()


def test_metrics_of_one_of_several_processes_carry_its_pid() -> None:
    alone, among = Metrics(), Metrics(pid_label=True)
    for metrics in (alone, among):
        metrics.stream_appends.inc()
    assert b"pid=" not in alone.render().body
    body = among.render().body.decode()
    assert f'outlast_stream_appends_total{{pid="{os.getpid()}"}} 1.0' in body


def test_serve_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--workers N`` is the number of processes; ``--no-jobs`` (and the old ``--no-workers``,
    with a warning) makes the API run alone."""
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(cli, "_run", lambda *args, **flags: seen.append(flags))
    runner = CliRunner()
    assert runner.invoke(cli.main, ["serve", "--workers", "2", "--no-jobs"]).exit_code == 0
    old = runner.invoke(cli.main, ["serve", "--no-workers"])
    assert old.exit_code == 0 and "deprecated" in old.output
    assert runner.invoke(cli.main, ["serve", "--workers", "-1"]).exit_code == 2
    assert [(f["workers"], f["run_jobs"]) for f in seen] == [(2, False), (None, False)]


def test_wake_up_directories_of_parents_that_are_gone_are_swept(tmp_path: Path) -> None:
    # A parent killed with SIGKILL leaves its directory; the next supervisor removes it, and
    # only such directories.
    dead = next(
        pid for pid in range(4_000_000, 1, -1) if not Path(f"/proc/{pid}").exists()
    )  # beyond or below pid_max, a pid no process has
    gone = tmp_path / f"outlast-peers-{dead}-abc"
    alive = tmp_path / f"outlast-peers-{os.getpid()}-def"
    old_style = tmp_path / "outlast-peers-xyz"  # no pid: not ours to judge
    other = tmp_path / f"other-{dead}-abc"
    for path in (gone, alive, old_style, other):
        path.mkdir()
    (gone / "0.sock").write_bytes(b"")
    assert sweep_stale_peer_dirs(str(tmp_path)) == [str(gone)]
    assert not gone.exists()
    assert alive.exists() and old_style.exists() and other.exists()

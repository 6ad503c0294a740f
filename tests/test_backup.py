"""``outlast backup``: a consistent copy of a live SQLite store, made while a real server runs
jobs, that ``outlast serve`` opens (docs/operations.md, "Backups")."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from outlast import Client
from outlast.cli import main
from outlast.models import JobState
from outlast.store.backup import backup_sqlite
from tests.conftest import ServerProcess, wait_for
from tests.test_client import APP, WAIT, app_env


class Load:
    """Jobs submitted one after another from a thread until stopped, each waited for."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.submitted = 0
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        try:
            with Client(self.url) as client:
                while not self.stop.is_set():
                    job = client.submit("count", {"n": 5})
                    self.submitted += 1
                    client.wait(job.id, timeout=WAIT)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def __enter__(self) -> Load:
        self.thread.start()
        wait_for(lambda: self.submitted >= 3 or self.errors, timeout=WAIT)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=WAIT)
        assert not self.errors, self.errors


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_backup_made_while_jobs_run_opens_with_every_job_before_it(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    live = f"sqlite:///{tmp_path}/live.db"
    server = server_factory(env=app_env(), args=["--app", APP], store=live).start()
    gate = tmp_path / "gate"
    with Client(server.url) as client:
        before = [client.submit("count", {"n": 3}) for _ in range(20)]
        done = [client.wait(job.id, timeout=WAIT) for job in before]
        assert all(job.state == JobState.SUCCEEDED for job in done)
        held = client.submit("steps", {"gate": str(gate), "n": 2})  # running during the copy
        wait_for(lambda: client.get(held.id).state == JobState.RUNNING, timeout=WAIT)
        dest = tmp_path / "copy.db"
        with Load(server.url):
            proc = subprocess.run(
                [sys.executable, "-m", "outlast", "backup", str(dest), "--store", live],
                capture_output=True,
                text=True,
                timeout=120,
            )
        gate.touch()
        assert proc.returncode == 0, proc.stderr
        assert f"backed up {tmp_path}/live.db to {dest}" in proc.stdout
        assert client.wait(held.id, timeout=WAIT).state == JobState.SUCCEEDED
    server.signal(2)
    server.wait_exit()

    assert integrity(dest) == "ok"
    assert not dest.with_name("copy.db.partial").exists()
    copy = server_factory(env=app_env(), store=f"sqlite:///{dest}").start()  # no workers' app
    with Client(copy.url) as client:
        for job in done:
            found = client.get(job.id)
            assert found.state == JobState.SUCCEEDED and found.result == {"n": 3}
            outputs = [e.message for e in client.events(job.id) if e.type == "output"]
            assert len(outputs) == 3
        assert client.get(held.id).state == JobState.RUNNING  # as it was at the backup


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_backup_in_small_steps_is_one_snapshot_while_another_process_writes(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """One page per step, a server writing between the steps: the copy is still whole."""
    live = f"sqlite:///{tmp_path}/live.db"
    server = server_factory(env=app_env(), args=["--app", APP], store=live).start()
    steps: list[tuple[int, int]] = []
    with Load(server.url) as load:
        backup_sqlite(
            live, tmp_path / "copy.db", progress=lambda *a: steps.append(a), pages_per_step=1
        )
        during = load.submitted
    assert len(steps) > 10 and steps[-1][0] == steps[-1][1]
    assert integrity(tmp_path / "copy.db") == "ok"
    with sqlite3.connect(tmp_path / "copy.db") as conn:
        jobs = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        counted = conn.execute("SELECT SUM(n) FROM job_counts").fetchone()[0]
    assert jobs == counted and 3 <= jobs <= during + 1
    server.signal(2)
    server.wait_exit()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--store", "redis://127.0.0.1:6379/0"], "copies a SQLite store"),
        (["--store", "sqlite:///{tmp}/missing.db"], "no sqlite store at"),
        (["--store", "sqlite:///{tmp}/live.db"], "already exists"),
    ],
)
def test_backup_refusals_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "live.db").touch()
    dest = tmp_path / "live.db"  # exists: only the last case gets that far
    args = [a.format(tmp=tmp_path) for a in args]
    result = CliRunner().invoke(main, ["backup", str(dest), *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "missing.db").exists()

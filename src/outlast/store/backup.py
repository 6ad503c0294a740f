"""A consistent copy of a live SQLite store: ``outlast backup DEST`` (docs/operations.md).

The copy is made with SQLite's online backup API from one read transaction, so it is the store
as of one moment (the moment the backup starts) while servers and workers keep writing: in WAL
mode a reader never blocks writers, nor they it. Pages are copied in steps, so that a progress
display can follow a large file. The copy is written next to DEST, checked, flushed to disk,
then renamed to DEST: DEST either does not exist or is a complete store.

Redis is backed up by Redis itself (its RDB and AOF files): see docs/redis.md.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from outlast.errors import ConfigError, StoreError
from outlast.store.sqlite import _path_from_url
from outlast.store.sqlite_engine import OPEN_TIMEOUT
from outlast.store.versions import sqlite_version

# Pages copied per step of the backup (4 MiB with SQLite's default 4 KiB pages).
PAGES_PER_STEP = 1024

Progress = Callable[[int, int], None]  # (bytes copied, bytes in all)


@dataclass(frozen=True, slots=True)
class BackupResult:
    source: str
    dest: str
    bytes: int
    schema_version: int
    jobs: int
    streams: int


def backup_sqlite(
    store_url: str,
    dest: str | os.PathLike[str],
    *,
    progress: Progress | None = None,
    pages_per_step: int = PAGES_PER_STEP,
) -> BackupResult:
    """Copy the SQLite store at *store_url* to the new file *dest*."""
    if urlsplit(store_url).scheme != "sqlite":
        raise ConfigError(
            f"outlast backup copies a SQLite store, not {store_url!r}: a Redis store is backed "
            "up with Redis's own files (docs/redis.md)"
        )
    source = _path_from_url(store_url)
    target = Path(dest)
    if not Path(source).is_file():
        raise ConfigError(f"no sqlite store at {source}")
    if target.exists():
        raise ConfigError(f"{target} already exists: outlast backup writes a new file")
    if not target.parent.is_dir():
        raise ConfigError(f"directory for the backup does not exist: {target.parent}")
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)  # left by a backup that was interrupted
    try:
        version = _copy(source, partial, progress, pages_per_step)
        jobs, streams = _check(partial)
        _flush(partial)
        partial.replace(target)
        _flush(target.parent)
    except sqlite3.Error as exc:
        raise StoreError(f"backup of {source} failed: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return BackupResult(source, str(target), target.stat().st_size, version, jobs, streams)


def _copy(source: str, partial: Path, progress: Progress | None, pages_per_step: int) -> int:
    src = sqlite3.connect(source, isolation_level=None, timeout=OPEN_TIMEOUT)
    try:
        # One read transaction for every step: the copy is one snapshot, and writes made by
        # other connections meanwhile do not restart it.
        src.execute("BEGIN")
        version = sqlite_version(src)
        page = int(src.execute("PRAGMA page_size").fetchone()[0])
        dst = sqlite3.connect(partial, isolation_level=None)
        try:

            def step(_status: int, remaining: int, total: int) -> None:
                if progress is not None:
                    progress((total - remaining) * page, total * page)

            src.backup(dst, pages=pages_per_step, progress=step)
        finally:
            dst.close()
        src.execute("COMMIT")
    finally:
        src.close()
    return version


def _check(path: Path) -> tuple[int, int]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
        if verdict != "ok":
            raise StoreError(f"the backup copy failed its check: {verdict}")
        jobs = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        streams = conn.execute("SELECT COUNT(*) FROM streams WHERE deleted = 0").fetchone()[0]
        return int(jobs), int(streams)
    finally:
        conn.close()


def _flush(path: Path) -> None:
    """fsync a file or a directory (so that a rename into it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # some file systems refuse fsync on directories
            os.fsync(fd)
    finally:
        os.close(fd)


def backup_command(store_url: str, dest: str) -> None:
    """``outlast backup``: the copy, with a progress bar on a terminal and a summary line."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    console = Console(file=sys.stderr, highlight=False)
    columns = (BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(
        "[progress.description]{task.description}",
        *columns,
        console=console,
        disable=not console.is_terminal,
        transient=True,
    ) as bar:
        task = bar.add_task("backing up", total=None)

        def show(copied: int, total: int) -> None:
            bar.update(task, completed=copied, total=total)

        result = backup_sqlite(store_url, dest, progress=show)
    print(
        f"backed up {result.source} to {result.dest}: {result.bytes:,} bytes, "
        f"{result.jobs:,} jobs, {result.streams:,} streams (schema version "
        f"{result.schema_version})"
    )

"""The ``outlast`` command: parse arguments, call one library function."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import click

from outlast.config import Settings, load_settings
from outlast.errors import ConfigError, StoreError


def _overrides(log_format: str | None = None, **flags: Any) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    server = {key: value for key, value in flags.items() if value is not None}
    if server:
        overrides["server"] = server
    if log_format is not None:
        overrides["logs"] = {"format": log_format}
    return overrides


_log_format_option = click.option(
    "--log-format",
    type=click.Choice(["auto", "text", "json"]),
    help="text for people, json for machines; auto (default): text when stderr is a terminal.",
)


@click.group()
@click.version_option(package_name="outlast")
def main() -> None:
    """outlast: finish the work an HTTP request starts."""


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="outlast.toml")
@click.option("--host", help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to bind (default 8787).")
@click.option("--store", help="Store URL: sqlite:///path/outlast.db or redis://host:port/db.")
@click.option("--app", "app_path", help="module:attr holding an outlast.App.")
@click.option("--grace", type=float, help="Seconds running jobs get at shutdown (default 30).")
@click.option(
    "--insecure", is_flag=True, default=None, help="Allow a non-loopback bind without tokens."
)
@click.option(
    "--workers",
    type=click.IntRange(min=0, max=256),
    help="Processes serving the port (default 1; 0 = one per core).",
)
@click.option("--jobs/--no-jobs", "run_jobs", default=None, help="Run job workers (default: yes).")
@click.option("--no-workers", "no_workers", is_flag=True, hidden=True)  # deprecated: --no-jobs
@click.option("--log-level", default="info", show_default=True)
@_log_format_option
def serve(
    config_path: str | None,
    host: str | None,
    port: int | None,
    store: str | None,
    app_path: str | None,
    grace: float | None,
    insecure: bool | None,
    workers: int | None,
    run_jobs: bool | None,
    no_workers: bool,
    log_level: str,
    log_format: str | None,
) -> None:
    """Run the API and the job workers (in one process, or --workers N processes)."""
    from outlast import server

    if no_workers:
        click.echo("warning: --no-workers is deprecated: use --no-jobs", err=True)
        run_jobs = False if run_jobs is None else run_jobs

    def start(settings: Settings) -> Coroutine[Any, Any, None]:
        from outlast import supervisor

        if supervisor.process_count(settings) > 1:
            return supervisor.supervise(settings, log_level)
        return server.serve(settings)

    _run(
        log_level,
        log_format,
        config_path,
        start,
        host=host,
        port=port,
        store=store,
        app=app_path,
        grace=grace,
        insecure=insecure,
        workers=workers,
        run_jobs=run_jobs,
    )


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="outlast.toml")
@click.option("--store", help="Store URL: sqlite:///path/outlast.db or redis://host:port/db.")
@click.option("--app", "app_path", help="module:attr holding an outlast.App.")
@click.option("--grace", type=float, help="Seconds running jobs get at shutdown (default 30).")
@click.option("--log-level", default="info", show_default=True)
@_log_format_option
def worker(
    config_path: str | None,
    store: str | None,
    app_path: str | None,
    grace: float | None,
    log_level: str,
    log_format: str | None,
) -> None:
    """Run workers only (no HTTP listener)."""
    from outlast import server

    _run(
        log_level,
        log_format,
        config_path,
        lambda settings: server.work(settings),
        store=store,
        app=app_path,
        grace=grace,
    )


@main.command()
@click.argument("dest", type=click.Path(dir_okay=False))
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="outlast.toml")
@click.option("--store", help="Store URL (default: the configured one): sqlite:///path/outlast.db")
def backup(dest: str, config_path: str | None, store: str | None) -> None:
    """Copy a SQLite store, consistently, to the new file DEST while it is in use."""
    from outlast.store.backup import backup_command

    try:
        settings = load_settings(config_path, overrides=_overrides(store=store))
        backup_command(settings.server.store, dest)
    except (ConfigError, StoreError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)


def _run(
    log_level: str,
    log_format: str | None,
    config_path: str | None,
    main: Callable[[Settings], Coroutine[Any, Any, None]],
    **flags: Any,
) -> None:
    from outlast.logs import configure_logging, use_log_format
    from outlast.server import run

    configure_logging(log_level)
    # The flag's format (or auto) until the settings are read: a bad config file is reported.
    use_log_format(log_format or "auto")
    # The current directory is importable, as for `python -m`: --app names the user's module.
    sys.path.insert(0, os.getcwd())
    try:
        settings = load_settings(config_path, overrides=_overrides(log_format, **flags))
        if settings.logs.format != (log_format or "auto"):  # from outlast.toml or the env
            configure_logging(log_level)
            use_log_format(settings.logs.format)
        run(main(settings))
    except ConfigError as exc:
        logging.getLogger("outlast").error("%s", exc)
        sys.exit(2)
    except StoreError as exc:
        # The store could not be opened (say Redis is unreachable): one clear line, no trace.
        logging.getLogger("outlast").error("%s", exc)
        sys.exit(1)


def _register_client_commands() -> None:
    """Client commands (submit, tail, jobs, cancel) live in outlast.cli_client when present."""
    try:
        cli_client = importlib.import_module("outlast.cli_client")
    except ModuleNotFoundError:  # pragma: no cover - during development only
        return
    cli_client.register(main)


_register_client_commands()


if __name__ == "__main__":  # pragma: no cover
    main()

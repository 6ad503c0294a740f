"""The commands on queues: ``queues`` (the list), ``pause`` and ``resume``."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table
from rich.text import Text

from outlast.cli_common import connect, connection_options, json_line, stdout_console


def _queues_table(found: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for title in ("QUEUE", "PAUSED", "QUEUED", "RUNNING", "CONCURRENCY", "CAPACITY"):
        table.add_column(title, no_wrap=True, justify="left" if title == "QUEUE" else "right")
    for queue in found:
        table.add_row(
            str(queue.get("name")),
            Text("paused", style="yellow") if queue.get("paused") else Text("no"),
            str(queue.get("queued", 0)),
            str(queue.get("running", 0)),
            str(queue.get("concurrency", "")),
            str(queue.get("capacity", "")),
        )
    return table


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@connection_options
def queues(as_json: bool, url: str, token: str | None) -> None:
    """List the queues: waiting and running jobs, limits, and whether each is paused."""
    with connect(url, token) as client:
        found = client.queues()
    if as_json:
        for queue in found:
            click.echo(json_line(queue))
        return
    stdout_console().print(_queues_table(found))


def _set_paused(queue: str, paused: bool, url: str, token: str | None) -> None:
    with connect(url, token) as client:
        shown = client.pause(queue) if paused else client.resume(queue)
    state = "paused" if shown.get("paused") else "running"
    click.echo(
        f"{queue}: {state} ({shown.get('queued', 0)} queued, {shown.get('running', 0)} running)"
    )


@click.command()
@click.argument("queue")
@connection_options
def pause(queue: str, url: str, token: str | None) -> None:
    """Pause QUEUE on every node: jobs are still accepted, none starts (running ones finish)."""
    _set_paused(queue, True, url, token)


@click.command()
@click.argument("queue")
@connection_options
def resume(queue: str, url: str, token: str | None) -> None:
    """Resume a paused QUEUE: its waiting jobs start."""
    _set_paused(queue, False, url, token)

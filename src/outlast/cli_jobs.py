"""The commands on jobs already submitted: ``jobs`` (the list), ``cancel`` and ``retry``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from itertools import islice

import click
from rich.table import Table
from rich.text import Text

from outlast.cli_common import (
    STATE_STYLES,
    connect,
    connection_options,
    json_line,
    stderr_console,
    stdout_console,
)
from outlast.client import JobInfo
from outlast.models import JobState

DEFAULT_JOBS_LIMIT = 20
MAX_PAGE_SIZE = 100


@click.command()
@click.option("--state", type=click.Choice([state.value for state in JobState]))
@click.option("--queue", help="Only this queue.")
@click.option("--task", help="Only this task.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=DEFAULT_JOBS_LIMIT,
    show_default=True,
    help="At most this many jobs (newest first).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@connection_options
def jobs(
    state: str | None,
    queue: str | None,
    task: str | None,
    limit: int,
    as_json: bool,
    url: str,
    token: str | None,
) -> None:
    """List jobs, newest first."""
    with connect(url, token) as client:
        found = list(
            islice(
                client.iter_jobs(
                    state=state, queue=queue, task=task, page_size=min(limit, MAX_PAGE_SIZE)
                ),
                limit,
            )
        )
    if as_json:
        for job in found:
            click.echo(json_line(job.raw))
        return
    if not found:
        stderr_console().print("no jobs")
        return
    stdout_console().print(_jobs_table(found))


def _age(job: JobInfo, now: datetime) -> str:
    """How long ago the job was created, in its largest unit: 12s, 5m, 3h, 2d."""
    if job.created_at is None:
        return ""
    seconds = max(0, int((now - job.created_at).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _jobs_table(found: list[JobInfo]) -> Table:
    # Only the task name may shrink on a narrow terminal: ids and states stay whole.
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("ID", no_wrap=True)
    table.add_column("TASK", overflow="ellipsis", no_wrap=True)
    table.add_column("QUEUE", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    table.add_column("ATTEMPT", justify="right", no_wrap=True)
    table.add_column("AGE", justify="right", no_wrap=True)
    now = datetime.now(UTC)
    for job in found:
        table.add_row(
            job.id,
            job.task,
            job.queue,
            Text(job.state.value, style=STATE_STYLES[job.state]),
            f"{job.attempt}/{job.max_attempts}",
            _age(job, now),
        )
    return table


@click.command()
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Wait until the job has stopped.")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@connection_options
def cancel(job_id: str, wait: bool, as_json: bool, url: str, token: str | None) -> None:
    """Cancel a job (a running one stops within a second); a finished job is left as it is."""
    with connect(url, token) as client:
        job = client.cancel(job_id)
        if wait and not job.terminal:
            job = client.wait(job_id)
    if as_json:
        click.echo(json.dumps(job.raw, indent=2, ensure_ascii=False))
    elif job.terminal and job.state != JobState.CANCELLED:
        click.echo(f"{job.id}: already {job.state.value}")  # it finished first
    elif job.terminal:
        click.echo(f"{job.id}: {job.state.value}")
    else:
        click.echo(f"{job.id}: cancelling ({job.state.value})")


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the new job as JSON.")
@connection_options
def retry(job_id: str, as_json: bool, url: str, token: str | None) -> None:
    """Run a failed or cancelled job again, as a new job; prints the new job's id."""
    with connect(url, token) as client:
        job = client.retry(job_id)
    click.echo(json.dumps(job.raw, indent=2, ensure_ascii=False) if as_json else job.id)

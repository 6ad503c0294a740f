"""The ``submit`` command: one job (``--follow`` prints its output live), or a file of jobs
submitted in batches (``--batch``)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any, NoReturn

import click

from outlast.cli_common import (
    EXIT_REFUSED,
    connect,
    connection_options,
    json_line,
    parse_input,
    stderr_console,
)
from outlast.cli_follow import follow_job
from outlast.client import BatchResult, ClientError


@click.command()
@click.argument("task", required=False)
@click.option("--input", "input_", metavar="JSON", help="The task's input: JSON, @file or -.")
@click.option(
    "--batch",
    "batch_file",
    metavar="FILE",
    help="Submit the jobs in FILE (- for stdin) in batches of 1,000: a JSON array of job "
    "requests, or one per line (JSON lines). The options below apply to the jobs without them.",
)
@click.option("--queue", help="Queue (default: the task's own).")
@click.option("--timeout", type=float, help="Seconds per attempt.")
@click.option("--retries", type=click.IntRange(min=0), help="Retries after a failed attempt.")
@click.option("--delay", type=click.FloatRange(min=0), help="Seconds before the first attempt.")
@click.option("--key", help="Idempotency key: the same key gives back the same job.")
@click.option("--callback", metavar="URL", help="POST the job's end to URL (docs/webhooks.md).")
@click.option(
    "--priority", type=click.IntRange(-100, 100), help="-100 to 100; higher runs first (0)."
)
@click.option(
    "--concurrency-key", help="Jobs of one key share the queue's per_key_concurrency limit."
)
@click.option("--follow", "-f", is_flag=True, help="Print live output until the job ends.")
@click.option("--json", "as_json", is_flag=True, help="With --follow: every event as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="Without --follow: print only the job id.")
@connection_options
def submit(
    task: str | None,
    input_: str | None,
    batch_file: str | None,
    queue: str | None,
    timeout: float | None,
    retries: int | None,
    delay: float | None,
    key: str | None,
    callback: str | None,
    priority: int | None,
    concurrency_key: str | None,
    follow: bool,
    as_json: bool,
    quiet: bool,
    url: str,
    token: str | None,
) -> None:
    """Submit a job for TASK; with --follow, print its output live and exit with its outcome.
    With --batch FILE, submit the jobs in FILE instead and print each one's status."""
    if batch_file is not None:
        if task is not None or input_ is not None or key is not None or follow:
            raise click.UsageError(
                "--batch takes its jobs from FILE: no TASK, --input, --key or -f"
            )
        defaults = {
            "queue": queue,
            "timeout": timeout,
            "retries": retries,
            "delay": delay,
            "callback": callback,
            "priority": priority,
            "concurrency_key": concurrency_key,
        }
        given = {name: value for name, value in defaults.items() if value is not None}
        jobs = [{**given, **job} for job in _read_batch(batch_file)]
        _submit_batch(jobs, as_json=as_json, quiet=quiet, url=url, token=token)
    if task is None:
        raise click.UsageError("missing TASK (or --batch FILE)")
    value = parse_input(input_)
    with connect(url, token) as client:
        job = client.submit(
            task,
            value,
            queue=queue,
            timeout=timeout,
            retries=retries,
            delay=delay,
            key=key,
            callback=callback,
            priority=priority,
            concurrency_key=concurrency_key,
        )
        if follow:
            follow_job(client, job, offset=None, as_json=as_json)
        click.echo(job.id if quiet else json.dumps(job.raw, indent=2, ensure_ascii=False))


def _read_batch(path: str) -> list[dict[str, Any]]:
    """``--batch``: the job requests in *path* (``-``: stdin), a JSON array or JSON lines."""
    source = "stdin" if path == "-" else path
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as file:
                text = file.read()
    except OSError as exc:
        raise click.BadParameter(
            f"cannot read {path}: {exc.strerror}", param_hint="--batch"
        ) from exc
    except UnicodeDecodeError as exc:
        raise click.BadParameter(f"{source} is not UTF-8 text", param_hint="--batch") from exc
    found: list[tuple[str, Any]] = []
    if text.lstrip().startswith("["):
        try:
            entries = json.loads(text)
        except ValueError as exc:
            raise click.BadParameter(
                f"{source}: not a JSON array: {exc}", param_hint="--batch"
            ) from exc
        found = [(f"{source}: job {n}", entry) for n, entry in enumerate(entries)]
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                found.append((f"{source} line {number}", json.loads(line)))
            except ValueError as exc:
                raise click.BadParameter(
                    f"{source} line {number}: not JSON: {exc}", param_hint="--batch"
                ) from exc
    for where, entry in found:
        if not isinstance(entry, dict):
            message = f'{where}: a job is a JSON object such as {{"task": "echo"}}'
            raise click.BadParameter(message, param_hint="--batch")
    if not found:
        raise click.BadParameter(f"{source} holds no jobs", param_hint="--batch")
    return [entry for _, entry in found]


def _submit_batch(
    jobs: list[dict[str, Any]], *, as_json: bool, quiet: bool, url: str, token: str | None
) -> NoReturn:
    """Submit *jobs* a batch at a time; print one line per job and a summary; exit 0 when every
    job was admitted (or found by its key), else with :data:`EXIT_REFUSED`."""
    statuses: Counter[int] = Counter()

    def show(results: list[BatchResult]) -> None:
        for result in results:
            number = sum(statuses.values())
            statuses[result.status] += 1
            if as_json:
                entry = result.job.raw if result.job is not None else None
                error = result.error.body if result.error is not None else None
                click.echo(json_line(error or {"status": result.status, "job": entry}))
            elif result.job is not None:
                click.echo(
                    result.job.id if quiet else f"{number}\t{result.status}\t{result.job.id}"
                )
            elif not quiet and result.error is not None:
                error = result.error
                click.echo(f"{number}\t{result.status}\t{error.code}: {error.message}")

    with connect(url, token) as client:
        try:
            client.submit_many(jobs, on_batch=show)
        except ClientError:
            if statuses:
                done = sum(statuses.values())
                stderr_console().print(f"jobs 0 to {done - 1} were sent (above); no later one")
            raise
    refused = sum(n for status, n in statuses.items() if status >= 400)
    summary = f"{len(jobs)} jobs: {statuses[202]} admitted, {statuses[200]} already there"
    if refused:
        detail = ", ".join(f"{n} × {s}" for s, n in sorted(statuses.items()) if s >= 400)
        summary += f", {refused} refused ({detail})"
    stderr_console().print(summary, soft_wrap=True, style="red" if refused else None)
    sys.exit(EXIT_REFUSED if refused else 0)

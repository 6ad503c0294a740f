"""The client commands: ``submit``, ``tail``, ``jobs``, ``cancel``.

Each one parses its arguments and calls :class:`outlast.Client`; this module only decides how
things look. Live output goes to stdout, one line per output (so it pipes well); the progress
display and every message for people go to stderr. Exit codes (:data:`EXIT_CODES`) say what
went wrong without a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import islice
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from outlast.client import (
    DEFAULT_URL,
    TOKEN_ENV,
    URL_ENV,
    APIError,
    AuthError,
    BatchResult,
    Client,
    ClientError,
    InvalidResponse,
    JobEvent,
    JobInfo,
    ServerBusy,
    ServerUnreachable,
)
from outlast.models import JobState

EXIT_JOB_FAILED = 1  # the job failed or was cancelled
EXIT_USAGE = 2  # bad arguments (click's own code for usage errors)
EXIT_REFUSED = 3  # the server answered with an error (404, 422, 429, 401, ...)
EXIT_UNREACHABLE = 4  # no (sensible) answer from the server
EXIT_INTERRUPTED = 130  # Ctrl-C while following; the job goes on
EXIT_CODES = {
    EXIT_JOB_FAILED: "the job failed or was cancelled",
    EXIT_USAGE: "bad arguments or --input",
    EXIT_REFUSED: "the server refused the request",
    EXIT_UNREACHABLE: "the server could not be reached",
    EXIT_INTERRUPTED: "interrupted while following (the job goes on)",
}
STATE_STYLES = {
    JobState.QUEUED: "",
    JobState.RUNNING: "cyan",
    JobState.SUCCEEDED: "green",
    JobState.FAILED: "red",
    JobState.CANCELLED: "yellow",
}
# A terminal that is not one (a pipe, a file) still gets whole job ids in the table.
PIPE_TABLE_WIDTH = 200
DEFAULT_JOBS_LIMIT = 20
MAX_PAGE_SIZE = 100

F = TypeVar("F", bound=Callable[..., Any])


def register(group: click.Group) -> None:
    """Add the client commands to the ``outlast`` group."""
    for command in (submit, tail, jobs, cancel, retry, queues, pause, resume):
        group.add_command(command)


# -- shared pieces --------------------------------------------------------------------------


def _connection_options(fn: F) -> F:
    fn = click.option(
        "--token",
        envvar=TOKEN_ENV,
        show_envvar=True,
        help="Bearer token, when the server has tokens configured.",
    )(fn)
    fn = click.option(
        "--url",
        envvar=URL_ENV,
        show_envvar=True,
        default=DEFAULT_URL,
        show_default=True,
        help="The outlast server.",
    )(fn)
    return fn


def _stderr() -> Console:
    # Made per command, never at import: click's test runner swaps sys.stderr per invocation.
    return Console(file=sys.stderr, highlight=False)


def _fail(message: str, code: int) -> NoReturn:
    _stderr().print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
    sys.exit(code)


@contextmanager
def _client(url: str, token: str | None) -> Iterator[Client]:
    """A client whose errors become one clear line on stderr and an exit code."""
    try:
        with Client(url, token=token) as client:
            yield client
    except ServerUnreachable as exc:
        _fail(f"{exc}\n(is `outlast serve` running there? see --url / {URL_ENV})", EXIT_UNREACHABLE)
    except AuthError as exc:
        # Only a 401 is about the token itself; a 403 says what was refused (a scope, egress).
        hint = f"; pass --token or set {TOKEN_ENV}" if exc.status == 401 else ""
        _fail(f"{exc.message} ({exc.status} {exc.code}){hint}", EXIT_REFUSED)
    except ServerBusy as exc:
        later = f"; retry in {exc.retry_after:g} s" if exc.retry_after is not None else ""
        _fail(f"{exc.message} ({exc.status} {exc.code}){later}", EXIT_REFUSED)
    except APIError as exc:
        _fail(f"{exc.message} ({exc.status} {exc.code})", EXIT_REFUSED)
    except InvalidResponse as exc:
        _fail(f"unexpected answer from {url}: {exc}", EXIT_UNREACHABLE)
    except ClientError as exc:
        _fail(str(exc), EXIT_USAGE)


def _json_line(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _parse_input(value: str | None) -> Any:
    """``--input``: JSON text, ``@path`` for a file holding it, or ``-`` for stdin."""
    if value is None:
        return None
    source = ""
    if value == "-":
        value, source = sys.stdin.read(), " (stdin)"
    elif value.startswith("@"):
        path = value[1:]
        try:
            with open(path, encoding="utf-8") as file:
                value = file.read()
        except OSError as exc:
            message = f"cannot read {path}: {exc.strerror}"
            raise click.BadParameter(message, param_hint="--input") from exc
        source = f" ({path})"
    try:
        return json.loads(value)
    except ValueError as exc:
        message = f"not valid JSON{source}: {exc}"
        raise click.BadParameter(message, param_hint="--input") from exc


# -- following a job ------------------------------------------------------------------------


class _Status:
    """The status line while following: a spinner with the job's state, attempt and elapsed
    time on a terminal; a plain line per change of state otherwise (logs, CI, pipes)."""

    def __init__(self, console: Console, job: JobInfo) -> None:
        self.console = console
        self.job_id = job.id
        self.state = job.state
        self.attempt = job.attempt
        self.max_attempts = job.max_attempts
        self.started = time.monotonic()
        self._spinner = Spinner("dots")
        self._shown: tuple[JobState, int] | None = None  # what the last plain line said
        self._retry_at: float | None = None  # a failed attempt's retry, on the local clock
        self.live: Live | None = None
        if console.is_terminal:
            # Live re-renders this object several times a second, so elapsed time ticks on
            # even while the job is silent.
            self.live = Live(
                self,
                console=console,
                transient=True,
                refresh_per_second=8,
                redirect_stdout=False,
                redirect_stderr=False,
            )

    def __enter__(self) -> _Status:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.live is not None:
            self.live.stop()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _describe(self) -> Text:
        text = Text(f"{self.job_id} ")
        text.append(self.state.value, style=STATE_STYLES[self.state])
        if self.attempt:
            text.append(f" · attempt {self.attempt}/{self.max_attempts}")
        text.append(f" · {self.elapsed():.1f}s")
        if self._retry_at is not None and self.state == JobState.QUEUED:
            text.append(f" · retry in {max(0.0, self._retry_at - time.monotonic()):.1f}s")
        return text

    def __rich__(self) -> Text:
        self._spinner.update(text=self._describe())
        line = self._spinner.render(self.console.get_time())
        assert isinstance(line, Text)  # a spinner with text renders as one Text
        # One line, always: a wrapped status line would leave copies of itself behind.
        line.no_wrap, line.overflow = True, "ellipsis"
        return line

    def _line(self) -> None:
        if self._shown != (self.state, self.attempt):
            self._shown = (self.state, self.attempt)
            self.console.print(self._describe(), soft_wrap=True)

    def update(self, message: dict[str, Any]) -> None:
        try:
            self.state = JobState(str(message.get("state")))
        except ValueError:
            return
        attempt = message.get("attempt")
        if isinstance(attempt, int):
            self.attempt = attempt  # 0: queued before any attempt
        retry_in = message.get("retry_in")
        self._retry_at = None
        if isinstance(retry_in, int | float) and not isinstance(retry_in, bool):
            self._retry_at = time.monotonic() + retry_in
        if self.live is None:
            self._line()

    def note(self, text: Text) -> None:
        """A message for people (a failed attempt), above the spinner."""
        self.console.print(text, soft_wrap=True)


class _Printer:
    """Writes live output to stdout. When stdout and the progress display share one terminal,
    the output goes through the display's console so that each line lands above the spinner
    instead of being overwritten by it."""

    def __init__(self, status: _Status, as_json: bool) -> None:
        self.as_json = as_json
        shared = status.live is not None and sys.stdout.isatty()
        self.console = status.console if shared else None

    def line(self, text: str) -> None:
        if self.console is not None:
            self.console.print(Text(text), soft_wrap=True)
        else:
            click.echo(text)


def _output_text(event: JobEvent) -> str | None:
    """What ``--follow`` prints for an event: task output and relayed upstream data."""
    if event.type == "output":
        data = event.message.get("data")
        return data if isinstance(data, str) else _json_line(data)
    if event.type == "event":
        return event.data
    return None


def _follow(client: Client, job: JobInfo, *, offset: str | None, as_json: bool) -> NoReturn:
    """Print the job's events as they come, then its outcome; exit with the job's code."""
    console = _stderr()
    last = offset
    status = _Status(console, job)
    printer = _Printer(status, as_json)
    try:
        with status:
            for event in client.events(job.id, offset=offset):
                last = event.id
                if as_json:
                    printer.line(_json_line({"offset": event.id, **event.message}))
                elif (text := _output_text(event)) is not None:
                    printer.line(text)
                if event.type == "state":
                    status.update(event.message)
                elif event.type == "error" and not as_json:
                    error = event.message.get("error") or {}
                    status.note(
                        Text(
                            f"attempt {event.message.get('attempt')} failed: "
                            f"{error.get('code')}: {error.get('message')}",
                            style="red",
                        )
                    )
    except KeyboardInterrupt:
        resume = f" --from {last}" if last else ""
        console.print(
            f"stopped following; {job.id} goes on. Resume with: outlast tail {job.id}{resume}",
            soft_wrap=True,
        )
        sys.exit(EXIT_INTERRUPTED)
    elapsed = status.elapsed()
    final = client.get(job.id)
    if final.state == JobState.SUCCEEDED and final.result is not None and not as_json:
        printer.line(_json_line(final.result))
    summary = Text(f"{final.id} ")
    summary.append(final.state.value, style=STATE_STYLES[final.state])
    summary.append(f" after {elapsed:.1f}s (attempt {final.attempt}/{final.max_attempts})")
    if final.error and final.state in (JobState.FAILED, JobState.CANCELLED):
        summary.append(f": {final.error.get('code')}: {final.error.get('message')}", style="red")
    console.print(summary, soft_wrap=True)
    sys.exit(0 if final.state == JobState.SUCCEEDED else EXIT_JOB_FAILED)


# -- the commands ---------------------------------------------------------------------------


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
@_connection_options
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
    value = _parse_input(input_)
    with _client(url, token) as client:
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
            _follow(client, job, offset=None, as_json=as_json)
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
                click.echo(_json_line(error or {"status": result.status, "job": entry}))
            elif result.job is not None:
                click.echo(
                    result.job.id if quiet else f"{number}\t{result.status}\t{result.job.id}"
                )
            elif not quiet and result.error is not None:
                error = result.error
                click.echo(f"{number}\t{result.status}\t{error.code}: {error.message}")

    with _client(url, token) as client:
        try:
            client.submit_many(jobs, on_batch=show)
        except ClientError:
            if statuses:
                done = sum(statuses.values())
                _stderr().print(f"jobs 0 to {done - 1} were sent (above); no later one")
            raise
    refused = sum(n for status, n in statuses.items() if status >= 400)
    summary = f"{len(jobs)} jobs: {statuses[202]} admitted, {statuses[200]} already there"
    if refused:
        detail = ", ".join(f"{n} × {s}" for s, n in sorted(statuses.items()) if s >= 400)
        summary += f", {refused} refused ({detail})"
    _stderr().print(summary, soft_wrap=True, style="red" if refused else None)
    sys.exit(EXIT_REFUSED if refused else 0)


@click.command()
@click.argument("job_id")
@click.option("--from", "offset", metavar="OFFSET", help="Start after this event id (offset).")
@click.option("--json", "as_json", is_flag=True, help="Every event as JSON, with its offset.")
@_connection_options
def tail(job_id: str, offset: str | None, as_json: bool, url: str, token: str | None) -> None:
    """Print a job's output live until it ends; exit with its outcome."""
    with _client(url, token) as client:
        _follow(client, client.get(job_id), offset=offset, as_json=as_json)


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
@_connection_options
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
    with _client(url, token) as client:
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
            click.echo(_json_line(job.raw))
        return
    if not found:
        _stderr().print("no jobs")
        return
    _stdout_console().print(_jobs_table(found))


def _stdout_console() -> Console:
    console = Console(file=sys.stdout, highlight=False)
    if not console.is_terminal:
        console = Console(file=sys.stdout, highlight=False, width=PIPE_TABLE_WIDTH)
    return console


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
@_connection_options
def cancel(job_id: str, wait: bool, as_json: bool, url: str, token: str | None) -> None:
    """Cancel a job (a running one stops within a second); a finished job is left as it is."""
    with _client(url, token) as client:
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
@_connection_options
def retry(job_id: str, as_json: bool, url: str, token: str | None) -> None:
    """Run a failed or cancelled job again, as a new job; prints the new job's id."""
    with _client(url, token) as client:
        job = client.retry(job_id)
    click.echo(json.dumps(job.raw, indent=2, ensure_ascii=False) if as_json else job.id)


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
@_connection_options
def queues(as_json: bool, url: str, token: str | None) -> None:
    """List the queues: waiting and running jobs, limits, and whether each is paused."""
    with _client(url, token) as client:
        found = client.queues()
    if as_json:
        for queue in found:
            click.echo(_json_line(queue))
        return
    _stdout_console().print(_queues_table(found))


def _set_paused(queue: str, paused: bool, url: str, token: str | None) -> None:
    with _client(url, token) as client:
        shown = client.pause(queue) if paused else client.resume(queue)
    state = "paused" if shown.get("paused") else "running"
    click.echo(
        f"{queue}: {state} ({shown.get('queued', 0)} queued, {shown.get('running', 0)} running)"
    )


@click.command()
@click.argument("queue")
@_connection_options
def pause(queue: str, url: str, token: str | None) -> None:
    """Pause QUEUE on every node: jobs are still accepted, none starts (running ones finish)."""
    _set_paused(queue, True, url, token)


@click.command()
@click.argument("queue")
@_connection_options
def resume(queue: str, url: str, token: str | None) -> None:
    """Resume a paused QUEUE: its waiting jobs start."""
    _set_paused(queue, False, url, token)

"""Following a job from the command line: its live output on stdout, a status line on stderr,
its outcome as the exit code; and the ``tail`` command, which does only that."""

from __future__ import annotations

import sys
import time
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from outlast.cli_common import (
    EXIT_INTERRUPTED,
    EXIT_JOB_FAILED,
    STATE_STYLES,
    connect,
    connection_options,
    json_line,
    stderr_console,
)
from outlast.client import Client, JobEvent, JobInfo
from outlast.models import JobState


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
        return data if isinstance(data, str) else json_line(data)
    if event.type == "event":
        return event.data
    return None


def follow_job(client: Client, job: JobInfo, *, offset: str | None, as_json: bool) -> NoReturn:
    """Print the job's events as they come, then its outcome; exit with the job's code."""
    console = stderr_console()
    last = offset
    status = _Status(console, job)
    printer = _Printer(status, as_json)
    try:
        with status:
            for event in client.events(job.id, offset=offset):
                last = event.id
                if as_json:
                    printer.line(json_line({"offset": event.id, **event.message}))
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
        printer.line(json_line(final.result))
    summary = Text(f"{final.id} ")
    summary.append(final.state.value, style=STATE_STYLES[final.state])
    summary.append(f" after {elapsed:.1f}s (attempt {final.attempt}/{final.max_attempts})")
    if final.error and final.state in (JobState.FAILED, JobState.CANCELLED):
        summary.append(f": {final.error.get('code')}: {final.error.get('message')}", style="red")
    console.print(summary, soft_wrap=True)
    sys.exit(0 if final.state == JobState.SUCCEEDED else EXIT_JOB_FAILED)


@click.command()
@click.argument("job_id")
@click.option("--from", "offset", metavar="OFFSET", help="Start after this event id (offset).")
@click.option("--json", "as_json", is_flag=True, help="Every event as JSON, with its offset.")
@connection_options
def tail(job_id: str, offset: str | None, as_json: bool, url: str, token: str | None) -> None:
    """Print a job's output live until it ends; exit with its outcome."""
    with connect(url, token) as client:
        follow_job(client, client.get(job_id), offset=offset, as_json=as_json)

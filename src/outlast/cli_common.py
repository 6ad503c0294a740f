"""What the client commands share: exit codes, the ``--url``/``--token`` options, the client
whose errors become one line on stderr and an exit code, and ``--input`` parsing.

Live output goes to stdout, one line per output (so it pipes well); the progress display and
every message for people go to stderr. Exit codes (:data:`EXIT_CODES`) say what went wrong
without a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.text import Text

from outlast.client import (
    DEFAULT_URL,
    TOKEN_ENV,
    URL_ENV,
    APIError,
    AuthError,
    Client,
    ClientError,
    InvalidResponse,
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

F = TypeVar("F", bound=Callable[..., Any])


# -- shared pieces --------------------------------------------------------------------------


def connection_options(fn: F) -> F:
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


def stderr_console() -> Console:
    # Made per command, never at import: click's test runner swaps sys.stderr per invocation.
    return Console(file=sys.stderr, highlight=False)


def fail(message: str, code: int) -> NoReturn:
    stderr_console().print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
    sys.exit(code)


@contextmanager
def connect(url: str, token: str | None) -> Iterator[Client]:
    """A client whose errors become one clear line on stderr and an exit code."""
    try:
        with Client(url, token=token) as client:
            yield client
    except ServerUnreachable as exc:
        fail(f"{exc}\n(is `outlast serve` running there? see --url / {URL_ENV})", EXIT_UNREACHABLE)
    except AuthError as exc:
        # Only a 401 is about the token itself; a 403 says what was refused (a scope, egress).
        hint = f"; pass --token or set {TOKEN_ENV}" if exc.status == 401 else ""
        fail(f"{exc.message} ({exc.status} {exc.code}){hint}", EXIT_REFUSED)
    except ServerBusy as exc:
        later = f"; retry in {exc.retry_after:g} s" if exc.retry_after is not None else ""
        fail(f"{exc.message} ({exc.status} {exc.code}){later}", EXIT_REFUSED)
    except APIError as exc:
        fail(f"{exc.message} ({exc.status} {exc.code})", EXIT_REFUSED)
    except InvalidResponse as exc:
        fail(f"unexpected answer from {url}: {exc}", EXIT_UNREACHABLE)
    except ClientError as exc:
        fail(str(exc), EXIT_USAGE)


def json_line(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def parse_input(value: str | None) -> Any:
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


def stdout_console() -> Console:
    console = Console(file=sys.stdout, highlight=False)
    if not console.is_terminal:
        console = Console(file=sys.stdout, highlight=False, width=PIPE_TABLE_WIDTH)
    return console

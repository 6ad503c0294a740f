"""The client commands: ``submit``, ``tail``, ``jobs``, ``cancel``, ``retry``, ``queues``,
``pause``, ``resume``.

Each one parses its arguments and calls :class:`outlast.Client`; these modules only decide how
things look. One module per group of commands: :mod:`outlast.cli_submit` (``submit``),
:mod:`outlast.cli_follow` (following a job live, and ``tail``), :mod:`outlast.cli_jobs`
(``jobs``, ``cancel``, ``retry``) and :mod:`outlast.cli_queues` (``queues``, ``pause``,
``resume``); what they share (exit codes, connection options, error reporting) is in
:mod:`outlast.cli_common`.
"""

from __future__ import annotations

import click

from outlast.cli_common import EXIT_CODES as EXIT_CODES
from outlast.cli_common import EXIT_INTERRUPTED as EXIT_INTERRUPTED
from outlast.cli_common import EXIT_JOB_FAILED as EXIT_JOB_FAILED
from outlast.cli_common import EXIT_REFUSED as EXIT_REFUSED
from outlast.cli_common import EXIT_UNREACHABLE as EXIT_UNREACHABLE
from outlast.cli_common import EXIT_USAGE as EXIT_USAGE
from outlast.cli_follow import tail
from outlast.cli_jobs import cancel, jobs, retry
from outlast.cli_queues import pause, queues, resume
from outlast.cli_submit import submit

__all__ = ["cancel", "jobs", "pause", "queues", "register", "resume", "retry", "submit", "tail"]


def register(group: click.Group) -> None:
    """Add the client commands to the ``outlast`` group."""
    for command in (submit, tail, jobs, cancel, retry, queues, pause, resume):
        group.add_command(command)

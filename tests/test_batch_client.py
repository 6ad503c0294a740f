"""Batch submit from the Python clients (``submit_many``, in this process) and from the command
line (``outlast submit --batch FILE``, against a real server process)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

import outlast
from outlast.cli import main
from outlast.cli_client import EXIT_REFUSED, EXIT_USAGE
from outlast.models import JobState
from tests.conftest import InProcessServer, ServerProcess
from tests.jobs.conftest import APP
from tests.test_client import APP as CLI_APP
from tests.test_client import app_env


@pytest.fixture
def small_queue(inproc_factory: Callable[..., InProcessServer]) -> InProcessServer:
    """The test tasks, no workers, and a default queue that holds 4 waiting jobs."""
    return inproc_factory(app=APP, env={"OUTLAST_QUEUES__DEFAULT__CAPACITY": "4"})


def test_submit_many_returns_each_jobs_result_in_order(small_queue: InProcessServer) -> None:
    jobs = [
        {"task": "echo", "input": {"n": 0}, "key": "a"},
        {"task": "echo", "input": {"n": 0}, "key": "a"},
        {"task": "echo", "timeout": -1},
        {"task": "echo", "input": {"n": 1}},
        {"task": "nope"},
        {"task": "echo", "input": {"n": 2}},
        {"task": "echo", "input": {"n": 3}},
        {"task": "echo", "input": {"n": 4}},
    ]
    with outlast.Client(small_queue.url, transport=small_queue.transport) as client:
        # Three requests of 3, 3 and 2 jobs: each job still gets its own answer, in order.
        results = client.submit_many(iter(jobs), batch_size=3)
    assert [r.status for r in results] == [202, 200, 422, 202, 422, 202, 202, 429]
    assert [r.created for r in results] == [True, False, False, True, False, True, True, False]
    first, again, invalid = results[0], results[1], results[2]
    assert first.job is not None and again.job is not None
    assert again.job.id == first.job.id and first.job.state == JobState.QUEUED
    assert isinstance(invalid.error, outlast.RequestRejected)
    assert invalid.error.field == "jobs[2].timeout"
    full = results[7].error
    assert isinstance(full, outlast.ServerBusy) and full.retry_after is not None
    assert full.code == "queue_full"
    unknown = results[4].error
    # Named by its place among the jobs given, not in its request (jobs[1] of the second).
    assert unknown is not None and unknown.code == "unknown_task"
    assert unknown.field == "jobs[4].task" and unknown.message.startswith("jobs[4].task: ")


def test_async_submit_many_and_whole_request_errors(small_queue: InProcessServer) -> None:
    async def go() -> list[outlast.BatchResult]:
        async with outlast.AsyncClient(
            small_queue.url, transport=_AsyncOnSync(small_queue.transport)
        ) as client:
            return await client.submit_many([{"task": "echo"}, {"task": "echo", "queue": 5}])

    results = asyncio.run(go())
    assert [r.status for r in results] == [202, 422]
    with outlast.Client(small_queue.url, transport=small_queue.transport) as client:
        with pytest.raises(ValueError, match="batch_size"):
            client.submit_many([{"task": "echo"}], batch_size=1001)
        with pytest.raises(TypeError, match="dict"):
            client.submit_many(["echo"])  # type: ignore[list-item]
        assert client.submit_many([]) == []
        small_queue.node.lifecycle.begin_drain()
        with pytest.raises(outlast.ServerBusy) as busy:
            client.submit_many([{"task": "echo"}])
    assert busy.value.status == 503 and busy.value.code == "draining"


class _AsyncOnSync(httpx.AsyncBaseTransport):
    """The in-process server's transport for an async client (it hands requests to the app's
    own loop in another thread)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        sync = httpx.Request(request.method, request.url, headers=request.headers, content=body)
        response = await asyncio.to_thread(self.inner.handle_request, sync)
        return httpx.Response(
            response.status_code, headers=response.headers, content=response.read()
        )


@pytest.mark.slow
def test_cli_submit_batch_from_a_file_or_stdin(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_factory(
        env=app_env(OUTLAST_QUEUES__DEFAULT__CAPACITY="3"), args=["--app", CLI_APP, "--no-workers"]
    ).start()
    runner = CliRunner(env={"OUTLAST_URL": server.url})

    # A JSON array from a file; --queue applies to the jobs that do not name one.
    array = tmp_path / "jobs.json"
    array.write_text(json.dumps([{"task": "echo", "input": {"i": 0}, "key": "k"}, {"task": "no"}]))
    result = runner.invoke(main, ["submit", "--batch", str(array), "--queue", "default"])
    assert result.exit_code == EXIT_REFUSED, result.output
    out = result.stdout.splitlines()
    assert out[0].startswith("0\t202\tjob_")
    assert out[1] == "1\t422\tunknown_task: jobs[1].task: unknown task 'no'"
    assert "2 jobs: 1 admitted, 0 already there, 1 refused (1 × 422)" in result.stderr

    # JSON lines on stdin (blank lines skipped); the queue fills up after the third job.
    lines = "\n".join(
        json.dumps(job)
        for job in [{"task": "echo", "input": {"i": 0}, "key": "k"}, {"task": "echo"}, {}]
    )
    lines += "\n\n" + json.dumps({"task": "echo"}) + "\n" + json.dumps({"task": "echo"}) + "\n"
    result = runner.invoke(main, ["submit", "--batch", "-", "--json"], input=lines)
    assert result.exit_code == EXIT_REFUSED, result.output
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert [a["status"] for a in answers] == [200, 202, 422, 202, 429]
    assert answers[4]["error"]["code"] == "queue_full"
    assert "5 jobs: 2 admitted, 1 already there, 2 refused" in result.stderr

    # All admitted: exit 0; -q prints the ids only.
    queued = httpx.get(f"{server.url}/v1/jobs", timeout=10).json()["jobs"]
    for job in queued:
        httpx.post(f"{server.url}/v1/jobs/{job['id']}/cancel", timeout=10)
    result = runner.invoke(main, ["submit", "--batch", "-", "-q"], input='{"task": "echo"}\n')
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith("job_")
    assert "1 jobs: 1 admitted" in result.stderr

    # Clear errors, without a traceback, for what cannot be sent.
    bad_line = runner.invoke(main, ["submit", "--batch", "-"], input='{"task": "echo"}\n{oops\n')
    assert bad_line.exit_code == EXIT_USAGE and "stdin line 2: not JSON" in bad_line.output
    not_object = runner.invoke(main, ["submit", "--batch", "-"], input="[1]")
    assert not_object.exit_code == EXIT_USAGE and "stdin: job 0: a job is a JSON object" in (
        not_object.output
    )
    missing = runner.invoke(main, ["submit", "--batch", str(tmp_path / "none.json")])
    assert missing.exit_code == EXIT_USAGE and "cannot read" in missing.output
    both = runner.invoke(main, ["submit", "echo", "--batch", str(array)])
    assert both.exit_code == EXIT_USAGE and "--batch takes its jobs from FILE" in both.output
    empty = runner.invoke(main, ["submit", "--batch", "-"], input="\n")
    assert empty.exit_code == EXIT_USAGE and "holds no jobs" in empty.output
    for result in (bad_line, not_object, missing, both, empty):
        assert "Traceback" not in result.output

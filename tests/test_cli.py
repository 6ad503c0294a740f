"""The client commands (submit, tail, jobs, cancel) against a real server process: in-process
through click's runner, and as real ``python -m outlast`` processes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from outlast import Client
from outlast.cli import main
from outlast.cli_client import (
    EXIT_INTERRUPTED,
    EXIT_JOB_FAILED,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from outlast.models import JobState
from tests.conftest import ServerProcess, free_port, upstream_env, wait_for
from tests.test_client import APP, ROOT, WAIT, app_env


@pytest.fixture
def app_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory(env=app_env(), args=["--app", APP]).start()


def run(server: ServerProcess | None, *args: str, input: str | None = None) -> Result:
    """``outlast ARGS`` in this process; the server's URL comes from OUTLAST_URL."""
    env = {"OUTLAST_URL": server.url if server else f"http://127.0.0.1:{free_port()}"}
    return CliRunner(env=env).invoke(main, list(args), input=input)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line]


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output
    # click's runner catches what escapes a command; only SystemExit may end ours.
    assert result.exception is None or isinstance(result.exception, SystemExit)


# -- submit -----------------------------------------------------------------------------------


def test_submit_prints_the_job_or_its_id(app_server: ServerProcess, tmp_path: Path) -> None:
    result = run(app_server, "submit", "echo", "--input", '{"word": "hi"}')
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["task"] == "echo" and job["input"] == {"word": "hi"}

    quiet = run(app_server, "submit", "echo", "--input", "{}", "--key", "k1", "-q")
    again = run(app_server, "submit", "echo", "--input", "{}", "--key", "k1", "-q")
    assert quiet.exit_code == again.exit_code == 0
    assert lines(quiet.stdout) == lines(again.stdout)
    assert lines(quiet.stdout)[0].startswith("job_")

    path = tmp_path / "input.json"
    path.write_text('{"from": "file"}')
    from_file = run(app_server, "submit", "echo", "--input", f"@{path}", "-q")
    from_stdin = run(app_server, "submit", "echo", "--input", "-", "-q", input='{"from": "stdin"}')
    with Client(app_server.url) as client:
        assert client.wait(from_file.stdout.strip(), timeout=WAIT).result == {"from": "file"}
        assert client.wait(from_stdin.stdout.strip(), timeout=WAIT).result == {"from": "stdin"}
        # Every option reaches the server.
        options = run(
            app_server,
            *("submit", "count", "--input", '{"n": 1}', "--queue", "default", "-q"),
            *("--timeout", "5", "--retries", "2", "--delay", "0"),
        )
        job_info = client.get(options.stdout.strip())
        assert (job_info.max_attempts, job_info.raw["timeout"]) == (3, 5.0)


def test_submit_follow_prints_live_output_and_the_result(app_server: ServerProcess) -> None:
    result = run(app_server, "submit", "count", "--input", '{"text": "hello big world"}', "-f")
    assert result.exit_code == 0, result.output
    assert lines(result.stdout) == ["hello", "big", "world", '{"words":3}']
    assert "running" in result.stderr and "succeeded" in result.stderr

    as_json = run(app_server, "submit", "count", "--input", '{"n": 2}', "--follow", "--json")
    assert as_json.exit_code == 0, as_json.output
    events = [json.loads(line) for line in lines(as_json.stdout)]
    assert [event["type"] for event in events] == [
        "state",
        "state",
        "output",
        "output",
        "result",
        "state",
    ]
    assert [event["data"] for event in events if event["type"] == "output"] == [
        {"i": 0},
        {"i": 1},
    ]
    offsets = [event["offset"] for event in events]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)


def test_follow_exits_non_zero_when_the_job_fails(app_server: ServerProcess) -> None:
    result = run(app_server, "submit", "fail", "--input", '{"message": "no luck"}', "--follow")
    assert result.exit_code == EXIT_JOB_FAILED
    no_traceback(result)
    assert result.stdout == ""
    assert "attempt 1 failed" in result.stderr and "attempt 2 failed" in result.stderr
    assert "failed" in lines(result.stderr)[-1] and "no luck" in result.stderr


def test_follow_of_a_job_that_succeeds_after_a_failed_attempt_prints_no_error(
    app_server: ServerProcess,
) -> None:
    result = run(app_server, "submit", "fail_once", "--follow")
    assert result.exit_code == 0, result.output
    no_traceback(result)
    assert lines(result.stdout) == ['"second time lucky"']
    # The failed attempt is shown as it happens; the outcome is a success, with no error.
    assert "attempt 1 failed: exception: RuntimeError: first attempt fails" in result.stderr
    summary = lines(result.stderr)[-1]
    assert "succeeded" in summary and "(attempt 2/2)" in summary, summary
    assert summary.endswith("(attempt 2/2)"), summary


def test_follow_relays_upstream_events(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = server_factory(env=app_env(**upstream_env(upstream))).start()
    relay = {"upstream": "fake", "path": "/sse?n=3", "method": "GET"}
    result = run(server, "submit", "relay", "--input", json.dumps(relay), "--follow")
    assert result.exit_code == 0, result.output
    out = lines(result.stdout)
    assert [json.loads(line) for line in out[:3]] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert out[3] == "[DONE]"
    assert json.loads(out[4])["done"] is True


# -- tail ---------------------------------------------------------------------------------------


def test_tail_a_finished_job_from_the_start_and_from_an_offset(app_server: ServerProcess) -> None:
    with Client(app_server.url) as client:
        job_id = client.submit("count", {"n": 3}).id
        assert client.wait(job_id, timeout=WAIT).state == JobState.SUCCEEDED

    plain = run(app_server, "tail", job_id)
    assert plain.exit_code == 0, plain.output
    assert lines(plain.stdout) == ['{"i":0}', '{"i":1}', '{"i":2}', '{"n":3}']

    whole = run(app_server, "tail", job_id, "--json")
    events = [json.loads(line) for line in lines(whole.stdout)]
    assert len(events) == 7 and events[-1]["state"] == "succeeded"
    rest = run(app_server, "tail", job_id, "--json", "--from", events[3]["offset"])
    assert [json.loads(line) for line in lines(rest.stdout)] == events[4:]
    nothing = run(app_server, "tail", job_id, "--json", "--from", events[-1]["offset"])
    assert nothing.exit_code == 0 and nothing.stdout == ""

    bad = run(app_server, "tail", job_id, "--from", "not-an-offset")
    assert bad.exit_code == EXIT_REFUSED
    no_traceback(bad)


def test_tail_in_a_real_process_follows_a_job_until_it_is_cancelled(
    app_server: ServerProcess, tmp_path: Path
) -> None:
    with Client(app_server.url) as client:
        job_id = client.submit("block", {"gate": str(tmp_path / "never")}).id
        env = {**os.environ, "OUTLAST_URL": app_server.url, "PYTHONPATH": str(ROOT)}
        with subprocess.Popen(
            [sys.executable, "-m", "outlast", "tail", job_id],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as tail:
            try:
                wait_for(lambda: client.get(job_id).state == JobState.RUNNING, timeout=WAIT)
                cancel = run(app_server, "cancel", job_id, "--wait")
                assert cancel.exit_code == 0, cancel.output
                assert cancel.stdout.strip() == f"{job_id}: cancelled"
                out, err = tail.communicate(timeout=WAIT)
            finally:
                if tail.poll() is None:
                    tail.kill()
    assert tail.returncode == EXIT_JOB_FAILED, err
    assert b"Traceback" not in err
    assert b"cancelled" in err.splitlines()[-1]
    assert out == b""


def test_ctrl_c_stops_following_but_not_the_job(app_server: ServerProcess, tmp_path: Path) -> None:
    with Client(app_server.url) as client:
        job_id = client.submit("block", {"gate": str(tmp_path / "gate")}).id
        env = {**os.environ, "OUTLAST_URL": app_server.url, "PYTHONPATH": str(ROOT)}
        seen: list[bytes] = []
        with subprocess.Popen(
            [sys.executable, "-m", "outlast", "tail", job_id],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        ) as tail:
            try:
                stderr = tail.stderr
                assert stderr is not None
                # Read the status lines as they come, until the job shows as running.
                reader = threading.Thread(target=lambda: seen.extend(iter(stderr.readline, b"")))
                reader.start()
                wait_for(lambda: any(b"running" in line for line in seen), timeout=WAIT)
                tail.send_signal(signal.SIGINT)
                assert tail.wait(timeout=WAIT) == EXIT_INTERRUPTED
                reader.join(WAIT)
            finally:
                if tail.poll() is None:
                    tail.kill()
        message = b"".join(seen).decode()
        assert f"outlast tail {job_id} --from " in message
        assert "Traceback" not in message
        assert client.get(job_id).state == JobState.RUNNING  # the job goes on
        (tmp_path / "gate").touch()
        assert client.wait(job_id, timeout=WAIT).state == JobState.SUCCEEDED


def test_submit_follow_in_a_real_process(app_server: ServerProcess) -> None:
    env = {**os.environ, "OUTLAST_URL": app_server.url, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "outlast", "submit", "count", "--input", '{"n": 2}', "--follow"],
        env=env,
        capture_output=True,
        timeout=WAIT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().splitlines() == ['{"i":0}', '{"i":1}', '{"n":2}']
    assert b"succeeded" in done.stderr


# -- jobs and cancel --------------------------------------------------------------------------


def test_jobs_lists_a_table_or_json(app_server: ServerProcess) -> None:
    empty = run(app_server, "jobs")
    assert empty.exit_code == 0 and empty.stdout == "" and "no jobs" in empty.stderr

    with Client(app_server.url) as client:
        made = [client.submit("echo", {"i": i}).id for i in range(3)]
        failed = client.submit("fail", retries=0).id
        for job_id in [*made, failed]:
            assert client.wait(job_id, timeout=WAIT).terminal

        newest_first = [job.id for job in client.iter_jobs()]
    assert sorted(newest_first) == sorted([*made, failed])

    table = run(app_server, "jobs")
    assert table.exit_code == 0, table.output
    rows = lines(table.stdout)
    assert rows[0].split() == ["ID", "TASK", "QUEUE", "STATE", "ATTEMPT", "AGE"]
    assert [row.split()[0] for row in rows[1:]] == newest_first
    row = next(row.split() for row in rows if row.startswith(failed))
    assert row[1:5] == ["fail", "default", "failed", "1/1"]

    only_failed = run(app_server, "jobs", "--state", "failed")
    assert [row.split()[0] for row in lines(only_failed.stdout)[1:]] == [failed]
    as_json = run(app_server, "jobs", "--task", "echo", "--limit", "2", "--json")
    listed = [json.loads(line) for line in lines(as_json.stdout)]
    assert [job["id"] for job in listed] == [i for i in newest_first if i in made][:2]
    assert all(job["state"] == "succeeded" for job in listed)

    bad = run(app_server, "jobs", "--state", "sleeping")
    assert bad.exit_code == EXIT_USAGE


def test_cancel(app_server: ServerProcess, tmp_path: Path) -> None:
    with Client(app_server.url) as client:
        queued = client.submit("echo", delay=3600).id
        finished = client.submit("echo").id
        assert client.wait(finished, timeout=WAIT).state == JobState.SUCCEEDED

    result = run(app_server, "cancel", queued)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{queued}: cancelled"
    twice = run(app_server, "cancel", queued, "--json")
    assert json.loads(twice.stdout)["state"] == "cancelled"
    late = run(app_server, "cancel", finished)
    assert late.exit_code == 0 and late.stdout.strip() == f"{finished}: already succeeded"


# -- errors: a clear line and an exit code, never a traceback ------------------------------------


def test_errors_are_one_clear_line_and_an_exit_code(app_server: ServerProcess) -> None:
    refused = run(None, "jobs")
    assert refused.exit_code == EXIT_UNREACHABLE
    assert "cannot reach outlast" in refused.stderr and "connection refused" in refused.stderr
    no_traceback(refused)

    unknown = run(app_server, "submit", "no-such-task")
    assert unknown.exit_code == EXIT_REFUSED
    assert "unknown task 'no-such-task'" in unknown.stderr and "422" in unknown.stderr
    no_traceback(unknown)

    bad_json = run(app_server, "submit", "echo", "--input", "{not json")
    assert bad_json.exit_code == EXIT_USAGE
    assert "--input" in bad_json.stderr and "not valid JSON" in bad_json.stderr
    no_traceback(bad_json)

    missing_file = run(app_server, "submit", "echo", "--input", "@/nonexistent/input.json")
    assert missing_file.exit_code == EXIT_USAGE and "cannot read" in missing_file.stderr

    for command in ("tail", "cancel"):
        missing = run(app_server, command, "job_" + "a" * 29)
        assert missing.exit_code == EXIT_REFUSED
        assert "not found" in missing.stderr
        no_traceback(missing)

    bad_url = CliRunner().invoke(main, ["jobs", "--url", "127.0.0.1:8787"])
    assert bad_url.exit_code == EXIT_USAGE and "http://" in bad_url.stderr
    no_traceback(bad_url)


def test_token_from_the_environment(server_factory: Callable[..., ServerProcess]) -> None:
    token = "cli-test-token"
    tokens = [
        {
            "name": "cli",
            "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
            "scopes": ["jobs:write", "jobs:read"],
        }
    ]
    server = server_factory(
        env=app_env(OUTLAST_AUTH__TOKENS=json.dumps(tokens)), args=["--app", APP]
    ).start()
    without = run(server, "jobs")
    assert without.exit_code == EXIT_REFUSED and "--token" in without.stderr
    no_traceback(without)
    env = {"OUTLAST_URL": server.url, "OUTLAST_TOKEN": token}
    follow = CliRunner(env=env).invoke(main, ["submit", "count", "--input", '{"n": 1}', "-f"])
    assert follow.exit_code == 0, follow.output
    assert lines(follow.stdout) == ['{"i":0}', '{"n":1}']
    flag = CliRunner(env={"OUTLAST_URL": server.url}).invoke(main, ["jobs", "--token", token])
    assert flag.exit_code == 0 and "count" in flag.stdout


def test_a_403_shows_the_servers_refusal_not_a_token_hint(
    server_factory: Callable[..., ServerProcess],
) -> None:
    token = "read-only-token"
    tokens = [
        {
            "name": "reader",
            "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
            "scopes": ["jobs:read"],
        }
    ]
    server = server_factory(
        env=app_env(OUTLAST_AUTH__TOKENS=json.dumps(tokens)), args=["--app", APP]
    ).start()
    env = {"OUTLAST_URL": server.url, "OUTLAST_TOKEN": token}
    scope = CliRunner(env=env).invoke(main, ["submit", "count"])
    assert scope.exit_code == EXIT_REFUSED
    assert "this token lacks the 'jobs:write' scope (403 forbidden)" in scope.stderr
    assert "--token" not in scope.stderr
    no_traceback(scope)

    open_server = server_factory(env=app_env(), args=["--app", APP]).start()
    egress = run(open_server, "submit", "http", "--input", '{"url": "https://example.com/"}')
    assert egress.exit_code == EXIT_REFUSED
    assert "(403 egress_denied)" in egress.stderr
    assert "--token" not in egress.stderr
    no_traceback(egress)

    # A missing token is what the hint is for.
    missing = run(server, "jobs")
    assert missing.exit_code == EXIT_REFUSED
    assert "(401 unauthorized); pass --token or set OUTLAST_TOKEN" in missing.stderr

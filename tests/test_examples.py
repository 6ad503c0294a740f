"""The newcomer's path: the README's and docs' examples run as written, against the example
tasks of ``examples/`` served by a real ``outlast serve``, and their code is the code of
``examples/`` (a documented block that starts ``# examples/<file>`` must be in that file)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.clients.helpers import LineReader
from tests.conftest import ServerProcess, free_port, wait_for
from tests.test_client import ROOT, app_env

APP = "examples.myapp:app"
OUTLAST = str(Path(sys.executable).parent / "outlast")
JOB_ID = re.compile(r"job_[0-9a-z]{32}")
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def code_blocks(path: Path) -> Iterator[tuple[str, list[str]]]:
    """(language, lines) of each fenced block of a Markdown file."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = lines[i].strip()
        if fence.startswith("```"):
            indent = len(lines[i]) - len(lines[i].lstrip())
            body = []
            i += 1
            while not lines[i].strip().startswith("```"):
                body.append(lines[i][indent:])
                i += 1
            yield fence[3:].strip(), body
        i += 1


def block_with(path: Path, text: str) -> list[str]:
    return next(body for _, body in code_blocks(path) if any(text in line for line in body))


def shell_commands(block: list[str]) -> list[tuple[str, str | None]]:
    """(command, the output its trailing comment documents) for each command of a sh block;
    backslash continuations joined, comment lines skipped."""
    commands: list[tuple[str, str | None]] = []
    pending = ""
    for line in block:
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        command, _, comment = (pending + line).partition("  # ")
        pending = ""
        commands.append((command.strip(), comment.strip() or None))
    return commands


def run_shell(command: str, server: ServerProcess, timeout: float = 30) -> str:
    """The documented command, aimed at the test's server instead of port 8787."""
    command = command.replace("localhost:8787", f"127.0.0.1:{server.port}")
    command = re.sub(r"^(\.venv/bin/)?outlast ", shlex.quote(OUTLAST) + " ", command)
    result = subprocess.run(
        ["sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OUTLAST_URL": server.url},
        check=False,
    )
    assert result.returncode == 0, (command, result.stdout, result.stderr)
    return result.stdout


@pytest.fixture
def example_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory(env=app_env(), args=["--app", APP]).start()


def test_documented_code_is_the_code_of_examples() -> None:
    checked = []
    for doc in DOCS:
        for _, body in code_blocks(doc):
            if not body or not body[0].startswith("# examples/"):
                continue
            source = ROOT / body[0][2:].split()[0]
            assert source.is_file(), f"{doc.name} names {source}"
            # Indentation aside (a fragment may sit inside a function there), the documented
            # lines are a run of the file's lines.
            wanted = [line.strip() for line in body[1:]]
            have = [line.strip() for line in source.read_text().splitlines()]
            runs = (have[i : i + len(wanted)] for i in range(len(have)))
            assert wanted in runs, f"{doc.name}: the block is not in {source.name}"
            checked.append((doc.name, source.name))
    assert ("README.md", "myapp.py") in checked
    assert ("jobs.md", "myapp.py") in checked
    assert ("cli.md", "client.py") in checked
    assert ("cli.md", "client_async.py") in checked
    assert ("cli.md", "client_testing.py") in checked


@pytest.mark.slow
def test_the_client_test_double_example_runs() -> None:
    # No server: the example answers for it with httpx.MockTransport.
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "client_testing.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


def test_the_readme_first_example_runs_as_written(example_server: ServerProcess) -> None:
    block = block_with(ROOT / "README.md", "curl -X POST localhost:8787/v1/jobs")
    commands = shell_commands(block)
    submit, events = commands[0][0], commands[1][0]
    job = json.loads(run_shell(submit, example_server))
    assert job["task"] == "report" and job["state"] == "queued"
    # The events of the job, to its end: each page, then the result.
    sse = run_shell(events.replace("<id>", job["id"]), example_server)
    data = [json.loads(line[6:]) for line in sse.splitlines() if line.startswith("data: ")]
    outputs = [d["data"] for d in data if d["type"] == "output"]
    assert outputs == [{"page": page, "of": 5} for page in range(1, 6)]
    assert {"type": "result", "result": {"pages": 5}} in data
    assert data[-1]["state"] == "succeeded"

    # The durable stream commands, with the outputs their comments document.
    for command, documented in commands[2:]:
        if "live=sse" in command:
            _follow_live(command, example_server)
            continue
        out = run_shell(command, example_server)
        if documented is not None:
            assert out.strip() == documented


def _follow_live(command: str, server: ServerProcess) -> None:
    """A documented ``curl -N ...live=sse`` follows the stream: its event arrives live."""
    url = re.search(r"'([^']+)'", command)
    assert url is not None
    follow = LineReader(["curl", "-N", url.group(1).replace("localhost:8787", server.url[7:])])
    try:
        line = wait_for(
            lambda: next((ln for ln in follow.lines if "hello" in ln), None), timeout=20
        )
        assert line.startswith("data:")
        assert json.loads(line[5:]) == [{"hello": "world"}]
    finally:
        follow.close()


def test_the_readme_python_task_runs(example_server: ServerProcess) -> None:
    block = block_with(ROOT / "README.md", "submit summarize")
    ((command, _),) = shell_commands(block)
    out = run_shell(command, example_server)
    assert out.splitlines() == ['{"progress":0.5}', '{"summary":"outlast finishes the work"}']


def _documented_session(doc: Path, start: str) -> tuple[str, list[str]]:
    """A ``$ command`` of a docs block and the lines printed after it (up to the next ``$``)."""
    body = block_with(doc, start)
    first = next(i for i, line in enumerate(body) if line.startswith(start))
    printed = []
    for line in body[first + 1 :]:
        if line.startswith("$ ") or not line:
            break
        printed.append(line)
    return body[first][2:], printed


def test_the_cli_docs_examples_print_what_they_show(example_server: ServerProcess) -> None:
    cli = ROOT / "docs" / "cli.md"
    command, printed = _documented_session(cli, "$ outlast submit count")
    result = subprocess.run(
        ["sh", "-c", command.replace("outlast ", shlex.quote(OUTLAST) + " ", 1)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OUTLAST_URL": example_server.url},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # stdout: the outputs and the result; stderr ends with the summary line.
    assert result.stdout.splitlines() == printed[:-1]
    summary = re.escape(printed[-1])
    summary = JOB_ID.sub(JOB_ID.pattern, summary.replace(r"0\.1s", r"[\d.]+s"))
    assert re.fullmatch(summary, result.stderr.splitlines()[-1]), result.stderr

    command, printed = _documented_session(cli, "$ outlast submit summarize")
    assert JOB_ID.fullmatch(printed[0])
    assert JOB_ID.fullmatch(run_shell(command, example_server).strip())

    command, printed = _documented_session(cli, "$ outlast jobs --limit 3")
    table = run_shell(command, example_server).splitlines()
    assert table[0].split() == printed[0].split()
    assert [row.split()[1] for row in table[1:]] == ["summarize", "count"]  # newest first

    command, printed = _documented_session(cli, "$ outlast submit nope")
    refused = subprocess.run(
        [OUTLAST, *shlex.split(command)[1:]],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "OUTLAST_URL": example_server.url},
        check=False,
    )
    assert refused.returncode == 3
    assert refused.stderr.strip() == printed[0]


@pytest.mark.parametrize("script", ["client.py", "client_async.py"])
def test_the_client_library_examples_run(example_server: ServerProcess, script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OUTLAST_URL": example_server.url},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    if script == "client.py":
        assert lines[0] == "{'progress': 0.5}"
        assert lines[-1].startswith("succeeded {'summary': '...'}")
    else:
        assert [line.split()[0] for line in lines][-2:] == ["result", "state"]
        assert sum(line.startswith("output") for line in lines) == 3


@pytest.mark.slow
def test_scripts_serve_runs_in_the_callers_directory(tmp_path: Path) -> None:
    # A newcomer's own module next to them, served with the documented command.
    shutil.copy(ROOT / "examples" / "myapp.py", tmp_path / "myapp.py")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTLAST_")}
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen(
        [str(ROOT / "scripts" / "serve"), "--app", "myapp:app", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, timeout=60)
        resp = httpx.post(f"{url}/v1/jobs", json={"task": "count", "input": {"n": 2}})
        assert resp.status_code == 202, resp.text
        job = httpx.get(f"{url}/v1/jobs/{resp.json()['id']}", params={"wait": 30}, timeout=40)
        assert job.json()["state"] == "succeeded"
        assert (tmp_path / "outlast.db").is_file()  # the default store, where the caller is
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()

"""The native SSE view of a job (``GET /v1/jobs/<id>/events``) and submit-and-follow
(``POST /v1/jobs`` with ``Accept: text/event-stream``), on a real server socket."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, wait_for
from tests.jobs.helpers import (
    finished,
    metric,
    open_gate,
    parse_sse,
    sse_messages,
    stream_messages,
    submit,
)

pytestmark = pytest.mark.slow


def _events(server: ServerProcess, job_id: str, **kwargs: object) -> httpx.Response:
    return httpx.get(f"{server.url}/v1/jobs/{job_id}/events", timeout=30, **kwargs)  # type: ignore[arg-type]


def test_events_of_a_finished_job_then_resume_and_204(jobs_server: ServerProcess) -> None:
    job = submit(jobs_server, "chatty", input={"n": 3})
    finished(jobs_server, job["id"])
    resp = _events(jobs_server, job["id"])
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = parse_sse(resp.text)
    assert [e["event"] for e in events] == [
        "outlast.state",
        "outlast.state",
        "outlast.output",
        "outlast.output",
        "outlast.output",
        "outlast.result",
        "outlast.state",
    ]
    assert sse_messages(events) == stream_messages(jobs_server, job["id"])
    # Each id is the offset after the event: the stream's own offsets, strictly increasing.
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    tail = httpx.head(f"{jobs_server.url}/v1/stream/jobs/{job['id']}")
    assert ids[-1] == tail.headers["Stream-Next-Offset"]

    # Resume from any event, by Last-Event-ID or ?offset=: the rest, no gap, no duplicate.
    for i in range(len(events) - 1):
        by_header = _events(jobs_server, job["id"], headers={"Last-Event-ID": ids[i]})
        by_query = _events(jobs_server, job["id"], params={"offset": ids[i]})
        assert parse_sse(by_header.text) == events[i + 1 :]
        assert parse_sse(by_query.text) == events[i + 1 :]
    # After the last event: 204, which stops EventSource for good.
    assert _events(jobs_server, job["id"], headers={"Last-Event-ID": ids[-1]}).status_code == 204
    assert _events(jobs_server, job["id"], params={"offset": ids[-1]}).status_code == 204
    # ?offset=-1 is the start.
    assert parse_sse(_events(jobs_server, job["id"], params={"offset": "-1"}).text) == events


def test_live_events_keepalives_and_the_end(
    jobs_server_factory: Callable[..., ServerProcess], runs: Path
) -> None:
    server = jobs_server_factory(env={"OUTLAST_SSE__KEEPALIVE": "0.2"}).start()
    job = submit(server, "chatty", input={"n": 3, "gate": "more"})
    raw = b""
    with (
        httpx.Client(timeout=httpx.Timeout(10, read=30)) as client,
        client.stream("GET", f"{server.url}/v1/jobs/{job['id']}/events") as resp,
    ):
        assert resp.status_code == 200
        for chunk in resp.iter_raw():
            raw += chunk
            # Once two keepalives came while the task waits at its gate, let it finish.
            if raw.count(b": ping\n") == 2:
                open_gate(runs, "more")
        # The loop ended by itself: the response ends once the job is terminal.
    text = raw.decode()
    assert text.count(": ping\n") >= 2
    # A keepalive is one comment line: never followed by a blank line (which would dispatch
    # an empty event in the openai SDK once ids were sent).
    assert ": ping\n\n" not in text
    events = parse_sse(text)
    messages = sse_messages(events)
    assert [m["data"]["i"] for m in messages if m["type"] == "output"] == [0, 1, 2]
    assert messages[-1] == {"type": "state", "state": "succeeded", "attempt": 1}
    assert finished(server, job["id"])["state"] == "succeeded"


def test_a_reader_that_reconnects_midway_misses_nothing(
    jobs_server: ServerProcess, runs: Path
) -> None:
    job = submit(jobs_server, "chatty", input={"n": 5, "gate": "rest"})
    first: list[dict[str, str]] = []
    with (
        httpx.Client(timeout=httpx.Timeout(10, read=30)) as client,
        client.stream("GET", f"{jobs_server.url}/v1/jobs/{job['id']}/events") as resp,
    ):
        buffer = ""
        for chunk in resp.iter_text():
            buffer += chunk
            first = parse_sse(buffer)
            if any(e["event"] == "outlast.output" for e in first):
                break  # the reader drops after the first output
    open_gate(runs, "rest")
    finished(jobs_server, job["id"])
    rest = parse_sse(
        _events(jobs_server, job["id"], headers={"Last-Event-ID": first[-1]["id"]}).text
    )
    assert sse_messages(first + rest) == stream_messages(jobs_server, job["id"])


def test_submit_and_follow_then_disconnect_the_job_still_finishes(
    jobs_server: ServerProcess, runs: Path
) -> None:
    body = {"task": "chatty", "input": {"n": 4, "gate": "after-drop"}}
    seen: list[dict[str, str]] = []
    with (
        httpx.Client(timeout=httpx.Timeout(10, read=30)) as client,
        client.stream(
            "POST",
            f"{jobs_server.url}/v1/jobs",
            json=body,
            headers={"Accept": "text/event-stream"},
        ) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        job_id = resp.headers["Outlast-Job-Id"]
        assert resp.headers["Location"] == f"/v1/jobs/{job_id}"
        buffer = ""
        for chunk in resp.iter_text():
            buffer += chunk
            seen = parse_sse(buffer)
            if seen:
                break  # the client goes away after the first event
    assert seen[0]["event"] == "outlast.state"
    # The work goes on without any client, and its whole output is kept.
    open_gate(runs, "after-drop")
    done = finished(jobs_server, job_id)
    assert done["state"] == "succeeded"
    assert done["result"] == {"emitted": 4}
    messages = stream_messages(jobs_server, job_id)
    assert [m["data"]["i"] for m in messages if m["type"] == "output"] == [0, 1, 2, 3]
    assert sse_messages(parse_sse(_events(jobs_server, job_id).text)) == messages


def test_submit_and_follow_to_the_end(jobs_server: ServerProcess) -> None:
    resp = httpx.post(
        f"{jobs_server.url}/v1/jobs",
        json={"task": "chatty", "input": {"n": 2}},
        headers={"Accept": "text/event-stream"},
        timeout=30,
    )
    assert resp.status_code == 200
    messages = sse_messages(parse_sse(resp.text))
    assert messages == stream_messages(jobs_server, resp.headers["Outlast-Job-Id"])
    assert messages[-1]["state"] == "succeeded"
    # Following a repeated idempotent submission follows the same job.
    body = {"task": "echo", "input": {"v": 1}, "key": "follow-me"}
    one = httpx.post(
        f"{jobs_server.url}/v1/jobs", json=body, headers={"Accept": "text/event-stream"}
    )
    two = httpx.post(
        f"{jobs_server.url}/v1/jobs", json=body, headers={"Accept": "text/event-stream"}
    )
    assert one.headers["Outlast-Job-Id"] == two.headers["Outlast-Job-Id"]
    assert parse_sse(one.text) == parse_sse(two.text)


def test_many_live_readers_see_the_same_events(jobs_server: ServerProcess, runs: Path) -> None:
    job = submit(jobs_server, "chatty", input={"n": 20, "gate": "go"})
    results: dict[int, str] = {}

    def read(i: int) -> None:
        resp = httpx.get(f"{jobs_server.url}/v1/jobs/{job['id']}/events", timeout=60)
        results[i] = resp.text

    threads = [threading.Thread(target=read, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    # Every reader is connected and live before the job goes on.
    wait_for(lambda: metric(jobs_server, "outlast_stream_readers", mode="job-events") == 10)
    open_gate(runs, "go")
    for t in threads:
        t.join(timeout=60)
    expected = stream_messages(jobs_server, job["id"])
    assert len(results) == 10
    for text in results.values():
        assert sse_messages(parse_sse(text)) == expected
        assert json.loads(parse_sse(text)[-1]["data"])["state"] == "succeeded"


def test_offset_now_follows_only_what_comes_next(jobs_server: ServerProcess, runs: Path) -> None:
    job = submit(jobs_server, "chatty", input={"n": 3, "gate": "next"})
    wait_for(lambda: any(m["type"] == "output" for m in stream_messages(jobs_server, job["id"])))
    before = stream_messages(jobs_server, job["id"])
    got: list[str] = []

    def follow() -> None:
        resp = httpx.get(
            f"{jobs_server.url}/v1/jobs/{job['id']}/events", params={"offset": "now"}, timeout=60
        )
        got.append(resp.text)

    reader = threading.Thread(target=follow)
    reader.start()
    wait_for(lambda: metric(jobs_server, "outlast_stream_readers", mode="job-events") == 1)
    open_gate(runs, "next")
    reader.join(timeout=60)
    assert sse_messages(parse_sse(got[0])) == stream_messages(jobs_server, job["id"])[len(before) :]

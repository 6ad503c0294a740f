"""Completion webhooks end to end (docs/webhooks.md): real server processes on every backend, a
receiver on 127.0.0.1 whose answers each test scripts, real signals (kill -9, SIGTERM).

The retry schedule runs at a tenth of its speed here (``[webhooks] backoff_scale``, a testing
knob): about 0.5 s, then 3 s, between attempts."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.conftest import ServerProcess, wait_for
from tests.fakes.receiver import SECRET, Answer, Received, Receiver, Script, hook_env
from tests.jobs.helpers import finished, get_job, metric, submit

pytestmark = pytest.mark.slow


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver().start()
    yield made
    made.stop()


def callback_state(server: ServerProcess, job_id: str, state: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        callback: dict[str, Any] = get_job(server, job_id)["callback"]
        return callback if callback["state"] == state else None

    found: dict[str, Any] = wait_for(check, timeout=60)
    return found


def attempts_recorded(server: ServerProcess, job_id: str, n: int) -> None:
    wait_for(lambda: get_job(server, job_id)["callback"]["attempts"] >= n, timeout=30)


def as_sent(job: dict[str, Any]) -> dict[str, Any]:
    """The job as GET shows it, with its callback as the event's data carries it."""
    callback = job["callback"]
    return {**job, "callback": {"url": callback["url"], "events": callback["events"]}}


def script(answers: list[int], **headers: str) -> Script:
    """Answer each event's n-th request with answers[n] (the last one from then on)."""

    def answer(request: Received, earlier: int) -> Answer:
        return Answer(answers[min(earlier, len(answers) - 1)], dict(headers))

    return answer


def test_500_500_200_across_kill_9_delivers_one_signed_event_with_one_id(
    jobs_server_factory: Callable[..., ServerProcess], receiver: Receiver
) -> None:
    receiver.script = script([500, 500, 200])
    server = jobs_server_factory(env=hook_env()).start()
    job = submit(server, "echo", input={"a": 1}, callback=f"{receiver.url}/hook")
    assert job["callback"] == {
        "url": f"{receiver.url}/hook",
        "events": ["job.succeeded", "job.failed", "job.cancelled"],
        "state": None,
        "attempts": 0,
        "last_status": None,
        "last_error": None,
        "next_attempt_at": None,
    }
    for attempt in (1, 2):  # each failed attempt recorded, then the node is killed
        attempts_recorded(server, job["id"], attempt)
        server.kill()
        server.start()
    callback = callback_state(server, job["id"], "delivered")
    assert callback["attempts"] == 3 and callback["last_status"] == 200
    assert callback["last_error"] is None and callback["next_attempt_at"] is None

    shown = get_job(server, job["id"])
    requests = receiver.requests()
    assert [r.status for r in requests] == [500, 500, 200]
    assert len({r.webhook_id for r in requests}) == 1
    verifier = Webhook(SECRET)
    for request in requests:
        assert request.path == "/hook"
        assert request.headers["content-type"] == "application/json"
        event = verifier.verify(request.body, request.headers)
        assert event["type"] == "job.succeeded"
        assert event["data"] == as_sent(shown)
        assert event["timestamp"] == shown["finished_at"]
    timestamps = [int(r.headers["webhook-timestamp"]) for r in requests]
    assert timestamps == sorted(timestamps)  # signed per attempt
    assert SECRET not in server.log() and SECRET.removeprefix("whsec_") not in server.log()
    assert server.log().count(requests[0].webhook_id) >= 3  # a log line per attempt


def test_retry_after_on_429_is_a_minimum_wait(
    jobs_server_factory: Callable[..., ServerProcess], receiver: Receiver
) -> None:
    receiver.script = script([429, 200], **{"Retry-After": "2"})
    env = hook_env(OUTLAST_WEBHOOKS__BACKOFF_SCALE="0.01")  # the schedule alone: 0.05 s
    server = jobs_server_factory(env=env).start()
    job = submit(server, "echo", callback=f"{receiver.url}/hook")
    callback_state(server, job["id"], "delivered")
    first, second = receiver.requests()
    assert first.status == 429 and second.status == 200
    assert second.start - first.answered >= 2.0


def test_410_stops_at_once_and_a_redirect_is_not_followed(
    jobs_server_factory: Callable[..., ServerProcess], receiver: Receiver
) -> None:
    def answer(request: Received, earlier: int) -> Answer:
        if request.path == "/gone":
            return Answer(410)
        if request.path == "/moved" and earlier == 0:
            return Answer(302, {"Location": f"{receiver.url}/elsewhere"})
        return Answer(200)

    receiver.script = answer
    server = jobs_server_factory(env=hook_env()).start()
    gone = submit(server, "echo", callback=f"{receiver.url}/gone")
    moved = submit(server, "echo", callback=f"{receiver.url}/moved")
    failed = callback_state(server, gone["id"], "failed")
    assert failed["attempts"] == 1 and failed["last_status"] == 410
    delivered = callback_state(server, moved["id"], "delivered")
    assert delivered["attempts"] == 2
    assert [r.status for r in receiver.requests(path="/moved")] == [302, 200]
    assert receiver.requests(path="/elsewhere") == []
    # The 410 event was attempted once, though later events were delivered since.
    later = submit(server, "echo", callback=f"{receiver.url}/later")
    callback_state(server, later["id"], "delivered")
    assert len(receiver.requests(path="/gone")) == 1


def test_retry_for_ends_in_failed(
    jobs_server_factory: Callable[..., ServerProcess], receiver: Receiver
) -> None:
    receiver.script = script([500])
    server = jobs_server_factory(env=hook_env(OUTLAST_WEBHOOKS__RETRY_FOR="1")).start()
    job = submit(server, "echo", callback=f"{receiver.url}/hook")
    callback = callback_state(server, job["id"], "failed")
    # Attempts at about 0 s and 0.5 s; the next would come after retry_for.
    assert callback["attempts"] == 2 and callback["last_status"] == 500
    assert "retry_for" in callback["last_error"]
    assert len(receiver.requests()) == 2
    assert metric(server, "outlast_webhook_attempts_total", outcome="failed") == 1
    assert metric(server, "outlast_webhook_attempts_total", outcome="retry") == 1
    assert metric(server, "outlast_webhooks_pending") == 0


def test_callbacks_are_checked_at_submit(
    jobs_server_factory: Callable[..., ServerProcess], receiver: Receiver
) -> None:
    strict = jobs_server_factory(env=hook_env(OUTLAST_WEBHOOKS__ALLOW_PRIVATE="false")).start()
    no_secret = jobs_server_factory(env=hook_env(OUTLAST_WEBHOOKS__SECRET="")).start()
    private = jobs_server_factory(env=hook_env()).start()
    cases = [
        (strict, f"{receiver.url}/hook"),  # loopback without allow_private
        (strict, "http://localhost:9/hook"),  # a name that resolves to loopback
        (no_secret, f"{receiver.url}/hook"),
        (private, "http://not-allowed.example/hook"),
        (private, "ftp://127.0.0.1/hook"),
        (private, {"url": f"{receiver.url}/hook", "events": ["job.started"]}),
        (private, {"url": f"{receiver.url}/hook", "events": []}),
        (private, {"url": f"{receiver.url}/hook", "extra": 1}),
        (private, 42),
    ]
    for server, callback in cases:
        resp = httpx.post(
            f"{server.url}/v1/jobs", json={"task": "echo", "callback": callback}, timeout=10
        )
        assert resp.status_code == 422, (callback, resp.text)
        error = resp.json()["error"]
        assert "callback" in error["message"], error
    only_failed = {"url": f"{receiver.url}/hook", "events": ["job.failed"]}
    job = submit(private, "echo", callback=only_failed)
    assert job["callback"]["events"] == ["job.failed"]
    assert finished(private, job["id"])["callback"]["state"] is None
    resp = httpx.post(f"{private.url}/v1/jobs/{job['id']}/callback/retry", timeout=10)
    assert resp.status_code == 409, resp.text
    plain = submit(private, "echo")
    resp = httpx.post(f"{private.url}/v1/jobs/{plain['id']}/callback/retry", timeout=10)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "no_callback"
    assert receiver.requests() == []


def test_retry_sends_the_event_again_with_the_same_id(
    jobs_server_factory: Callable[..., ServerProcess], receiver: Receiver
) -> None:
    server = jobs_server_factory(env=hook_env()).start()
    job = submit(server, "echo", callback=f"{receiver.url}/hook")
    callback_state(server, job["id"], "delivered")
    resp = httpx.post(f"{server.url}/v1/jobs/{job['id']}/callback/retry", timeout=10)
    assert resp.status_code == 202 and resp.json()["callback"]["state"] == "pending"
    wait_for(lambda: len(receiver.requests()) == 2, timeout=30)
    callback = callback_state(server, job["id"], "delivered")
    assert callback["attempts"] == 2
    first, second = receiver.requests()
    assert first.webhook_id == second.webhook_id
    assert metric(server, "outlast_webhook_delivery_seconds_count") == 2


def test_callback_header_on_the_pass_through_and_the_proxy(
    jobs_server_factory: Callable[..., ServerProcess], receiver: Receiver
) -> None:
    server = jobs_server_factory(
        env=hook_env(
            OUTLAST_EGRESS__ALLOWED_HOSTS='["127.0.0.1"]',
            OUTLAST_EGRESS__ALLOW_PRIVATE="true",
            OUTLAST_UPSTREAMS__APP__URL=receiver.url,
            OUTLAST_UPSTREAMS__APP__ALLOW_PRIVATE="true",
        )
    ).start()
    passed = httpx.post(
        f"{server.url}/v1/upstreams/app/v1/chat",
        headers={"Outlast-Callback": f"{receiver.url}/passed"},
        json={"model": "m"},
        timeout=30,
    )
    assert passed.status_code == 200, passed.text
    passed_id = passed.headers["Outlast-Job-Id"]
    assert callback_state(server, passed_id, "delivered")["url"] == f"{receiver.url}/passed"
    [chat] = receiver.requests(path="/v1/chat")
    assert "outlast-callback" not in chat.headers  # not forwarded to the upstream
    resp = httpx.post(
        f"{server.url}/v1/proxy",
        headers={
            "Upstream-URL": f"{receiver.url}/upstream",
            "Outlast-Callback": f"{receiver.url}/hook",
        },
        content=b"{}",
        timeout=10,
    )
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["id"]
    assert resp.json()["callback"]["url"] == f"{receiver.url}/hook"
    callback_state(server, job_id, "delivered")
    [upstream] = receiver.requests(path="/upstream")
    assert "outlast-callback" not in upstream.headers  # not forwarded
    [hook] = receiver.requests(path="/hook")
    assert json.loads(hook.body)["data"]["id"] == job_id
    bad = httpx.post(
        f"{server.url}/v1/proxy",
        headers={"Upstream-URL": f"{receiver.url}/upstream", "Outlast-Callback": "nope"},
        content=b"{}",
        timeout=10,
    )
    assert bad.status_code == 422 and "callback" in bad.json()["error"]["message"]


def test_sigterm_hands_back_attempts_and_the_restart_delivers_them(
    jobs_server_factory: Callable[..., ServerProcess], receiver: Receiver
) -> None:
    held = threading.Event()

    def answer(request: Received, earlier: int) -> Answer:
        if request.path == "/slow" and earlier == 0:
            return Answer(200, hold=held)  # in flight when SIGTERM comes
        if request.path == "/flaky" and earlier == 0:
            return Answer(500)  # pending, its retry scheduled
        return Answer(200)

    receiver.script = answer
    env = hook_env(OUTLAST_WEBHOOKS__BACKOFF_SCALE="0.4")  # the retry after 2 s
    server = jobs_server_factory(env=env, args=["--grace", "1"]).start()
    slow = submit(server, "echo", callback=f"{receiver.url}/slow")
    flaky = submit(server, "echo", callback=f"{receiver.url}/flaky")
    wait_for(lambda: receiver.requests(path="/slow"), timeout=30)
    attempts_recorded(server, flaky["id"], 1)
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert "handed back 1 webhook attempts" in server.log()
    held.set()
    server.start()
    for job in (slow, flaky):
        callback = callback_state(server, job["id"], "delivered")
        ids = {r.webhook_id for r in receiver.requests(path=callback["url"][len(receiver.url) :])}
        assert len(ids) == 1
    # The cut attempt was made again; it does not count as a failed attempt.
    assert get_job(server, slow["id"])["callback"]["attempts"] == 1
    assert len(receiver.requests(path="/slow")) == 2


def test_an_attempt_cut_by_kill_9_is_made_again_after_its_lease(
    jobs_server_factory: Callable[..., ServerProcess], receiver: Receiver
) -> None:
    held = threading.Event()
    receiver.script = lambda request, earlier: Answer(200, hold=held if earlier == 0 else None)
    # A lease is the attempt's timeout + 10 s: the restarted node takes the event after it.
    server = jobs_server_factory(env=hook_env(OUTLAST_WEBHOOKS__TIMEOUT="1")).start()
    job = submit(server, "echo", callback=f"{receiver.url}/hook")
    wait_for(receiver.requests, timeout=30)  # the first attempt is in flight
    server.kill()
    held.set()
    server.start()
    callback = callback_state(server, job["id"], "delivered")
    assert callback["attempts"] == 1  # the cut attempt was never recorded
    first, second = receiver.requests()
    assert first.webhook_id == second.webhook_id
    # Not before the dead node's lease (11 s from its claim, just before the request) ran out.
    assert second.start - first.start >= 10.0

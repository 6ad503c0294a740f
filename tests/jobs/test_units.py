"""Pure pieces of the jobs path, without a server: backoff, ids, task input checks, SSE
rendering, state transitions."""

from __future__ import annotations

import random
from typing import Any, Literal

import pytest

import outlast
from outlast.api.jobs import render_event
from outlast.models import TRANSITIONS, JobState, can_transition, new_job_id, state_message
from outlast.store.jobs_logic import _encode, _state
from outlast.worker import backoff


def test_backoff_is_exponential_capped_and_jittered() -> None:
    random.seed(7)
    for attempt in range(1, 12):
        full = min(60.0, 0.5 * 2 ** (attempt - 1))
        samples = [backoff(attempt, 0.5, 60.0) for _ in range(200)]
        assert all(full * 0.5 <= s <= full for s in samples)
        assert len(set(samples)) > 100  # jitter: retries of many jobs do not line up
    assert backoff(1, 0.0, 60.0) == 0.0


def test_job_ids_sort_in_creation_order_within_one_millisecond() -> None:
    now = 1_800_000_000.123
    ids = [new_job_id(now) for _ in range(1000)]
    assert ids == sorted(ids) and len(set(ids)) == 1000
    # Time going backwards (a clock step) never makes an id sort before an earlier one.
    assert new_job_id(now - 10) > ids[-1]
    assert new_job_id(now + 10) > ids[-1]


def test_terminal_states_have_no_way_out() -> None:
    for state in JobState:
        if state.terminal:
            assert TRANSITIONS[state] == frozenset()
    assert can_transition(JobState.RUNNING, JobState.QUEUED)  # retry or hand-back
    assert not can_transition(JobState.QUEUED, JobState.SUCCEEDED)


app = outlast.App()


@app.task
async def typed(
    job: outlast.Job,
    n: int,
    ratio: float = 1.0,
    name: str | None = None,
    tags: list[str] | None = None,
    mode: Literal["a", "b"] = "a",
    extra: dict[str, Any] | None = None,
    anything: Any = None,
) -> None:
    return None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"n": 1}, None),
        ({"n": 1, "ratio": 2, "name": None, "tags": ["x"], "mode": "b", "extra": {}}, None),
        ({"n": 1, "anything": [1, {"a": None}]}, None),
        ({"n": True}, "input.n"),
        ({"n": 1.5}, "input.n"),
        ({"n": "1"}, "input.n"),
        ({"n": 1, "ratio": "x"}, "input.ratio"),
        ({"n": 1, "name": 5}, "input.name"),
        ({"n": 1, "tags": ["x", 1]}, "input.tags"),
        ({"n": 1, "tags": "x"}, "input.tags"),
        ({"n": 1, "mode": "c"}, "input.mode"),
        ({"n": 1, "extra": []}, "input.extra"),
        ({}, "input"),
        ({"n": 1, "unknown": 1}, "input"),
        ([1], "input"),
    ],
)
def test_task_input_is_checked_against_the_signature(value: Any, problem: str | None) -> None:
    found = app.tasks["typed"].check_input(value)
    assert (found[0] if found else None) == problem
    if found:
        assert found[1]  # and says why


def test_app_refuses_bad_registrations() -> None:
    other = outlast.App()
    with pytest.raises(ValueError):
        other.task(name="relay")(lambda job: None)
    with pytest.raises(ValueError):
        other.task(timeout=0)(lambda job: None)

    @other.task
    def once(job: outlast.Job) -> None:
        return None

    with pytest.raises(ValueError):
        other.task(name="once")(lambda job: None)


def test_render_event_names_outlast_types_and_relays_upstream_events() -> None:
    out = render_event({"type": "output", "data": {"x": "a\nb"}}, "0_5").decode()
    assert out == 'event: outlast.output\ndata: {"type":"output","data":{"x":"a\\nb"}}\nid: 0_5\n\n'
    relayed = render_event({"type": "event", "event": "delta", "data": "l1\nl2", "id": "7"}, "0_9")
    assert relayed.decode() == "event: delta\ndata: l1\ndata: l2\nid: 0_9\n\n"
    plain = render_event({"type": "event", "data": "[DONE]"}, "0_10").decode()
    assert plain == "data: [DONE]\nid: 0_10\n\n"


def test_readiness_turns_503_while_the_store_is_unreachable_and_once_draining() -> None:
    import asyncio

    import httpx
    from starlette.applications import Starlette

    from outlast.api.ops import ops_routes
    from outlast.lifecycle import Lifecycle

    async def check() -> None:
        lifecycle = Lifecycle()
        app = Starlette(routes=ops_routes(lifecycle))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/readyz")).status_code == 200
            # Not ready while the store cannot be reached (the workers' loops say so).
            lifecycle.store_health.failed("claim on default", OSError("refused"))
            resp = await client.get("/readyz")
            assert resp.status_code == 503 and "Retry-After" in resp.headers
            assert resp.json()["error"]["code"] == "store_unreachable"
            lifecycle.store_health.succeeded("claim")
            assert (await client.get("/readyz")).status_code == 200
            lifecycle.begin_drain()
            resp = await client.get("/readyz")
            assert resp.status_code == 503
            assert int(resp.headers["Retry-After"]) >= 1
            assert resp.json()["error"]["code"] == "draining"
            assert (await client.get("/healthz")).status_code == 200  # still alive

    asyncio.run(check())


@pytest.mark.parametrize("state", list(JobState))
@pytest.mark.parametrize("attempt", [0, 1, 12])
def test_state_messages_written_by_hand_are_what_json_dumps_writes(
    state: JobState, attempt: int
) -> None:
    assert _state(state, attempt) == _encode(state_message(state, attempt))


def test_store_health_logs_an_outage_once_then_summaries_then_its_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from outlast.health import SUMMARY_EVERY, StoreHealth

    now = [100.0]
    health = StoreHealth(clock=lambda: now[0])
    health.succeeded("claim")  # nothing to say while reachable
    assert health.reachable and not caplog.records
    with caplog.at_level("WARNING", logger="outlast.store"):
        for _ in range(1000):  # a burst of failures: one line
            health.failed("claim on default", OSError("refused"))
            now[0] += 0.01
        assert not health.reachable
        assert [r.getMessage() for r in caplog.records] == [
            "store unreachable (claim on default): refused"
        ]
        now[0] = 100.0 + SUMMARY_EVERY
        health.failed("maintenance", OSError("refused"))
        health.failed("maintenance", OSError("refused"))
        assert len(caplog.records) == 2
        assert "1001 failed calls in the last 30 s" in caplog.records[1].getMessage()
        now[0] += 1
        health.succeeded("lease renewal")
        assert health.reachable
        assert caplog.records[2].getMessage() == (
            "store reachable again (lease renewal) after 31.0 s (1002 failed calls)"
        )
        health.succeeded("claim")
        assert len(caplog.records) == 3

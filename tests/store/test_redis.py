"""What is particular to the Redis store: its URL, its start-up checks, and its own data."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import redis

from outlast.errors import ConfigError, LeaseLost, StoreError
from outlast.models import NewJob
from outlast.store import open_store, redis_data
from outlast.store.base import AppendSpec, CreateSpec
from outlast.store.redis import RedisStore
from outlast.store.redis_data import Command
from outlast.store.redis_setup import parse_url
from tests.conftest import RedisProcess, free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_urls() -> None:
    parsed = parse_url("redis://user:secret@10.0.0.5:6380/3?prefix=staging:")
    assert parsed.params["host"] == "10.0.0.5" and parsed.params["port"] == 6380
    assert parsed.params["db"] == 3 and parsed.params["password"] == "secret"
    assert parsed.prefix == "staging:"
    assert "secret" not in parsed.display
    assert parse_url("redis://127.0.0.1").params["db"] == 0
    assert parse_url("redis://127.0.0.1").prefix == "outlast:"
    with pytest.raises(ConfigError, match="database"):
        parse_url("redis://127.0.0.1:6379/zero")
    with pytest.raises(ConfigError, match="unknown parameter 'timeout'"):
        parse_url("redis://127.0.0.1:6379/0?timeout=3")


async def test_unreachable_redis_is_a_clear_error() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(StoreError, match=f"cannot reach redis at redis://127.0.0.1:{port}/0"):
        await open_store(f"redis://127.0.0.1:{port}/0")


async def test_weak_persistence_is_warned_about(
    redis_factory: Callable[[], RedisProcess], caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_factory()
    with redis.Redis(port=server.port) as admin:
        admin.config_set("appendfsync", "everysec")
        admin.config_set("maxmemory-policy", "allkeys-lru")
    with caplog.at_level(logging.WARNING, logger="outlast.store.redis"):
        store = await open_store(server.url)
        await store.close()
    text = caplog.text
    assert "appendfsync everysec" in text and "appendfsync always" in text
    assert "maxmemory-policy allkeys-lru" in text


async def test_sound_persistence_is_not_warned_about(
    redis_factory: Callable[[], RedisProcess], caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_factory()  # appendonly yes, appendfsync always, noeviction
    with caplog.at_level(logging.WARNING, logger="outlast.store.redis"):
        store = await open_store(server.url)
        await store.close()
    assert caplog.records == []


async def test_prefixes_keep_installations_apart(
    redis_factory: Callable[[], RedisProcess],
) -> None:
    server = redis_factory()
    one = await open_store(server.url + "?prefix=one:")
    two = await open_store(server.url + "?prefix=two:")
    try:
        spec = CreateSpec(content_type="text/plain")
        assert (await one.create_stream("s", spec)).created
        assert (await two.create_stream("s", spec)).created
        await one.append("s", AppendSpec(content_type="text/plain", unit=(b"only one", 1)))
        assert (await two.head("s")).tail == 0
    finally:
        await one.close()
        await two.close()
    with redis.Redis(port=server.port) as admin:
        keys = [k.decode() for k in admin.keys("*")]
    assert keys and all(k.startswith(("one:", "two:")) for k in keys)


@pytest.mark.parametrize(
    "value",
    [
        2**70,  # past 64 bits: orjson cannot write it, nor read it back as an integer
        -(2**64),
        {"a": [1, 2**65, "12345678901234567890123"]},
        1.5,
        1e300,
        float("inf"),
        float("-inf"),
        "x" * 40,
        None,
        [True, False, {}],
    ],
)
def test_field_values_round_trip(value: object) -> None:
    text = redis_data.dumps(value)
    for stored in (text, text.encode()):
        back = redis_data.loads(stored)
        assert back == value and type(back) is type(value)


def test_not_a_number_round_trips() -> None:
    back = redis_data.loads(redis_data.dumps(float("nan")))
    assert isinstance(back, float) and back != back


def test_non_string_keys_are_written_as_json_writes_them() -> None:
    assert redis_data.loads(redis_data.dumps({1: 2})) == {"1": 2}


async def test_an_emit_reads_the_lease_not_the_input(
    redis_factory: Callable[[], RedisProcess],
) -> None:
    """An emit costs the same whatever the job's input: what it asks of Redis about the job
    is its state, lease owner and attempt, never the whole record."""
    server = redis_factory()
    store = await open_store(server.url)
    assert isinstance(store, RedisStore)
    try:
        big = "x" * 100 * 1024
        new = NewJob(task="t", queue="q", input={"text": big}, max_attempts=1, timeout=60.0)
        job = (await store.submit_job(new, capacity=10)).job
        [running] = await store.claim_jobs("q", "me", 1, 30.0)
        sent: list[Command] = []
        received: list[Any] = []
        wire = store.engine.wire
        call = wire.call

        def recording(commands: Sequence[Command]) -> list[Any]:
            sent.extend(commands)
            replies = call(commands)
            received.extend(replies)
            return replies

        wire.call = recording  # type: ignore[method-assign]
        await store.emit(job.id, "me", running.attempt, [{"type": "output", "n": 1}])
        with pytest.raises(LeaseLost):
            await store.emit(job.id, "someone else", running.attempt, [{"n": 2}])
        wire.call = call  # type: ignore[method-assign]
        job_key = store.keys.job(job.id)
        reads = {(c[0], *c[2:]) for c in sent if c[0] != "WATCH" and c[1:2] == (job_key,)}
        assert reads == {("HGET", "state"), ("HGET", "lease_owner"), ("HGET", "attempt")}
        assert not any(isinstance(r, bytes) and big.encode() in r for r in received)
        read = await store.read(job.stream, 0, 1 << 20)
        assert [json.loads(u.data) for u in read.units][-1] == {"type": "output", "n": 1}
    finally:
        await store.close()

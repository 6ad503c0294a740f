"""What is particular to the Redis store: its URL, its start-up checks, and its own data."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import random
import string
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import redis

from outlast.errors import ConfigError, LeaseLost, NotFound, StoreError, StoreUnavailable
from outlast.models import JobRecord, JobState, NewJob
from outlast.store import open_store, redis_data
from outlast.store.base import AppendSpec, CreateSpec, DeliveryResult, Outcome, Store
from outlast.store.redis import MAX_CONNECTIONS, RedisStore
from outlast.store.redis_data import Command
from outlast.store.redis_setup import parse_url
from outlast.store.versions import REDIS_LAYOUT_VERSION
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


@contextlib.contextmanager
def _recording(
    store: RedisStore,
) -> Iterator[tuple[list[Sequence[Command]], list[Any]]]:
    """The round trips the store's writer makes meanwhile (commands, and every reply)."""
    trips: list[Sequence[Command]] = []
    replies: list[Any] = []
    wire = store.engine.wire
    call = wire.call

    def recording(commands: Sequence[Command]) -> list[Any]:
        trips.append(commands)
        answer = call(commands)
        replies.extend(answer)
        return answer

    wire.call = recording  # type: ignore[method-assign]
    try:
        yield trips, replies
    finally:
        wire.call = call  # type: ignore[method-assign]


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
        with _recording(store) as (trips, received):
            await store.emit(job.id, "me", running.attempt, [{"type": "output", "n": 1}])
            with pytest.raises(LeaseLost):
                await store.emit(job.id, "someone else", running.attempt, [{"n": 2}])
        sent = [command for trip in trips for command in trip]
        job_key = store.keys.job(job.id)
        reads = {(c[0], *c[2:]) for c in sent if c[0] != "WATCH" and c[1:2] == (job_key,)}
        assert reads == {("HGET", "state"), ("HGET", "lease_owner"), ("HGET", "attempt")}
        assert not any(isinstance(r, bytes) and big.encode() in r for r in received)
        read = await store.read(job.stream, 0, 1 << 20)
        assert [json.loads(u.data) for u in read.units][-1] == {"type": "output", "n": 1}
    finally:
        await store.close()


def _every_read(units: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(position, max_bytes) pairs: from every unit's start, one unit and everything."""
    return [(start, size) for start, _ in units for size in (1, 1 << 20)]


async def _reads(store: Store, name: str, asks: list[tuple[int, int]]) -> list[Any]:
    out = []
    for position, max_bytes in asks:
        read = await store.read(name, position, max_bytes)
        out.append((position, [(u.start, u.data) for u in read.units], read.next))
    return out


async def _closed_stream(store: Store, name: str) -> list[tuple[int, int]]:
    """A text stream of 20 appends, closed with a last one; its units as (start, end)."""
    assert (await store.create_stream(name, CreateSpec(content_type="text/plain"))).created
    for n in range(20):
        await store.append(name, AppendSpec(content_type="text/plain", unit=(b"part %d;" % n, 1)))
    last = AppendSpec(content_type="text/plain", unit=(b"the end", 1), close=True)
    await store.append(name, last)
    read = await store.read(name, 0, 1 << 20)
    return [(u.start, u.end) for u in read.units]


async def test_a_closed_stream_is_folded_and_read_from_any_offset(
    redis_factory: Callable[[], RedisProcess],
) -> None:
    """A stream that closes keeps its units as one compressed record, read from any offset
    (by another node: no cache of the writer's), forked from, and removed with the stream."""
    server = redis_factory()
    writer, reader = await open_store(server.url), await open_store(server.url)
    try:
        assert (await writer.create_stream("s", CreateSpec(content_type="text/plain"))).created
        for n in range(20):
            spec = AppendSpec(content_type="text/plain", unit=(b"part %d;" % n, 1))
            await writer.append("s", spec)
        units = [(u.start, u.end) for u in (await reader.read("s", 0, 1 << 20)).units]
        before = await _reads(reader, "s", _every_read(units))
        await writer.append("s", AppendSpec(content_type="text/plain", unit=None, close=True))
        with redis.Redis(port=server.port) as admin:
            assert admin.exists("outlast:u:s") == 0
            assert admin.exists("outlast:f:s") == 1
        assert await _reads(reader, "s", _every_read(units)) == before
        info = await reader.head("s")
        assert info.closed and info.tail == units[-1][1]
        # A read at the tail of a closed stream: nothing, and up to date.
        at_tail = await reader.read("s", info.tail, 1 << 20)
        assert at_tail.units == [] and at_tail.up_to_date
        middle = units[7][0]
        fork = CreateSpec(content_type="text/plain", fork_from="s", fork_offset=middle)
        assert (await reader.create_stream("f", fork)).created
        forked = await writer.read("f", 0, 1 << 20)
        assert b"".join(u.data for u in forked.units) == b"".join(b"part %d;" % n for n in range(7))
        await writer.delete_stream("f")
        await writer.delete_stream("s")
        with redis.Redis(port=server.port) as admin:
            assert admin.keys("outlast:f:*") == []
    finally:
        await writer.close()
        await reader.close()


async def test_streams_closed_in_layout_2_stay_readable(
    redis_factory: Callable[[], RedisProcess],
) -> None:
    """A store of layout 2 kept a closed stream's units one by one: they read as they did,
    and opening the store records the current layout."""
    server = redis_factory()
    store = await open_store(server.url)
    try:
        units = await _closed_stream(store, "old")
    finally:
        await store.close()
    with redis.Redis(port=server.port) as admin:
        record = admin.get("outlast:f:old")
        assert record is not None
        # What layout 2 wrote for this stream: its units in the sorted set, no folded record.
        for unit in redis_data.unfold_units(record):
            admin.zadd("outlast:u:old", {redis_data.pack_unit(unit): unit.start})
        admin.delete("outlast:f:old")
        admin.set("outlast:layout_version", 2)
    store = await open_store(server.url)
    try:
        reads = await _reads(store, "old", _every_read(units))
        assert b"".join(d for _, found, _ in reads[1::2][:1] for _, d in found) == (
            b"".join(b"part %d;" % n for n in range(20)) + b"the end"
        )
        for (position, found, end), (start, stop) in zip(reads[::2], units, strict=True):
            assert position == start and end == stop and len(found) == 1
    finally:
        await store.close()
    with redis.Redis(port=server.port) as admin:
        assert admin.get("outlast:layout_version") == str(REDIS_LAYOUT_VERSION).encode()


def _text(size: int, seed: int) -> str:
    """Words, *size* characters of them: content that compresses as prose does, not better."""
    rng = random.Random(seed)
    words = [rng.choice(string.ascii_lowercase) * rng.randint(1, 3) + str(rng.random())[2:6]]
    while sum(len(w) + 1 for w in words) < size:
        words.append("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))))
    return " ".join(words)[:size]


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"input": {"big": 2**70, "small": -(2**64), "text": 'é\u2028"\\ 12345678901234567890'}},
        {"timeout": math.inf, "result": [0.1, None, True], "extra": {"k": 1}, "waited": 0},
        {"error": {"code": "x", "message": "y"}, "key": "k", "priority": -3, "retry_of": "job_1"},
    ],
)
def test_a_finished_job_s_record_holds_every_value(changes: dict[str, Any]) -> None:
    """pack_job/unpack_job give back the job as it was, with the values JSON has no plain
    form for (integers past 64 bits, infinities) and fields left at their defaults."""
    job = JobRecord(
        id="job_1x",
        task="t",
        queue="q",
        state=JobState.SUCCEEDED,
        input={"a": [1, 2]},
        attempt=2,
        max_attempts=3,
        timeout=30.0,
        created_at=1.5,
        run_at=2.5,
        finished_at=3.25,
    )
    job = dataclasses.replace(job, **changes)
    back = redis_data.unpack_job(job.id, redis_data.pack_job(job))
    assert back == job
    assert repr(back) == repr(job)  # an integer read back as a float would show


async def _finished(store: Store, kind: str, **submit: Any) -> JobRecord:
    """A job with a 1 KiB input (and a callback), claimed and ended with *kind* (a 1 KiB
    result when it succeeds)."""
    hook = {"url": "http://127.0.0.1:9/hook", "events": ["job.succeeded", "job.failed"]}
    given = {"text": _text(1024, 1), "big": 2**70, "n": 0.1}
    new = NewJob(
        task="t", queue="q", input=given, max_attempts=1, timeout=60.0, callback=hook, **submit
    )
    job = (await store.submit_job(new, capacity=10)).job
    [running] = await store.claim_jobs("q", "me", 1, 30.0)
    assert running.id == job.id
    await store.emit(job.id, "me", running.attempt, [{"type": "output", "n": 1}])
    if kind == "succeeded":
        outcome = Outcome("succeeded", result={"text": _text(1024, 2)})
    else:
        outcome = Outcome("failed", error={"code": "exception", "message": "no"})
    return await store.finish_job(job.id, "me", running.attempt, outcome)


async def _read_alike(store: Store, admin: redis.Redis, done: JobRecord, failed: JobRecord) -> None:
    """Every read sees the two jobs as they ended, the reads inside transactions too (a retry
    reads the input; the webhook's delivery changes the job), and a change of a finished job
    leaves it a record."""
    for job in (done, failed):
        assert await store.get_job(job.id) == job
    listed = (await store.list_jobs()).jobs
    assert [j for j in listed if j.id in (done.id, failed.id)] == [failed, done]
    again = (await store.retry_job(failed.id, capacity=10)).job
    assert again.input == failed.input and again.retry_of == failed.id
    claimed = await store.claim_deliveries("hooks", 10, 30.0)
    assert {j.id for j in claimed} == {done.id, failed.id}
    delivered = await store.finish_delivery(done.id, "hooks", DeliveryResult("delivered", 200))
    assert delivered.callback is not None and delivered.callback["state"] == "delivered"
    assert dataclasses.replace(delivered, callback=done.callback) == done
    assert await store.get_job(done.id) == delivered
    assert admin.exists(f"outlast:j:{done.id}") == 0
    assert admin.exists(f"outlast:jf:{done.id}") == 1


async def test_a_finished_job_is_one_compact_record_read_back_the_same(
    redis_factory: Callable[[], RedisProcess],
) -> None:
    """A job that ends is kept as one compressed string in place of its hash (whose 1 KiB
    values would make Redis encode it as a hashtable): every read sees the same job, and a
    later change of it (its webhook's delivery) rewrites the record."""
    server = redis_factory()
    store = await open_store(server.url)
    admin = redis.Redis(port=server.port)
    try:
        assert isinstance(store, RedisStore)
        hash_key = store.keys.job
        new = NewJob(
            task="t", queue="q", input={"text": _text(1024, 1)}, max_attempts=1, timeout=60.0
        )
        queued = (await store.submit_job(new, capacity=10)).job
        running_size = admin.memory_usage(hash_key(queued.id), samples=0)
        await store.cancel_job(queued.id)
        done = await _finished(store, "succeeded", key="k", priority=5, concurrency_key="c")
        failed = await _finished(store, "failed")
        for job in (done, failed):
            assert admin.exists(hash_key(job.id)) == 0
            assert admin.type(store.keys.finished_job(job.id)) == b"string"
        # The record holds the input and the result, and costs less than the hash did with
        # the input alone.
        assert admin.memory_usage(store.keys.finished_job(done.id), samples=0) < running_size
        assert done.result == {"text": _text(1024, 2)} and done.input["big"] == 2**70
        await _read_alike(store, admin, done, failed)
    finally:
        admin.close()
        await store.close()


async def test_jobs_finished_in_layout_3_stay_readable(
    redis_factory: Callable[[], RedisProcess],
) -> None:
    """A store of layout 3 kept a finished job as a hash: it reads as it did, becomes a
    record at its next change, and is purged as any job."""
    server = redis_factory()
    store = await open_store(server.url)
    try:
        done = await _finished(store, "succeeded", key="k")
        failed = await _finished(store, "failed")
    finally:
        await store.close()
    with redis.Redis(port=server.port) as admin:
        for job in (done, failed):
            # What layout 3 wrote for this job: its hash, one JSON value per field.
            fields = redis_data.encode_fields(redis_data.job_fields(job))
            admin.hset(f"outlast:j:{job.id}", mapping=fields)
            admin.delete(f"outlast:jf:{job.id}")
        admin.set("outlast:layout_version", 3)
    store = await open_store(server.url)
    admin = redis.Redis(port=server.port)
    try:
        assert admin.get("outlast:layout_version") == str(REDIS_LAYOUT_VERSION).encode()
        await _read_alike(store, admin, done, failed)
        await store.finish_delivery(failed.id, "hooks", DeliveryResult("delivered", 200))
        assert await store.purge_jobs(time.time() + 1) == 2
        for job in (done, failed):
            assert admin.exists(f"outlast:j:{job.id}", f"outlast:jf:{job.id}") == 0
            with pytest.raises(NotFound):
                await store.get_job(job.id)
    finally:
        admin.close()
        await store.close()


async def test_a_write_redis_refuses_for_memory_is_unavailable_and_not_applied(
    redis_factory: Callable[[], RedisProcess],
) -> None:
    """Redis out of memory (maxmemory, noeviction) refuses the whole transaction: outlast
    answers StoreUnavailable (503 + Retry-After), and nothing of it is stored."""
    server = redis_factory()
    store = await open_store(server.url)
    admin = redis.Redis(port=server.port)
    try:
        new = NewJob(task="t", queue="q", input={}, max_attempts=1, timeout=60.0)
        job = (await store.submit_job(new, capacity=10)).job
        [running] = await store.claim_jobs("q", "me", 1, 30.0)
        before = await store.read(job.stream, 0, 1 << 20)
        admin.config_set("maxmemory", 1)
        with pytest.raises(StoreUnavailable, match="out of memory"):
            await store.emit(job.id, "me", running.attempt, [{"n": 1}])
        admin.config_set("maxmemory", 0)
        after = await store.read(job.stream, 0, 1 << 20)
        assert after.info.tail == before.info.tail and after.units == before.units
        await store.emit(job.id, "me", running.attempt, [{"n": 2}])
        last = (await store.read(job.stream, 0, 1 << 20)).units[-1]
        assert json.loads(last.data) == {"n": 2}
    finally:
        admin.close()
        await store.close()


async def test_a_job_s_end_folds_its_stream_in_the_same_round_trips(
    redis_factory: Callable[[], RedisProcess],
) -> None:
    """The end of a job closes its stream, which folds its units: they are read with the job
    and its stream (one round trip), then the commit (another): the fold adds none."""
    server = redis_factory()
    store = await open_store(server.url)
    assert isinstance(store, RedisStore)
    try:
        new = NewJob(task="t", queue="q", input={}, max_attempts=1, timeout=60.0)
        job = (await store.submit_job(new, capacity=10)).job
        [running] = await store.claim_jobs("q", "me", 1, 30.0)
        await store.emit(job.id, "me", running.attempt, [{"n": 1}])
        with _recording(store) as (trips, _):
            done = await store.finish_job(job.id, "me", running.attempt, Outcome("succeeded", "ok"))
        assert done.state == JobState.SUCCEEDED
        assert len(trips) == 2, [[c[0] for c in trip] for trip in trips]
        with redis.Redis(port=server.port) as admin:
            assert admin.exists(f"outlast:u:{job.stream}") == 0
            assert admin.exists(f"outlast:f:{job.stream}") == 1
    finally:
        await store.close()


async def test_a_claim_reads_the_jobs_it_may_take_not_the_whole_queue(
    redis_factory: Callable[[], RedisProcess],
) -> None:
    """A claim of one job among a hundred queued reads that job's hash alone: not a batch of
    64, nor a chunk of 16 (a worker with one free slot claims one job at a time)."""
    server = redis_factory()
    store = await open_store(server.url)
    assert isinstance(store, RedisStore)
    try:
        for _ in range(100):
            new = NewJob(task="t", queue="q", input={}, max_attempts=1, timeout=60.0)
            await store.submit_job(new, capacity=1000)
        with _recording(store) as (trips, _):
            assert len(await store.claim_jobs("q", "me", 1, 30.0)) == 1
        sent = [command for trip in trips for command in trip]
        prefix = store.keys.job("")
        reads = [c for c in sent if c[0] == "HGETALL" and str(c[1]).startswith(prefix)]
        assert len(reads) == 1, reads
        # Queued jobs cannot have ended: no look for their finished records.
        assert not any(c[0] == "GET" for c in sent), sent
    finally:
        await store.close()


async def test_a_large_closed_stream_keeps_its_units_and_is_not_read_to_close(
    redis_factory: Callable[[], RedisProcess],
) -> None:
    """A stream holding more than FOLD_MAX keeps its units one by one when it closes, and
    closing it does not read them."""
    server = redis_factory()
    store = await open_store(server.url)
    assert isinstance(store, RedisStore)
    try:
        spec = CreateSpec(content_type="application/octet-stream")
        assert (await store.create_stream("big", spec)).created
        chunk = b"y" * (redis_data.FOLD_MAX // 2 + 1)
        for _ in range(2):
            await store.append("big", AppendSpec(content_type=None, unit=(chunk, 1)))
        with _recording(store) as (trips, _):
            await store.append("big", AppendSpec(content_type=None, unit=None, close=True))
        units_key = store.keys.units("big")
        assert not [c for trip in trips for c in trip if c[0] == "ZRANGEBYSCORE"]
        with redis.Redis(port=server.port) as admin:
            assert admin.exists(units_key) == 1 and admin.exists("outlast:f:big") == 0
        read = await store.read("big", len(chunk), 1 << 21)
        assert read.info.closed and [u.data for u in read.units] == [chunk]
    finally:
        await store.close()


async def test_readers_holding_every_pooled_connection_do_not_stall_the_claim_loop(
    redis_factory: Callable[[], RedisProcess],
) -> None:
    """Under overload readers queue for the pool's connections; a claim loop's look at its
    queue (next_due) has connections of its own and answers meanwhile."""
    server = redis_factory()
    store = await open_store(server.url)
    assert isinstance(store, RedisStore)
    # Every pooled connection held by a reader that waits (a blocking pop that times out in 3 s).
    held = [
        asyncio.create_task(store.client.blpop(["nothing"], timeout=3))
        for _ in range(MAX_CONNECTIONS)
    ]
    try:
        with redis.Redis(port=server.port) as admin:
            deadline = time.monotonic() + 10
            # (The subscription to other nodes' changes holds one pooled connection.)
            while int(admin.info("clients")["blocked_clients"]) < MAX_CONNECTIONS - 1:
                assert time.monotonic() < deadline, "the readers never held the pool"
                await asyncio.sleep(0.01)
        with pytest.raises(TimeoutError):  # the readers' pool is exhausted...
            await asyncio.wait_for(store.client.ping(), 0.5)
        # ...and the claim loop's look at its queue is answered all the same.
        await store.submit_job(
            NewJob(task="t", queue="q", input={}, max_attempts=1, timeout=60.0), capacity=10
        )
        due = await asyncio.wait_for(store.next_due("q"), 2.0)
        assert due is not None and due <= time.time()
    finally:
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        await store.close()

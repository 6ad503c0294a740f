"""The store contract, run unchanged on every backend (``STORE_BACKENDS``, those of
``OUTLAST_TEST_BACKENDS``).

Each test opens a fresh store through :func:`outlast.store.open_store`, the way the server does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from outlast.errors import BadRequest, Conflict, Forbidden, Gone, NotFound
from outlast.store import Store, open_store
from outlast.store.base import AppendSpec, CreateSpec, Producer
from tests.conftest import backend_params

# "sqlite-fsync": the same file store with its fsyncing writer-thread engine. "redis": a real
# redis-server (AOF, appendfsync always) started for the test.
STORE_BACKENDS = backend_params("sqlite", "sqlite-fsync", "redis")

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=STORE_BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    fsync = request.param == "sqlite-fsync"
    if request.param in ("sqlite", "sqlite-fsync"):
        url = f"sqlite:///{tmp_path}/contract.db"
    elif request.param == "redis":
        url = request.getfixturevalue("redis_factory")().url
    else:  # pragma: no cover - more backends join the list as they land
        raise AssertionError(request.param)
    opened = await open_store(url, fsync=fsync)
    try:
        yield opened
    finally:
        await opened.close()


TEXT = "text/plain"
JSON = "application/json"


def text(data: bytes) -> AppendSpec:
    return AppendSpec(content_type=TEXT, unit=(data, 1))


async def read_all(store: Store, name: str, max_bytes: int = 1 << 20) -> bytes:
    position, out = 0, b""
    while True:
        result = await store.read(name, position, max_bytes)
        out += b"".join(u.data for u in result.units)
        position = result.next
        if result.up_to_date:
            return out


async def test_create_is_idempotent_and_conflicts_on_other_config(store: Store) -> None:
    first = await store.create_stream("s", CreateSpec(content_type=TEXT, ttl=60))
    assert first.created and first.info.tail == 0
    again = await store.create_stream("s", CreateSpec(content_type=TEXT, ttl=60))
    assert not again.created and again.info.id == first.info.id
    with pytest.raises(Conflict):
        await store.create_stream("s", CreateSpec(content_type=JSON, ttl=60))
    with pytest.raises(Conflict):
        await store.create_stream("s", CreateSpec(content_type=TEXT, ttl=61))


async def test_appends_get_increasing_positions_and_read_back(store: Store) -> None:
    await store.create_stream("s", CreateSpec(content_type=TEXT, units=[(b"ab", 1)]))
    tails = [(await store.append("s", text(part))).info.tail for part in (b"cde", b"f", b"gh")]
    assert tails == [5, 6, 8]
    assert await read_all(store, "s") == b"abcdefgh"
    middle = await store.read("s", 5, 1 << 20)
    assert [u.data for u in middle.units] == [b"f", b"gh"]
    assert middle.next == 8 and middle.up_to_date


async def test_reads_are_bounded_but_always_progress(store: Store) -> None:
    await store.create_stream("s", CreateSpec(content_type=TEXT))
    for i in range(10):
        await store.append("s", text(bytes([65 + i]) * 100))
    first = await store.read("s", 0, 250)
    assert len(first.units) == 2 and not first.up_to_date
    one = await store.read("s", 0, 1)  # smaller than a unit: still one unit
    assert len(one.units) == 1
    assert len(await read_all(store, "s", 250)) == 1000


async def test_read_past_tail_is_rejected(store: Store) -> None:
    await store.create_stream("s", CreateSpec(content_type=TEXT, units=[(b"abc", 1)]))
    with pytest.raises(BadRequest):
        await store.read("s", 4, 100)
    at_tail = await store.read("s", 3, 100)
    assert at_tail.units == [] and at_tail.up_to_date


async def test_missing_streams(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.head("nope")
    with pytest.raises(NotFound):
        await store.append("nope", text(b"x"))
    with pytest.raises(NotFound):
        await store.delete_stream("nope")


async def test_content_type_must_match(store: Store) -> None:
    await store.create_stream("s", CreateSpec(content_type="text/plain; charset=utf-8"))
    await store.append("s", AppendSpec(content_type="TEXT/PLAIN", unit=(b"ok", 1)))
    with pytest.raises(Conflict):
        await store.append("s", AppendSpec(content_type=JSON, unit=(b"1", 1)))


async def test_close_is_final_and_idempotent(store: Store) -> None:
    await store.create_stream("s", CreateSpec(content_type=TEXT))
    closed = await store.append("s", AppendSpec(content_type=TEXT, unit=(b"end", 1), close=True))
    assert closed.info.closed and closed.info.tail == 3
    again = await store.append("s", AppendSpec(content_type=None, unit=None, close=True))
    assert again.info.closed and again.duplicate
    with pytest.raises(Conflict) as info:
        await store.append("s", text(b"more"))
    assert info.value.headers["Stream-Closed"] == "true"
    assert (await store.head("s")).closed


async def test_stream_seq_must_increase(store: Store) -> None:
    await store.create_stream("s", CreateSpec(content_type=TEXT))
    await store.append("s", AppendSpec(content_type=TEXT, unit=(b"a", 1), stream_seq="0002"))
    with pytest.raises(Conflict):
        await store.append("s", AppendSpec(content_type=TEXT, unit=(b"b", 1), stream_seq="0002"))
    with pytest.raises(Conflict):
        await store.append("s", AppendSpec(content_type=TEXT, unit=(b"b", 1), stream_seq="0001"))
    await store.append("s", AppendSpec(content_type=TEXT, unit=(b"c", 1), stream_seq="0010"))
    assert await read_all(store, "s") == b"ac"


async def test_idempotent_producer_rules(store: Store) -> None:
    await store.create_stream("s", CreateSpec(content_type=TEXT))

    def by(epoch: int, seq: int, data: bytes = b"x") -> AppendSpec:
        return AppendSpec(content_type=TEXT, unit=(data, 1), producer=Producer("p", epoch, seq))

    assert not (await store.append("s", by(0, 0, b"a"))).duplicate
    assert not (await store.append("s", by(0, 1, b"b"))).duplicate
    retry = await store.append("s", by(0, 1, b"b"))
    assert retry.duplicate and retry.producer_seq == 1
    with pytest.raises(Conflict) as gap:
        await store.append("s", by(0, 3))
    assert gap.value.headers == {"Producer-Expected-Seq": "2", "Producer-Received-Seq": "3"}
    with pytest.raises(BadRequest):
        await store.append("s", by(1, 5))  # a new epoch starts at 0
    assert not (await store.append("s", by(1, 0, b"c"))).duplicate
    with pytest.raises(Forbidden) as stale:
        await store.append("s", by(0, 2))  # the zombie is fenced
    assert stale.value.headers["Producer-Epoch"] == "1"
    assert await read_all(store, "s") == b"abc"


async def test_concurrent_appends_never_share_a_position(store: Store) -> None:
    await store.create_stream("s", CreateSpec(content_type=TEXT))
    results = await asyncio.gather(*(store.append("s", text(b"%03d" % i)) for i in range(200)))
    tails = sorted(r.info.tail for r in results)
    assert tails == list(range(3, 601, 3))
    body = await read_all(store, "s")
    assert sorted(body[i : i + 3] for i in range(0, 600, 3)) == [b"%03d" % i for i in range(200)]


async def test_json_units_keep_message_counts(store: Store) -> None:
    await store.create_stream("j", CreateSpec(content_type=JSON, units=[(b'{"a":1},{"b":2}', 2)]))
    await store.append("j", AppendSpec(content_type=JSON, unit=(b"3", 1)))
    result = await store.read("j", 0, 1 << 20)
    assert [(u.count, u.data) for u in result.units] == [(2, b'{"a":1},{"b":2}'), (1, b"3")]


async def test_fork_copies_the_prefix_and_goes_its_own_way(store: Store) -> None:
    await store.create_stream("src", CreateSpec(content_type=TEXT, units=[(b"hello", 1)]))
    await store.append("src", text(b" world"))
    fork = await store.create_stream(
        "fork", CreateSpec(content_type=TEXT, fork_from="src", fork_offset=0, fork_sub_offset=3)
    )
    assert fork.created and fork.info.tail == 3
    await store.append("fork", text(b"p!"))
    assert await read_all(store, "fork") == b"help!"
    assert await read_all(store, "src") == b"hello world"
    with pytest.raises(BadRequest):
        await store.create_stream(
            "bad", CreateSpec(content_type=TEXT, fork_from="src", fork_offset=2)
        )  # not a unit boundary


async def test_delete_with_forks_soft_deletes_then_collects(store: Store) -> None:
    await store.create_stream("src", CreateSpec(content_type=TEXT, units=[(b"data", 1)]))
    await store.create_stream("fork", CreateSpec(content_type=TEXT, fork_from="src"))
    await store.delete_stream("src")
    with pytest.raises(Gone):
        await store.head("src")
    with pytest.raises(Conflict):
        await store.create_stream("src", CreateSpec(content_type=TEXT))
    assert await read_all(store, "fork") == b"data"
    await store.delete_stream("fork")
    with pytest.raises(NotFound):
        await store.head("src")
    assert (await store.create_stream("src", CreateSpec(content_type=TEXT))).created


async def test_expired_streams_are_gone(store: Store) -> None:
    await store.create_stream("old", CreateSpec(content_type=TEXT, expires_at=time.time() - 1))
    with pytest.raises(NotFound):
        await store.head("old")
    assert (await store.create_stream("old", CreateSpec(content_type=TEXT))).created


async def test_wait_wakes_on_append_and_times_out_otherwise(store: Store) -> None:
    await store.create_stream("s", CreateSpec(content_type=TEXT))
    assert await store.wait("s", 0, 0.05) is False
    waiter = asyncio.ensure_future(store.wait("s", 0, 30))
    await asyncio.sleep(0)  # let the waiter register (ordering only; no timing is relied on)
    await store.append("s", text(b"x"))
    assert await asyncio.wait_for(waiter, 10) is True
    # Already past the position: returns at once.
    assert await store.wait("s", 0, 30) is True


async def test_wait_wakes_on_close(store: Store) -> None:
    await store.create_stream("s", CreateSpec(content_type=TEXT))
    waiter = asyncio.ensure_future(store.wait("s", 0, 30))
    await asyncio.sleep(0)
    await store.append("s", AppendSpec(content_type=None, unit=None, close=True))
    assert await asyncio.wait_for(waiter, 10) is True


async def test_acknowledged_writes_survive_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/reopen.db"
    first = await open_store(url)
    await first.create_stream("s", CreateSpec(content_type=TEXT))
    for part in (b"a", b"b", b"c"):
        await first.append("s", text(part))
    await first.close()
    second = await open_store(url)
    try:
        assert await read_all(second, "s") == b"abc"
    finally:
        await second.close()

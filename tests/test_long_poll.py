"""A long-poll that times out answers ``204`` with the offset it was asked for as
``Stream-Next-Offset``, even when the stream grew in the instant after the wait gave up: naming
the new tail would send the client past data it never received (the conformance suite caught
this, now and then, on Redis).

The race is made certain with a store whose ``wait`` appends to the stream and then reports a
timeout; the streams endpoint is called in-process (the response is not a stream).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import httpx

from outlast.api.streams import StreamsEndpoint
from outlast.config import load_settings
from outlast.lifecycle import Lifecycle
from outlast.metrics import Metrics
from outlast.store import Store, open_store
from outlast.store.base import AppendSpec

TEXT = "text/plain"


class _GrowsAsTheWaitTimesOut:
    """The real store, except that every wait ends in a timeout just after an append."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def wait(self, name: str, position: int, timeout: float) -> bool:
        await self._store.append(name, AppendSpec(content_type=TEXT, unit=(b" late", 1)))
        return False


def test_timed_out_long_poll_resumes_from_the_offset_it_was_asked_for(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await open_store(f"sqlite:///{tmp_path / 'outlast.db'}")
        try:
            settings = load_settings(environ={})
            endpoint = StreamsEndpoint(
                settings, cast(Store, _GrowsAsTheWaitTimesOut(store)), Lifecycle(), Metrics()
            )
            transport = httpx.ASGITransport(app=endpoint)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                url = "/v1/stream/race"
                created = await client.put(url, headers={"Content-Type": TEXT}, content=b"early")
                assert created.status_code == 201
                tail = created.headers["Stream-Next-Offset"]

                polled = await client.get(url, params={"offset": tail, "live": "long-poll"})
                assert polled.status_code == 204
                assert polled.headers["Stream-Up-To-Date"] == "true"
                assert polled.headers["Stream-Next-Offset"] == tail

                # Resuming from there gets what was appended meanwhile.
                resumed = await client.get(url, params={"offset": tail})
                assert resumed.status_code == 200
                assert resumed.text == " late"
        finally:
            await store.close()

    asyncio.run(scenario())

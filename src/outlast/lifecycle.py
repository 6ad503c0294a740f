"""The server's lifecycle flags, shared by the routes and the shutdown sequence.

Uvicorn never ends a streaming response on SIGTERM by itself, and it runs the lifespan shutdown
only after every connection has closed. So outlast owns its own signals: ``draining`` turns
submissions and readiness away, ``stop_readers`` ends every live reader (SSE, long-poll) so that
uvicorn's wait for open connections can finish. ``store_health`` is the store as this process's
workers find it: readiness is turned away while it cannot be reached, too.
"""

from __future__ import annotations

import asyncio

from outlast.health import StoreHealth


class Lifecycle:
    def __init__(self, store_health: StoreHealth | None = None) -> None:
        self.draining = asyncio.Event()
        self.stop_readers = asyncio.Event()
        self.store_health = store_health or StoreHealth()

    @property
    def accepting(self) -> bool:
        return not self.draining.is_set()

    def begin_drain(self) -> None:
        self.draining.set()

    def end_readers(self) -> None:
        self.stop_readers.set()

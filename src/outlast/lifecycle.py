"""The server's lifecycle flags, shared by the routes and the shutdown sequence.

Uvicorn never ends a streaming response on SIGTERM by itself, and it runs the lifespan shutdown
only after every connection has closed. So outlast owns its own signals: ``draining`` turns
submissions and readiness away, ``stop_readers`` ends every live reader (SSE, long-poll) so that
uvicorn's wait for open connections can finish.
"""

from __future__ import annotations

import asyncio


class Lifecycle:
    def __init__(self) -> None:
        self.draining = asyncio.Event()
        self.stop_readers = asyncio.Event()

    @property
    def accepting(self) -> bool:
        return not self.draining.is_set()

    def begin_drain(self) -> None:
        self.draining.set()

    def end_readers(self) -> None:
        self.stop_readers.set()

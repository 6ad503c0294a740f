"""A streaming ``text/event-stream`` response that stops when the client goes away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

from starlette.types import Receive, Scope, Send

from outlast.errors import RequestError, StoreError

log = logging.getLogger("outlast.sse")


class SSEResponse:
    """Sends *events* as they come. Events that stop on a :class:`RequestError` (the stream was
    removed while being read) or a :class:`StoreError` (the store is unreachable) end the
    response cleanly: the client resumes from the last id it saw."""

    media_type = b"text/event-stream"

    def __init__(
        self,
        events: AsyncIterator[bytes],
        *,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.events = events
        self.status_code = status_code
        # X-Accel-Buffering: a proxy such as nginx must pass events on as they come.
        self.headers = [(b"content-type", self.media_type), (b"x-accel-buffering", b"no")]
        self.headers += [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.headers}
        )
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        writer = asyncio.ensure_future(self._write(send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait({writer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not writer.done():
                # The client left: stop producing. Nothing it was owed is lost, it resumes
                # from the last offset it saw.
                writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await writer
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def _write(self, send: Send) -> None:
        try:
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except RequestError:
            pass
        except StoreError as exc:
            # The reader ends without its stream's end: its client resumes from the last id it
            # got. Said here, as nothing else would tell why a reader ended early.
            log.warning("a live reader ended early: %s", exc)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def sse_event(*, data: str, event: str | None = None, id: str | None = None) -> bytes:
    """One SSE event. Data with line breaks becomes several ``data:`` lines."""
    out = []
    if event is not None:
        out.append(f"event: {event}")
    out.extend(f"data: {line}" for line in _lines(data))
    if id is not None:
        out.append(f"id: {id}")
    return ("\n".join(out) + "\n\n").encode()


def sse_comment(text: str) -> bytes:
    """A comment line. No blank line follows: after ids were sent, a blank line after a comment
    dispatches an empty event in some clients (the openai SDK among them)."""
    return f": {text}\n".encode()


# The keepalive every live SSE reader sends after a quiet interval.
PING = sse_comment("ping")

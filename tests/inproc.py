"""outlast in the test's own process: the ASGI app on :class:`httpx.ASGITransport`.

For validation, error-shape and simple request-response tests, which need no listener, no signal
and no second process. The app, its store and (when asked) its workers run on an event loop in a
background thread, the way ``outlast serve`` runs them on its loop; the test talks to it through
an ordinary synchronous :class:`httpx.Client` (``server.client``) whose transport hands each
request to that loop. Long-polls block the test's thread, not the app's, so a test may wait on a
job while the workers run it.

``ASGITransport`` buffers a whole response before handing it over: an endless response (a live
SSE reader, ``live=sse``) never arrives. Tests of live readers, signals, kill -9, clusters and
real clients use the real server processes of ``server_factory`` (the ``slow`` tier).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest

from outlast.api.app import create_app
from outlast.config import Settings, load_settings
from outlast.server import Node, open_node

T = TypeVar("T")

BASE_URL = "http://outlast.test"
_HOST = httpx.URL(BASE_URL).host
# A guard on every hand-off to the app's loop, never a pace.
LOOP_TIMEOUT = 60.0


class _LoopThread:
    """An event loop running in a daemon thread; coroutines are run on it from the test's thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="outlast-inproc", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = LOOP_TIMEOUT) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        # As asyncio.run ends: tasks still pending (the readers' stop watcher, say) are cancelled
        # and given their turn before the loop closes.
        self.run(_cancel_pending())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(LOOP_TIMEOUT)
        self.loop.close()


async def _cancel_pending() -> None:
    current = asyncio.current_task()
    pending = [task for task in asyncio.all_tasks() if task is not current]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


class _OnLoopTransport(httpx.BaseTransport):
    """A synchronous transport that sends each request to an ASGI app on another thread's loop.

    The request body is handed over chunk by chunk (a chunked upload stays chunked); the answer
    comes back as raw bytes with its headers, so ``Content-Encoding`` is decoded once, here.
    """

    def __init__(self, asgi: httpx.ASGITransport, runner: _LoopThread) -> None:
        self._asgi = asgi
        self._runner = runner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        chunks = list(request.stream)  # type: ignore[arg-type]

        async def body() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        async def send() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
            forwarded = httpx.Request(
                request.method, request.url, headers=request.headers, content=body()
            )
            answer = await self._asgi.handle_async_request(forwarded)
            raw = b"".join([part async for part in answer.aiter_raw()])
            await answer.aclose()
            return answer.status_code, answer.headers.raw, raw

        status, headers, raw = self._runner.run(send())
        return httpx.Response(status, headers=headers, content=raw, request=request)


@dataclass
class InProcessServer:
    """One outlast app in this process: ``client`` talks to it, ``url`` is its base URL, and
    ``transport`` serves other clients, e.g. ``outlast.Client(server.url, transport=...)`` for
    request-response calls (following events needs a real server)."""

    settings: Settings
    node: Node
    client: httpx.Client
    transport: httpx.BaseTransport
    runner: _LoopThread
    url: str = BASE_URL

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run *coro* on the app's loop (to reach the store directly, say)."""
        return self.runner.run(coro)


@contextlib.contextmanager
def in_process_server(settings: Settings, *, workers: bool) -> Iterator[InProcessServer]:
    runner = _LoopThread()
    stack = contextlib.AsyncExitStack()
    try:
        node = runner.run(stack.enter_async_context(open_node(settings, workers=workers)))
        app = create_app(
            settings, node.store, node.lifecycle, node.metrics, node.registry, node.worker
        )
        if node.worker is not None:
            runner.run(node.worker.start())
            stack.push_async_callback(node.worker.drain, 0)
        transport = _OnLoopTransport(httpx.ASGITransport(app=app), runner)
        with httpx.Client(transport=transport, base_url=BASE_URL, timeout=LOOP_TIMEOUT) as client:
            yield InProcessServer(settings, node, client, transport, runner)
    finally:
        try:
            runner.run(stack.aclose())
        finally:
            runner.close()


@pytest.fixture
def inproc_factory(
    store_url_factory: Callable[[], str],
) -> Iterator[Callable[..., InProcessServer]]:
    """Start outlast apps in this process: ``inproc_factory(env={...}, app=..., workers=...)``.

    ``env`` holds settings as ``OUTLAST_*`` variables (the process environment is not read);
    ``app`` is a ``module:attr`` task app; workers run only with ``workers=True``. Each app gets
    a fresh store of the test's backend: a SQLite file in the test's tmp dir, or a Redis
    database (that variant starts a redis-server, so it is in the ``slow`` tier).
    """
    with contextlib.ExitStack() as stack:

        def make(
            *,
            env: dict[str, str] | None = None,
            app: str | None = None,
            workers: bool = False,
        ) -> InProcessServer:
            # BASE_URL's host is not a loopback name: allowed, as a local proxy's name would be.
            server: dict[str, Any] = {
                "store": store_url_factory(),
                "allowed_hosts": ["outlast.test"],
            }
            if app is not None:
                server["app"] = app
            settings = load_settings(environ=env or {}, overrides={"server": server})
            return stack.enter_context(in_process_server(settings, workers=workers))

        yield make


@pytest.fixture
def inproc(inproc_factory: Callable[..., InProcessServer]) -> InProcessServer:
    """An app in this process with default settings and no workers, on a fresh store."""
    return inproc_factory()

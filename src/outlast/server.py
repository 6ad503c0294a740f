"""``serve()`` (API + workers) and ``work()`` (workers only), and the shutdown phases.

On SIGTERM or SIGINT the phases run in this order (docs/operations.md#shutdown):

1. drain      ``/readyz`` answers 503; new submissions answer 503 with ``Retry-After``; workers
              stop claiming.
2. listener   uvicorn stops accepting connections; requests in flight complete.
3. readers    live readers (SSE, long-poll, job events) end within a second, cleanly, so that
              they resume from their offset elsewhere or after the restart. A connection
              whose written bytes have not drained by then (a reader that stopped reading
              without closing) is aborted: it would hold the listener's drain forever.
4. jobs       running jobs get ``grace`` seconds to finish; the rest are stopped and handed back
              to their queue without spending an attempt. Webhook attempts in flight get the
              same grace; the rest are cut and handed back, due again at once.
5. store      closed; every acknowledged write is already durable. The process exits 0.

A second signal stops at once (phase 4 with no grace). Uvicorn's own signal capture is replaced:
it would re-raise the signal after shutdown, and the process would die of it instead of
exiting 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import uvicorn

from outlast.api.app import create_app
from outlast.callbacks import Deliverer, delivery_client
from outlast.config import Settings
from outlast.connections import ConnectionLimits, abort_stalled, limited_protocol
from outlast.egress import NoCookies, guarded_transport
from outlast.errors import ConfigError
from outlast.executors.registry import Registry, build_registry
from outlast.lifecycle import Lifecycle
from outlast.metrics import Metrics
from outlast.store import open_store
from outlast.store.base import Store
from outlast.store.notify import Siblings
from outlast.store.sqlite import SQLiteStore
from outlast.tasks import App, load_app
from outlast.worker import Worker

log = logging.getLogger("outlast.server")

UPSTREAM_POOL = httpx.Limits(max_connections=None, max_keepalive_connections=100)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# How long uvicorn may wait for in-flight requests once the listener is closed. Live readers are
# ended by phase 3, so what remains are ordinary requests that finish quickly.
REQUEST_DRAIN_TIMEOUT = 10
# Live readers are told to end at the signal; by then they have ended or their connection's
# writes are not draining (the client stopped reading), and those connections are aborted.
READERS_END_DEADLINE = 1.0
SWITCH_INTERVAL = 0.0005
# Python's default collector thresholds (700, 10, 10) run a young collection every 700 net
# allocations and a full one every 100 young ones: a server holding thousands of live
# connections, streams and jobs paid for full passes of 5-50 ms that showed up as latency
# spikes for every reader. Rarer passes cut those spikes (measured: docs/operations.md,
# "Running").
GC_THRESHOLDS = (50_000, 20, 100)
# Threads that run plain `def` tasks are named with this prefix.
TASK_THREAD_PREFIX = "outlast-task"
IDLE_THREAD_EXIT = 0.5
# Connect timeout for outgoing requests of built-in tasks; the job's own timeout bounds the rest.
EGRESS_CONNECT_TIMEOUT = 10.0


class _Server(uvicorn.Server):
    """Uvicorn without its signal handling: :func:`serve` installs its own."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def check_binding(settings: Settings) -> None:
    """Without tokens, outlast binds to loopback only unless ``insecure`` says otherwise."""
    host = settings.server.host
    if settings.auth_enabled or host in LOOPBACK_HOSTS:
        return
    if not settings.server.insecure:
        raise ConfigError(
            f"refusing to bind {host} without auth tokens: configure [auth] tokens, "
            "bind 127.0.0.1, or pass --insecure"
        )


@dataclass
class Node:
    """What one process runs: the store, the task registry and (optionally) a worker."""

    settings: Settings
    store: Store
    registry: Registry
    metrics: Metrics
    lifecycle: Lifecycle
    worker: Worker | None
    # Delivers completion webhooks; runs wherever workers run.
    deliverer: Deliverer | None = None


@contextlib.asynccontextmanager
async def open_node(
    settings: Settings, *, workers: bool, siblings: Siblings | None = None
) -> AsyncIterator[Node]:
    """*siblings*: in a process of ``serve --workers N``, how it shares wake-ups with the
    others (SQLite; Redis shares them itself)."""
    app: App | None = load_app(settings.server.app) if settings.server.app else None
    threads = ThreadPoolExecutor(
        max_workers=settings.jobs.threads or sum(q.concurrency for q in settings.queues.values()),
        thread_name_prefix=TASK_THREAD_PREFIX,
    )
    http_client = httpx.AsyncClient(
        # Refuses private addresses at connect time too. The queues' concurrency bounds how
        # many requests run at once; a pool limit (httpx's default is 100 connections) would
        # bound them again, and relays past it would wait, unread, for a connection.
        transport=guarded_transport(limits=UPSTREAM_POOL),
        timeout=httpx.Timeout(None, connect=EGRESS_CONNECT_TIMEOUT),
        follow_redirects=False,
        cookies=NoCookies(),  # jobs share the pool, never cookies
    )
    webhook_client = delivery_client()
    try:
        store = await open_store(settings.server.store, fsync=settings.store.fsync)
        try:
            if siblings is not None and isinstance(store, SQLiteStore):
                store.share_wakeups(siblings)
            metrics = Metrics(pid_label=siblings is not None)
            registry = build_registry(settings, app, store, http_client, threads)
            lifecycle = Lifecycle()
            worker = (
                Worker(settings, store, registry, metrics, health=lifecycle.store_health)
                if workers
                else None
            )
            deliverer = (
                Deliverer(
                    settings,
                    store,
                    metrics,
                    webhook_client,
                    owner=worker.owner,
                    health=lifecycle.store_health,
                )
                if worker is not None
                else None
            )
            yield Node(settings, store, registry, metrics, lifecycle, worker, deliverer)
        finally:
            # Phase 5: every acknowledged write is durable already; close cleanly.
            await store.close()
    finally:
        await http_client.aclose()
        await webhook_client.aclose()
        # Threads of sync tasks stopped at the deadline may still run; do not wait for them.
        threads.shutdown(wait=False, cancel_futures=True)


class _Signals:
    """Phases 1-3 on the first signal, an immediate stop on the second."""

    def __init__(self, node: Node, server: _Server | None) -> None:
        self.node = node
        self.server = server
        self.count = 0
        self.first = asyncio.Event()
        self.immediate = asyncio.Event()
        self.signalled_at = 0.0

    def __enter__(self) -> _Signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_signal, sig)
        return self

    def __exit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)

    def on_signal(self, signum: int) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.count > 1:
            log.warning("second signal (%s): stopping at once", name)
            self.immediate.set()
            if self.server is not None:
                self.server.force_exit = True
            self.node.lifecycle.end_readers()
            return
        log.info("signal %s: shutting down", name)
        # Phase 1: refuse new work and report not-ready; workers stop claiming.
        self.node.lifecycle.begin_drain()
        self.signalled_at = time.monotonic()
        if self.node.worker is not None:
            self.node.worker.stop_claiming()
        if self.node.deliverer is not None:
            self.node.deliverer.stop_claiming()
        # Phase 2: uvicorn's main loop sees this within a tick and closes its listeners.
        if self.server is not None:
            self.server.should_exit = True
        # Phase 3: live readers end now; clients resume from their last offset.
        self.node.lifecycle.end_readers()
        if self.server is not None:
            asyncio.get_running_loop().call_later(READERS_END_DEADLINE, self._abort_stalled)
        self.first.set()

    def _abort_stalled(self) -> None:
        assert self.server is not None
        aborted = abort_stalled(self.server.server_state.connections)
        if aborted:
            log.info("aborted %d connections whose readers stopped reading", aborted)


async def _drain_jobs(node: Node, signals: _Signals) -> None:
    """Phase 4: running jobs and webhook attempts get the grace period (cut short by a second
    signal)."""
    if node.worker is None:
        return
    # The grace period runs from the signal, not from the end of phases 2-3.
    grace = max(0.0, node.settings.server.grace - (time.monotonic() - signals.signalled_at))
    drains = [node.worker.drain]
    if node.deliverer is not None:
        drains.append(node.deliverer.drain)

    async def drain_all(seconds: float) -> None:
        await asyncio.gather(*(drain(seconds) for drain in drains))

    drain = asyncio.ensure_future(drain_all(grace))
    stop_now = asyncio.ensure_future(signals.immediate.wait())
    await asyncio.wait({drain, stop_now}, return_when=asyncio.FIRST_COMPLETED)
    if not drain.done():
        await drain_all(0)
        await drain
    stop_now.cancel()


async def serve(
    settings: Settings,
    *,
    listener: socket.socket | None = None,
    siblings: Siblings | None = None,
) -> None:
    """The API and (unless disabled) the workers in one process, until a signal.

    In a process of ``serve --workers N`` (:mod:`outlast.supervisor`), *listener* is its own
    socket on the shared port and *siblings* the other processes to wake after commits.
    """
    check_binding(settings)
    if not settings.auth_enabled:
        log.warning(
            "no auth tokens configured: every request is trusted (bound to %s); only requests "
            "to a loopback Host name or one in [server] allowed_hosts are served",
            settings.server.host,
        )
    async with open_node(settings, workers=settings.server.run_jobs, siblings=siblings) as node:
        app = create_app(
            settings, node.store, node.lifecycle, node.metrics, node.registry, node.worker
        )
        _freeze_startup_objects()
        limits = ConnectionLimits(
            max_header_bytes=settings.server.max_header_bytes,
            max_header_count=settings.server.max_header_count,
            header_timeout=settings.server.header_timeout,
            max_connections=settings.server.max_connections,
        )
        config = uvicorn.Config(
            app,
            host=settings.server.host,
            port=settings.server.port,
            http=limited_protocol(limits),
            log_config=None,
            access_log=False,
            timeout_keep_alive=settings.server.keep_alive_timeout,  # type: ignore[arg-type]
            timeout_graceful_shutdown=REQUEST_DRAIN_TIMEOUT,
            lifespan="off",
            server_header=False,
        )
        server = _Server(config)
        with _Signals(node, server) as signals:
            if node.worker is not None:
                await node.worker.start()
            if node.deliverer is not None:
                await node.deliverer.start()
            await server.serve(sockets=None if listener is None else [listener])
            # uvicorn returns once its listener is closed and connections are done; workers
            # stopped claiming at the signal (phase 1). If uvicorn stopped for another reason
            # (say the port was taken), stop everything as for a signal.
            if not signals.first.is_set():
                signals.on_signal(signal.SIGTERM)
            await _drain_jobs(node, signals)
    log.info("stopped")


async def work(settings: Settings) -> None:
    """Workers only, no HTTP listener; the same shutdown phases."""
    async with open_node(settings, workers=True) as node:
        assert node.worker is not None
        _freeze_startup_objects()
        with _Signals(node, None) as signals:
            await node.worker.start()
            if node.deliverer is not None:
                await node.deliverer.start()
            await signals.first.wait()
            await _drain_jobs(node, signals)
    log.info("stopped")


def _freeze_startup_objects() -> None:
    """Leave what start-up made (modules, settings, the app, the store's objects) out of every
    later collection: they live as long as the process, and a full pass walking them all again
    held the event loop (every reader and request) for tens of milliseconds."""
    gc.collect()
    gc.freeze()


def run(main: asyncio.Future[None] | object) -> None:
    """Run a coroutine on a fresh event loop (uvloop when available)."""
    # The store's writer thread hands every commit back to the event loop; with Python's
    # default 5 ms GIL switch interval each hand-off can wait that long behind the loop.
    sys.setswitchinterval(SWITCH_INTERVAL)
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        asyncio.run(main)  # type: ignore[arg-type]
    else:
        uvloop.run(main)  # type: ignore[arg-type]
    _leave_task_threads()


def _leave_task_threads() -> None:
    """Exit now if threads of sync tasks are still running.

    A thread cannot be stopped from outside, and Python joins every pool thread at exit, so a
    task that ignores ``job.cancelled`` would hold the process long after the grace period or a
    second signal. Its job was already handed back and the store is closed: nothing is lost by
    not waiting.
    """
    pool = [t for t in threading.enumerate() if t.name.startswith(TASK_THREAD_PREFIX)]
    # Idle pool threads end as soon as the pool is shut down; give them that moment.
    deadline = time.monotonic() + IDLE_THREAD_EXIT
    for thread in pool:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in pool if t.is_alive()]
    if not stuck:
        return
    log.warning("leaving %d task threads still running: %s", len(stuck), ", ".join(stuck))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

"""The tasks a node can run: the user's :class:`~outlast.tasks.App` plus the built-ins."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from outlast.config import Settings
from outlast.errors import ConfigError, Unprocessable
from outlast.executors import http as http_task
from outlast.store.base import Store
from outlast.tasks import DEFAULT_RETRIES, DEFAULT_TIMEOUT, App, Job, TaskDef

Runner = Callable[[Job, Any], Awaitable[Any]]
# An LLM answer can take minutes; a relay's own idle and first-byte timeouts catch stalls.
RELAY_TIMEOUT = 600.0
# The queue of the built-in relay and http tasks (configured by default: see config).
RELAY_QUEUE = "relay"


@dataclass(frozen=True, slots=True)
class TaskSpec:
    name: str
    queue: str
    timeout: float
    retries: int
    run: Runner
    validate: Callable[[Any], Awaitable[None]]


class Registry:
    def __init__(self, specs: dict[str, TaskSpec]) -> None:
        self.specs = specs

    def get(self, name: str) -> TaskSpec | None:
        return self.specs.get(name)

    def names(self) -> list[str]:
        return sorted(self.specs)


def _python_spec(task: TaskDef, threads: ThreadPoolExecutor) -> TaskSpec:
    async def validate(value: Any) -> None:
        problem = task.check_input(value)
        if problem is not None:
            field, message = problem
            raise Unprocessable(f"{field} {message}", extra={"field": field})

    if task.is_async:

        async def run(job: Job, value: Any) -> Any:
            return await task.fn(job, **value)

    else:

        async def run(job: Job, value: Any) -> Any:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(threads, functools.partial(task.fn, job, **value))

    return TaskSpec(task.name, task.queue, task.timeout, task.retries, run, validate)


def build_registry(
    settings: Settings,
    app: App | None,
    store: Store,
    http_client: httpx.AsyncClient,
    threads: ThreadPoolExecutor,
) -> Registry:
    specs: dict[str, TaskSpec] = {}
    egress = settings.egress

    async def run_http(job: Job, value: Any) -> Any:
        return await http_task.run_http(value, http_client, egress)

    async def validate_http(value: Any) -> None:
        await http_task.validate_input(value, egress)

    async def run_relay(job: Job, value: Any) -> Any:
        from outlast.executors import relay as relay_task

        return await relay_task.run_relay(
            job, value, settings=settings, store=store, client=http_client
        )

    async def validate_relay(value: Any) -> None:
        from outlast.executors import relay as relay_task

        await relay_task.validate_input(value, settings)

    specs["http"] = TaskSpec(
        "http", RELAY_QUEUE, DEFAULT_TIMEOUT, DEFAULT_RETRIES, run_http, validate_http
    )
    specs["relay"] = TaskSpec(
        "relay", RELAY_QUEUE, RELAY_TIMEOUT, DEFAULT_RETRIES, run_relay, validate_relay
    )
    if app is not None:
        for task in app.tasks.values():
            if task.queue not in settings.queues:
                # Found at start rather than as a 422 on every submission of the task.
                raise ConfigError(
                    f"task {task.name!r} uses queue {task.queue!r}, which is not configured: "
                    f"add [queues.{task.queue}] (configured: {', '.join(settings.queues)})"
                )
            specs[task.name] = _python_spec(task, threads)
    return Registry(specs)

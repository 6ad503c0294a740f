"""Tasks as users write them: :class:`App` registers functions, :class:`Job` is what they get.

::

    import outlast
    app = outlast.App()

    @app.task(timeout=60, retries=3, queue="default")
    async def summarize(job: outlast.Job, text: str) -> dict:
        await job.emit({"progress": 0.5})
        return {"summary": text[:100]}

A plain ``def`` task runs in a bounded thread pool; it may call ``job.emit(...)`` directly (the
call blocks until the output is stored) and read ``job.cancelled`` to stop early.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import os
import signal
import threading
import types
import typing
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from outlast.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 3


@dataclass(frozen=True, slots=True)
class TaskDef:
    name: str
    fn: Callable[..., Any]
    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    queue: str = "default"

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    def check_input(self, value: Any) -> tuple[str, str] | None:
        """Why *value* cannot be this task's input, as (field, problem); ``None`` when it can.

        The input's keys must bind to the function's parameters, and values of parameters
        annotated with JSON types (``int``, ``str``, ``list[str]``, ``X | None``, ...) must have
        those types: a submission learns at once what the task would fail on much later.
        """
        if not isinstance(value, dict):
            return "input", "must be a JSON object (its keys are the task's keyword arguments)"
        signature = _signature(self.fn)
        try:
            bound = signature.bind(None, **value)
        except TypeError as exc:
            return "input", str(exc)
        hints = _type_hints(self.fn)
        params = signature.parameters
        for name, arg in list(bound.arguments.items())[1:]:
            if params[name].kind is inspect.Parameter.VAR_KEYWORD or name not in hints:
                continue
            if not _matches(arg, hints[name]):
                return f"input.{name}", f"must be {_describe(hints[name])}"
        return None


# Read once per task function (every submission checks its input against them).
@functools.lru_cache(maxsize=1024)
def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(fn)


@functools.lru_cache(maxsize=1024)
def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # annotations that do not resolve: no type checks, the task decides
        return {}


_JSON_TYPES: dict[Any, str] = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a type hint; hints this does not know always fit."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin is not None:
        hint, args = origin, typing.get_args(hint)
        if hint is list and isinstance(value, list) and len(args) == 1:
            return all(_matches(item, args[0]) for item in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint in (str, list, dict, type(None)):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    return _JSON_TYPES.get(origin or hint, str(hint))


class App:
    """A registry of tasks, served with ``outlast serve --app module:attr``."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskDef] = {}

    @overload
    def task(self, fn: F, /) -> F: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        queue: str = "default",
    ) -> Callable[[F], F]: ...

    def task(
        self,
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        queue: str = "default",
    ) -> F | Callable[[F], F]:
        def register(func: F) -> F:
            task_name = name or func.__name__
            if task_name in self.tasks:
                raise ValueError(f"task {task_name!r} is registered twice")
            if task_name in ("relay", "http"):
                raise ValueError(f"{task_name!r} is a built-in task name")
            if timeout <= 0 or retries < 0:
                raise ValueError("timeout must be > 0 and retries >= 0")
            self.tasks[task_name] = TaskDef(task_name, func, timeout, retries, queue)
            return func

        return register(fn) if fn is not None else register


def load_app(path: str) -> App:
    """Import ``module:attr`` and return the :class:`App` it names."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--app must look like module:attr, not {path!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # anything the user's module raises while importing
        raise ConfigError(
            f"cannot import {module_name!r} for --app: {type(exc).__name__}: {exc}"
        ) from exc
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise ConfigError(f"{path} is not an outlast.App")
    return app


class _Done:
    """An already-finished awaitable: what ``Job.emit`` returns when called from a thread."""

    def __await__(self) -> Any:
        return
        yield  # pragma: no cover - makes this a generator


class Job:
    """The running job, as a task sees it."""

    def __init__(
        self,
        *,
        id: str,
        task: str,
        queue: str,
        attempt: int,
        max_attempts: int,
        input: Any,
        emitter: Callable[[list[dict[str, Any]]], Coroutine[Any, Any, None]],
        loop: asyncio.AbstractEventLoop,
        cancelled: threading.Event | None = None,
    ) -> None:
        self.id = id
        self.task = task
        self.queue = queue
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.input = input
        self._emitter = emitter
        self._loop = loop
        self._loop_thread = threading.get_ident()
        # Set by whoever runs the job (the worker) when it stops the job; the task only reads it.
        self._cancelled = cancelled if cancelled is not None else threading.Event()

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled, timed out or stopped at shutdown: a sync task
        should return soon."""
        return self._cancelled.is_set()

    def emit(self, data: Any) -> Awaitable[None]:
        """Append ``{"type": "output", "data": data}`` to the job's stream.

        Await it in an async task. From a sync task, just call it: it returns once stored.
        """
        return self.emit_messages([{"type": "output", "data": data}])

    def emit_messages(self, messages: list[dict[str, Any]]) -> Awaitable[None]:
        if threading.get_ident() == self._loop_thread:
            return self._emitter(messages)
        asyncio.run_coroutine_threadsafe(self._emitter(messages), self._loop).result()
        return _Done()

    async def run_process(
        self, program: str, *args: str, stdin: bytes | None = None, **kwargs: Any
    ) -> ProcessResult:
        """Run a program to its end; its exit code and output (kept in memory) come back.

        The program runs in a session (and process group) of its own. When the job is
        cancelled, times out or is stopped at shutdown, the whole group is killed: the program
        and whatever it started (``sh -c "...; sleep 30"``), rather than left running without
        its job. Keyword arguments go to :func:`asyncio.create_subprocess_exec` (``cwd``,
        ``env``, ...).
        """
        proc = await asyncio.create_subprocess_exec(
            program,
            *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            **kwargs,
        )
        try:
            out, err = await proc.communicate(stdin)
        except BaseException:
            # The group outlives its leader while any member lives: kill it even if the
            # program itself has exited (its children may still hold the output pipes).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            # Reap it, so that no zombie is left; the kill makes this immediate.
            await asyncio.shield(proc.wait())
            raise
        assert proc.returncode is not None
        return ProcessResult(proc.returncode, out, err)


@dataclass(frozen=True, slots=True)
class ProcessResult:
    """How a program run by :meth:`Job.run_process` ended."""

    returncode: int
    stdout: bytes
    stderr: bytes

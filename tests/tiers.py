"""The test tiers, and the backend list every test follows.

- ``slow`` means "starts processes": an ``outlast serve`` or ``outlast worker``, a
  ``redis-server``, node, php, chromium, any subprocess. ``pytest -m "not slow"`` is the fast
  loop: in-process tests only (the app on ``httpx.ASGITransport``: ``inproc``; SQLite stores;
  units).
- Tests that use a process-starting fixture (:data:`PROCESS_FIXTURES`) or a Redis variant of a
  backend parameter are marked ``slow`` at collection; a test that starts a process another way
  says ``pytest.mark.slow`` itself.
- The rule is enforced: a test that is not marked ``slow`` and starts a subprocess (``subprocess``,
  ``asyncio`` subprocesses, ``os.fork``/``posix_spawn``/``system``, ``multiprocessing``) fails,
  in any run, naming the command.

Backends: ``OUTLAST_TEST_BACKENDS`` (comma-separated, default every backend in
:data:`ALL_BACKENDS`) rules every test. Backend-parametrized fixtures take their parameters from
:func:`backend_params`; tests that need a Redis of their own (``redis_factory``) are deselected
when ``redis`` is not in the list.
"""

from __future__ import annotations

import _posixsubprocess
import asyncio
import contextlib
import os
import subprocess
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

ALL_BACKENDS = ("sqlite", "redis")
# Backends that are a separate process (their variants are in the `slow` tier).
PROCESS_BACKENDS = frozenset({"redis"})


def _backends() -> list[str]:
    raw = os.environ.get("OUTLAST_TEST_BACKENDS", ",".join(ALL_BACKENDS))
    names = [name.strip() for name in raw.split(",") if name.strip()]
    unknown = sorted(set(names) - set(ALL_BACKENDS))
    if unknown or not names:
        raise pytest.UsageError(
            f"OUTLAST_TEST_BACKENDS={raw!r}: expected a comma-separated subset of "
            f"{', '.join(ALL_BACKENDS)}"
        )
    return names


BACKENDS = _backends()

# Fixtures that start processes: a test using one of them (directly or through another fixture)
# is in the `slow` tier.
PROCESS_FIXTURES = frozenset(
    {"redis_factory", "server_factory", "worker_factory", "cluster", "jobs_server_factory"}
)


def backend_params(*variants: str) -> list[Any]:
    """Parameters for a backend-parametrized fixture: the *variants* (``"sqlite"``,
    ``"sqlite-fsync"``, ``"redis"``; the part before ``-`` names the backend) whose backend is
    in :data:`BACKENDS`, each marked ``slow`` when its backend is a process."""
    chosen = variants or tuple(BACKENDS)
    params = []
    for variant in chosen:
        backend = variant.split("-", 1)[0]
        assert backend in ALL_BACKENDS, f"unknown backend variant {variant!r}"
        if backend in BACKENDS:
            marks = [pytest.mark.slow] if backend in PROCESS_BACKENDS else []
            params.append(pytest.param(variant, id=variant, marks=marks))
    return params


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if "redis_factory" in fixtures and "redis" not in BACKENDS:
            drop.append(item)
            continue
        if _no_backend_left(item):
            # Parametrized with backend_params() of backends outside the list: not a skip (a
            # skip hides a test), a test this run does not select.
            drop.append(item)
            continue
        if fixtures & PROCESS_FIXTURES:
            item.add_marker(pytest.mark.slow)
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _no_backend_left(item: pytest.Item) -> bool:
    """Whether pytest made *item* from an empty parameter set (its backends all left out)."""
    mark = item.get_closest_marker("skip")
    if mark is None:
        return False
    reason = mark.kwargs.get("reason", mark.args[0] if mark.args else "")
    return str(reason).startswith("got empty parameter set")


# -- the fast tier starts no process ------------------------------------------------------------


class SubprocessInFastTier(AssertionError):
    pass


# Refusals seen during the current test phase (checked after it, even if something swallowed one).
attempts: list[str] = []


def _refuse(what: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        command = args[1] if what == "subprocess.Popen" and len(args) > 1 else kwargs.get("args")
        shown = f"{what}({command!r})" if command is not None else what
        attempts.append(shown)
        raise SubprocessInFastTier(
            f"{shown}: this test starts a process but is not marked slow (mark it "
            "`pytest.mark.slow`, or use the in-process `inproc` fixture; see tests/tiers.py)"
        )

    return refuse


def _patches() -> list[tuple[Any, str]]:
    targets: list[tuple[Any, str]] = [
        (subprocess.Popen, "__init__"),
        (_posixsubprocess, "fork_exec"),
        (asyncio, "create_subprocess_exec"),
        (asyncio, "create_subprocess_shell"),
        (asyncio.subprocess, "create_subprocess_exec"),
        (asyncio.subprocess, "create_subprocess_shell"),
    ]
    for name in ("fork", "forkpty", "system", "posix_spawn", "posix_spawnp", "popen"):
        if hasattr(os, name):
            targets.append((os, name))
    return targets


@contextlib.contextmanager
def no_subprocesses() -> Iterator[None]:
    saved = [(owner, name, owner.__dict__[name]) for owner, name in _patches()]
    for owner, name, _ in saved:
        label = "subprocess.Popen" if owner is subprocess.Popen else f"{owner.__name__}.{name}"
        setattr(owner, name, _refuse(label))
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def _guarded(item: pytest.Item) -> contextlib.AbstractContextManager[None]:
    if item.get_closest_marker("slow") is not None:
        return contextlib.nullcontext()
    return no_subprocesses()


def _check(item: pytest.Item) -> None:
    # A refusal may have been swallowed (a thread, a broad except): fail the test all the same.
    seen = list(attempts)
    attempts.clear()
    if seen and item.get_closest_marker("slow") is None:
        pytest.fail(
            f"{item.nodeid} started a process but is not marked slow: {'; '.join(seen)}",
            pytrace=False,
        )


def _guard_phase() -> Callable[[pytest.Item], Generator[None, None, None]]:
    """A hook wrapper for one phase of a test (setup, call, teardown): the guard around it."""

    @pytest.hookimpl(wrapper=True)
    def phase(item: pytest.Item) -> Generator[None, None, None]:
        attempts.clear()
        with _guarded(item):
            yield
        _check(item)

    return phase


pytest_runtest_setup = _guard_phase()
pytest_runtest_call = _guard_phase()
pytest_runtest_teardown = _guard_phase()

"""The test tiers hold: the fast tier refuses to start processes, and the backend list decides
which backend variants run and which of them are slow (see tests/tiers.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests import tiers


def _refused(start: Callable[[], object]) -> str:
    with pytest.raises(tiers.SubprocessInFastTier) as refused:
        start()
    # This test is in the fast tier itself: forget the refusal it asked for.
    tiers.attempts.clear()
    return str(refused.value)


def test_a_fast_test_cannot_start_a_process() -> None:
    message = _refused(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True))
    assert "-c" in message and "not marked slow" in message
    _refused(lambda: os.system("true"))

    async def exec_() -> None:
        await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")

    _refused(lambda: asyncio.run(exec_()))


def test_a_swallowed_refusal_still_fails_the_test(request: pytest.FixtureRequest) -> None:
    with contextlib.suppress(Exception):  # what a careless library might do
        subprocess.run([sys.executable, "-c", "pass"])
    # What the hooks run after each phase of a test that is not marked slow.
    with pytest.raises(pytest.fail.Exception, match="started a process but is not marked slow"):
        tiers._check(request.node)
    assert tiers.attempts == []


def test_backend_variants_follow_the_list_and_redis_is_slow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tiers, "BACKENDS", ["sqlite", "redis"])
    params = tiers.backend_params("sqlite", "sqlite-fsync", "redis")
    assert [p.values[0] for p in params] == ["sqlite", "sqlite-fsync", "redis"]
    assert [[m.name for m in p.marks] for p in params] == [[], [], ["slow"]]
    monkeypatch.setattr(tiers, "BACKENDS", ["sqlite"])
    assert [p.values[0] for p in tiers.backend_params("sqlite", "redis")] == ["sqlite"]
    assert [p.values[0] for p in tiers.backend_params()] == ["sqlite"]

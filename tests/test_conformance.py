"""The Durable Streams conformance suite (npm, 0.3.6) against a real outlast server.

``scripts/test`` installs the npm packages into ``tests/conformance/node_modules``. The suite is
registered from ``tests/conformance/conformance.test.mjs`` and run with ``npx vitest run``; any
failed conformance test fails this test, and the counts are checked against the suite's size so
that a run that silently skipped tests cannot pass.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServerProcess

SUITE_DIR = Path(__file__).parent / "conformance"
# 338 tests in 0.3.6: 332 active, 6 optional subscription tests that are skipped unless enabled.
ACTIVE_TESTS = 332

pytestmark = pytest.mark.conformance


def _counts(output: str) -> dict[str, int]:
    plain = re.sub(r"\x1b\[[0-9;]*m", "", output)
    line = next((ln for ln in plain.splitlines() if re.match(r"\s*Tests\s", ln)), "")
    return {word: int(num) for num, word in re.findall(r"(\d+) (passed|failed|skipped)", line)}


# One process, and `serve --workers 2` (its processes share wake-ups and the port).
@pytest.mark.parametrize("workers", [1, 2])
def test_conformance_suite(server_factory: Callable[..., ServerProcess], workers: int) -> None:
    if not (SUITE_DIR / "node_modules" / "@durable-streams").is_dir():
        pytest.fail("conformance suite not installed: run scripts/test (it runs npm ci)")
    npx = shutil.which("npx")
    assert npx is not None, "node and npx are needed for the conformance suite"
    server = server_factory(
        env={"OUTLAST_STREAMS__LONG_POLL_TIMEOUT": "0.5"}, args=["--workers", str(workers)]
    ).start()
    env = dict(os.environ, OUTLAST_CONFORMANCE_URL=server.url, CI="true", NO_COLOR="1")
    proc = subprocess.run(
        [npx, "vitest", "run", "conformance.test.mjs"],
        cwd=SUITE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = proc.stdout + proc.stderr
    counts = _counts(output)
    failures = [ln for ln in output.splitlines() if "FAIL" in ln]
    # vitest prints each failure's error and stack after this marker: the part worth reading.
    details = output[output.find("Failed Test") :][:8000] if "Failed Test" in output else ""
    print(f"conformance: {counts}")
    assert proc.returncode == 0, "\n".join(failures[-60:]) + "\n" + (details or output[-5000:])
    assert counts.get("failed", 0) == 0, "\n".join(failures) + "\n" + details
    assert counts.get("passed", 0) == ACTIVE_TESTS, counts

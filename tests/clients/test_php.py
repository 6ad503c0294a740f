"""The motivating user: a PHP script (php-cli, examples/php/, on the PHP client in clients/php/)
asks an LLM through outlast, prints the first chunks and stops reading; a second script later
fetches the finished job and gets the whole text, which outlast read to the end on its own."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerProcess, upstream_env
from tests.fakes.upstream import FAKE_TEXT
from tests.relay.helpers import FAST

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "php"
CHAT = "/v1/chat/completions"


def php(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("php")
    assert exe is not None, "php-cli is needed: scripts/test installs it"
    return subprocess.run(
        [exe, str(EXAMPLES / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_php_stops_reading_and_fetches_the_whole_answer_later(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    env = upstream_env(upstream)
    # The upstream is slow (a word every 100 ms, set by a header in outlast's config for it),
    # so the PHP script stops long before the answer is complete.
    env["OUTLAST_UPSTREAMS__FAKE__HEADERS"] = json.dumps(
        {"Authorization": "Bearer upstream-secret", "x-fake-interval": "0.1"}
    )
    server = server_factory(env={**env, **FAST}).start()
    php_env = {"OUTLAST_URL": server.url, "OUTLAST_UPSTREAM": "fake", "PATH": "/usr/bin:/bin"}

    first = php("submit_and_stream.php", "3", env=php_env)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0].startswith("job job_")
    job_id = lines[0].split()[1]
    # Three chunks: the role chunk (no text), then the first two words.
    assert lines[1] == "The quick"
    assert lines[2] == f"stopped reading after 3 chunks; outlast finishes job {job_id}"

    second = php("fetch_result.php", job_id, env=php_env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == [
        "state succeeded",
        # The role chunk, the words, the stop chunk, the usage chunk (outlast asks for usage on
        # streaming chat requests) and [DONE].
        f"events {len(FAKE_TEXT.split(' ')) + 4}",
        f"text {FAKE_TEXT}",
    ]
    assert upstream.requests[CHAT] == 1
    assert upstream.completed["chat"] == 1
    # The API key stayed in outlast's config: the script never had it, the upstream got it.
    assert upstream.last_headers["chat"]["authorization"] == "Bearer upstream-secret"


def test_php_reports_an_upstream_error(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    env = upstream_env(upstream)
    env["OUTLAST_UPSTREAMS__FAKE__HEADERS"] = json.dumps({"x-fake-status": "401"})
    server = server_factory(env={**env, **FAST}).start()
    php_env = {"OUTLAST_URL": server.url, "OUTLAST_UPSTREAM": "fake", "PATH": "/usr/bin:/bin"}
    result = php("submit_and_stream.php", env=php_env)
    assert result.returncode == 1
    assert "failed" in result.stderr
    assert "401" in result.stderr
    assert "fake upstream says 401" in result.stderr

"""The PHP client (clients/php/): its PHPUnit suite, run with Debian's ``phpunit`` against live
``outlast serve`` processes (one without tokens, one with) and the fake upstream, on the SQLite
store. This module starts what the PHP tests need, writes their fixtures (the SSE decoder's
vectors, deliveries signed by the PyPI ``standardwebhooks`` package), and fails when any PHP
test fails; PHPUnit's own report is in the failure message."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from tests.conftest import ServerProcess, upstream_env
from tests.fakes.upstream import FAKE_TEXT
from tests.relay.helpers import FAST
from tests.sse.vectors import VECTORS
from tests.tiers import backend_params

# What is tried here is PHP's side; the store behind outlast does not change it.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("backend", backend_params("sqlite"), indirect=True),
]

ROOT = Path(__file__).resolve().parents[2]
PHP_CLIENT = ROOT / "clients" / "php"
APP = "tests.cli_app:app"
TOKEN = "php-client-test-token"


def sse_vectors(path: Path) -> Path:
    path.write_text(
        json.dumps(
            [
                {
                    "name": v.name,
                    "chunks": [base64.b64encode(c).decode() for c in v.chunks],
                    "events": [list(e) for e in v.events],
                    "retry": v.retry,
                    "last_event_id": v.last_event_id,
                }
                for v in VECTORS
            ]
        )
    )
    return path


def webhook_delivery(path: Path) -> Path:
    """One job.succeeded delivery, signed by the reference library."""
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    job_id = "job_" + secrets.token_hex(12)
    body = json.dumps(
        {
            "type": "job.succeeded",
            "timestamp": "2026-12-05T12:00:00Z",
            "data": {"id": job_id, "state": "succeeded", "result": {"text": "é ✓"}},
        },
        ensure_ascii=False,
    )
    msg_id = "msg_" + secrets.token_hex(8)
    timestamp = int(datetime.now(UTC).timestamp())
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, UTC), body)
    path.write_text(
        json.dumps(
            {
                "secret": secret,
                "id": msg_id,
                "timestamp": timestamp,
                "signature": signature,
                "body": body,
                "job_id": job_id,
            }
        )
    )
    return path


def phpunit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("phpunit")
    assert exe is not None, "phpunit is needed: scripts/test installs Debian's phpunit package"
    return subprocess.run(
        [exe, "-c", str(PHP_CLIENT / "phpunit.xml"), *args],
        cwd=PHP_CLIENT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_php_client_phpunit_suite(
    server_factory: Callable[..., ServerProcess], upstream: Any, tmp_path: Path
) -> None:
    base = {
        **upstream_env(upstream),
        **FAST,
        "OUTLAST_STREAMS__LONG_POLL_TIMEOUT": "0.5",
        "PYTHONPATH": str(ROOT),
        # Slow enough that a client can leave in the middle of the answer.
        "OUTLAST_UPSTREAMS__FAKE__HEADERS": json.dumps(
            {"Authorization": "Bearer upstream-secret", "x-fake-interval": "0.05"}
        ),
        "OUTLAST_QUEUES__SMALL__CONCURRENCY": "1",
        "OUTLAST_QUEUES__SMALL__CAPACITY": "1",
    }
    open_server = server_factory(env=base, args=["--app", APP, "--grace", "0.5"]).start()
    tokens = [
        {
            "name": "php-app",
            "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
            "scopes": ["jobs:write", "jobs:read", "streams:read"],
        }
    ]
    auth_server = server_factory(
        env={**base, "OUTLAST_AUTH__TOKENS": json.dumps(tokens)},
        args=["--app", APP, "--grace", "0.5"],
    ).start()
    gates = tmp_path / "gates"
    gates.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "OUTLAST_URL": open_server.url,
        "OUTLAST_AUTH_URL": auth_server.url,
        "OUTLAST_AUTH_TOKEN": TOKEN,
        "OUTLAST_GATE_DIR": str(gates),
        "OUTLAST_FAKE_TEXT": FAKE_TEXT,
        "OUTLAST_SSE_VECTORS": str(sse_vectors(tmp_path / "sse-vectors.json")),
        "OUTLAST_WEBHOOK_VECTORS": str(webhook_delivery(tmp_path / "webhook.json")),
    }
    result = phpunit(env)
    report = f"{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, report
    # PHPUnit's closing line, e.g. "OK (123 tests, 4567 assertions)": every test ran.
    assert "OK (" in result.stdout, report

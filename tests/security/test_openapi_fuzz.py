"""The OpenAPI document matches what is served: schemathesis fuzzes every documented operation
of a real ``outlast serve`` on 127.0.0.1 (tokens on, an admin token) with a bounded number of
examples, checking that no answer is a 5xx and that every status, content type and body is the
documented one. Every secured operation answers 401 without a token and 403 without its scope,
as documented."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from tests.conftest import ServerProcess, free_port

pytestmark = pytest.mark.slow

ADMIN = "fuzz-admin-token"
READER = "fuzz-streams-read-token"
EXAMPLES = 50  # per operation


def _tokens() -> str:
    def entry(name: str, token: str, scopes: list[str]) -> dict[str, Any]:
        digest = hashlib.sha256(token.encode()).hexdigest()
        return {"name": name, "token_sha256": digest, "scopes": scopes}

    return json.dumps([entry("admin", ADMIN, ["admin"]), entry("r", READER, ["streams:read"])])


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    env = {
        "PATH": "/usr/bin:/bin",
        "OUTLAST_AUTH__TOKENS": _tokens(),
        # Live reads and long-polls end quickly, so that each example is answered in time.
        "OUTLAST_STREAMS__LONG_POLL_TIMEOUT": "0.2",
        "OUTLAST_STREAMS__SSE_MAX_DURATION": "0.2",
        "OUTLAST_JOBS__MAX_WAIT": "0.2",
        "OUTLAST_SERVER__ACCESS_LOG": "false",
    }
    server = ServerProcess(
        store=f"sqlite:///{folder / 'outlast.db'}",
        port=free_port(),
        env=env,
        args=[],
        log_path=folder / "server.log",
    ).start()
    yield server
    server.kill()
    assert "unhandled error" not in server.log(), server.log()


def test_every_operation_answers_as_documented(fuzzed_server: ServerProcess) -> None:
    """Each operation, ``EXAMPLES`` generated requests (schemathesis's Python API with
    hypothesis; its pytest plugin is off, see pyproject.toml)."""
    # Imported here: schemathesis takes about a second to import, and the fast tier collects
    # this module without running it.
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        response_schema_conformance,
        content_type_conformance,
    ]
    schema = schemathesis.openapi.from_url(f"{fuzzed_server.url}/openapi.json")
    auth = {"Authorization": f"Bearer {ADMIN}"}
    calls: list[str] = []
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        label = operation.label

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def fuzz(case: Any) -> None:
            case.call_and_validate(headers=auth, checks=checks, timeout=10)
            calls.append(label)  # noqa: B023 - fuzz() runs within this iteration

        fuzz()
    figures = {
        "operations": len(operations),
        "examples": len(calls),
        "seconds": round(time.monotonic() - started, 1),
    }
    print(f"schemathesis: {json.dumps(figures)}")
    print("operations:", ", ".join(o.label for o in operations))
    assert len(operations) >= 16
    assert len(set(calls)) == len(operations)


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method in ("get", "put", "post", "delete", "head"):
            if method in item:
                yield path, method, item[method]


def test_secured_operations_answer_401_and_403_as_documented(
    fuzzed_server: ServerProcess,
) -> None:
    document = httpx.get(f"{fuzzed_server.url}/openapi.json").json()
    concrete = {
        "{job_id}": "job_" + "0" * 32,
        "{name}": "fuzz",
        "{path}": "chat/completions",
    }
    checked = 0
    for path, method, operation in _operations(document):
        if not operation.get("security"):
            assert path in ("/healthz", "/readyz", "/openapi.json"), path
            continue
        assert {"401", "403"} <= set(operation["responses"]), (method, path)
        url = fuzzed_server.url + path
        for placeholder, value in concrete.items():
            url = url.replace(placeholder, value)
        anonymous = httpx.request(method.upper(), url)
        assert anonymous.status_code == 401, (method, path, anonymous.text)
        # The reader token holds streams:read only: stream reads pass, everything else is 403.
        reader = httpx.request(method.upper(), url, headers={"Authorization": f"Bearer {READER}"})
        if path.startswith("/v1/stream/") and method in ("get", "head"):
            assert reader.status_code == 404, (method, path, reader.text)
        else:
            assert reader.status_code == 403, (method, path, reader.text)
        checked += 1
    assert checked >= 14

"""The dashboard at ``/ui`` in headless Chromium (Playwright, the system's browser), against a
real ``outlast serve``: it loads with no console error, shows a running job's output as it is
emitted, cancels a job, pauses and resumes a queue, and with tokens on asks for a token and
refuses what the token's scopes do not allow, saying so."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import ConsoleMessage, Page, sync_playwright

from tests.clients.helpers import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import ServerProcess, wait_for
from tests.relay.helpers import all_messages
from tests.tiers import backend_params

# What is tried here is the page; the store behind outlast does not change it.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("backend", backend_params("sqlite"), indirect=True),
]

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.cli_app:app"
ADMIN_TOKEN = "dashboard-admin-token"
READER_TOKEN = "dashboard-reader-token"


def app_env(**extra: str) -> dict[str, str]:
    return {"OUTLAST_STREAMS__LONG_POLL_TIMEOUT": "5", "PYTHONPATH": str(ROOT), **extra}


@contextmanager
def browser_page() -> Iterator[tuple[Page, list[str]]]:
    """A page, and the console errors and page errors it reports."""
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})

            def on_console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    errors.append(message.text)

            page.on("console", on_console)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page, errors
        finally:
            browser.close()


def shows(page: Page, selector: str, text: str, timeout: float = 30_000) -> None:
    """Wait until *selector* holds *text* (Playwright's own matching: the page's CSP forbids the
    string evaluation that ``wait_for_function`` would use while it polls)."""
    page.locator(selector, has_text=text).wait_for(timeout=timeout)


def state_is(page: Page, state: str) -> None:
    page.locator(f"#job-state:text-is('{state}')").wait_for(timeout=30_000)


def submit(server: ServerProcess, task: str, token: str | None = None, **input: Any) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = httpx.post(f"{server.url}/v1/jobs", json={"task": task, "input": input}, headers=headers)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def job_state(server: ServerProcess, job_id: str, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return str(httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=headers).json()["state"])


def queue(server: ServerProcess, name: str, token: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    queues = httpx.get(f"{server.url}/v1/queues", headers=headers).json()["queues"]
    return next(q for q in queues if q["name"] == name)


@pytest.fixture
def app_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory(env=app_env(), args=["--app", APP, "--grace", "0.5"]).start()


def test_the_pages_load_with_no_console_error_and_show_queues_and_jobs(
    app_server: ServerProcess,
) -> None:
    done = submit(app_server, "count", n=2)
    wait_for(lambda: job_state(app_server, done) == "succeeded", timeout=30)
    with browser_page() as (page, errors):
        response = page.goto(f"{app_server.url}/ui")
        assert response is not None and response.status == 200
        csp = response.headers["content-security-policy"]
        assert "unsafe-inline" not in csp and "script-src 'self'" in csp
        page.wait_for_selector("tr[data-queue='default']")
        page.wait_for_selector(f"tr[data-job='{done}']")
        assert "succeeded" in page.inner_text(f"tr[data-job='{done}']")
        page.click(f"tr[data-job='{done}'] a")
        shows(page, "#output", '"i":1')
        shows(page, "#outcome", '"n": 2')
        assert page.inner_text("#job-state") == "succeeded"
    assert errors == []


def test_a_running_jobs_output_appears_as_it_is_emitted(
    app_server: ServerProcess, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    job_id = submit(app_server, "steps", gate=str(gate), n=3)
    with browser_page() as (page, errors):
        page.goto(f"{app_server.url}/ui#/jobs/{job_id}")
        shows(page, "#output", '"step":2')
        assert '"step":3' not in page.inner_text("#output")
        gate.touch()  # the task emits steps 3, 4, 5 now
        wait_for(
            lambda: any(
                m.get("type") == "output" and m["data"]["step"] == 3
                for m in all_messages(app_server, job_id)
            ),
            timeout=30,
        )
        stored = time.monotonic()
        # The page follows the job's stream live: the emit shows within a second of being
        # stored (a long-poll wakes on the append; this is a bound on a wake-up, not a speed).
        shows(page, "#output", '"step":3', timeout=1000)
        assert time.monotonic() - stored < 1.0
        state_is(page, "succeeded")
    assert errors == []


def test_cancel_from_the_page_cancels_the_job(app_server: ServerProcess, tmp_path: Path) -> None:
    job_id = submit(app_server, "block", gate=str(tmp_path / "never"))
    wait_for(lambda: job_state(app_server, job_id) == "running", timeout=30)
    with browser_page() as (page, errors):
        page.goto(f"{app_server.url}/ui#/jobs/{job_id}")
        state_is(page, "running")
        page.click("#cancel")
        wait_for(lambda: job_state(app_server, job_id) == "cancelled", timeout=10)
        state_is(page, "cancelled")
        assert page.is_disabled("#cancel")
    assert errors == []


def test_pause_and_resume_from_the_page(app_server: ServerProcess) -> None:
    with browser_page() as (page, errors):
        page.goto(f"{app_server.url}/ui")
        button = "tr[data-queue='default'] button"
        page.wait_for_selector(button)
        assert page.inner_text(button) == "Pause"
        page.click(button)
        wait_for(lambda: queue(app_server, "default")["paused"] is True, timeout=10)
        page.locator(f"{button}:text-is('Resume')").wait_for(timeout=30_000)
        # Paused: a submitted job waits.
        job_id = submit(app_server, "count", n=1)
        page.click(button)
        wait_for(lambda: queue(app_server, "default")["paused"] is False, timeout=10)
        wait_for(lambda: job_state(app_server, job_id) == "succeeded", timeout=30)
    assert errors == []


def test_with_tokens_the_page_asks_for_one_and_a_read_only_token_cannot_cancel(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    tokens = [
        {
            "name": name,
            "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
            "scopes": scopes,
        }
        for name, token, scopes in [
            ("ops", ADMIN_TOKEN, ["admin"]),
            ("viewer", READER_TOKEN, ["jobs:read"]),
        ]
    ]
    server = server_factory(
        env=app_env(OUTLAST_AUTH__TOKENS=json.dumps(tokens)), args=["--app", APP]
    ).start()
    job_id = submit(server, "block", token=ADMIN_TOKEN, gate=str(tmp_path / "never"))
    with browser_page() as (page, _errors):
        page.goto(f"{server.url}/ui#/jobs/{job_id}")
        page.wait_for_selector("#login:not([hidden])")
        page.fill("#token", READER_TOKEN)
        page.click("#login button[type=submit]")
        shows(page, "#job-id", job_id)
        state_is(page, "running")
        page.click("#cancel")
        page.wait_for_selector("#notice:not([hidden])")
        message = page.inner_text("#notice")
        assert "Not allowed to cancel this job" in message and "scope" in message
        # The token is kept for this tab only.
        assert page.evaluate("sessionStorage.getItem('outlast-token')") == READER_TOKEN
        assert page.evaluate("localStorage.length") == 0
    assert job_state(server, job_id, ADMIN_TOKEN) == "running"
    httpx.post(
        f"{server.url}/v1/jobs/{job_id}/cancel", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )

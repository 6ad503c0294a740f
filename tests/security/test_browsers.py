"""A web page open in a browser on the same machine cannot drive outlast without tokens: no job
submitted by a "simple request", no read from another origin, no DNS rebinding. With tokens,
the configured origins keep working. See docs/operations.md, "Security model".

Each request here is what a browser would send for the page (its ``Origin``, ``Host`` and
``Content-Type`` headers); a real Chromium page checks the end-to-end case.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.clients.helpers import in_chromium, static_site
from tests.conftest import ServerProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
EVIL = "http://evil.example"
TOKEN = "browser-test-token"
JOB = {"task": "echo", "input": {"x": 1}}


@pytest.fixture
def backend() -> str:
    # Requests are refused before any store is touched: one backend says it all.
    return "sqlite"


def _echo_server(
    factory: Callable[..., ServerProcess], tmp_path: Path, **env: str
) -> ServerProcess:
    runs = tmp_path / "runs"
    runs.mkdir(exist_ok=True)
    path = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    full = {"PYTHONPATH": path, "OUTLAST_TEST_RUNS": str(runs), **env}
    return factory(env=full, args=["--app", "tests.jobs.apps:app"]).start()


def _job_count(server: ServerProcess, headers: dict[str, str] | None = None) -> int:
    resp = httpx.get(f"{server.url}/v1/jobs", headers=headers)
    assert resp.status_code == 200, resp.text
    return len(resp.json()["jobs"])


def _refused(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.json()["error"]["code"] == code
    assert "access-control-allow-origin" not in resp.headers


def _tokens_env() -> dict[str, str]:
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    tokens = [{"name": "t", "token_sha256": digest, "scopes": ["admin"]}]
    return {"OUTLAST_AUTH__TOKENS": json.dumps(tokens)}


def test_json_endpoints_take_only_json_bodies(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """A page can POST text/plain, form or multipart bodies without a preflight: refused."""
    server = _echo_server(server_factory, tmp_path)
    body = json.dumps(JOB)
    for content_type in (
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        None,
    ):
        headers = {} if content_type is None else {"Content-Type": content_type}
        for path in ("/v1/jobs", "/v1/upstreams/llm/chat/completions", "/v1/jobs/job_x/cancel"):
            resp = httpx.post(f"{server.url}{path}", content=body, headers=headers)
            _refused(resp, 415, "unsupported_media_type")
    # Chunked: the declared type decides too.
    chunked = httpx.post(
        f"{server.url}/v1/jobs",
        content=iter([body.encode()]),
        headers={"Content-Type": "text/plain"},
    )
    _refused(chunked, 415, "unsupported_media_type")
    assert _job_count(server) == 0
    # JSON still goes through, with parameters or as a +json type.
    for content_type in (
        "application/json",
        "application/json; charset=utf-8",
        "application/x+json",
    ):
        resp = httpx.post(
            f"{server.url}/v1/jobs", content=body, headers={"Content-Type": content_type}
        )
        assert resp.status_code == 202, resp.text
    assert _job_count(server) == 3
    # Stream appends carry their own content types and keep working.
    url = f"{server.url}/v1/stream/plain"
    assert httpx.put(url, headers={"Content-Type": "text/plain"}).status_code == 201
    assert httpx.post(url, headers={"Content-Type": "text/plain"}, content=b"hi").status_code == 204


def test_requests_from_other_origins_are_refused(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = _echo_server(server_factory, tmp_path)
    stream = f"{server.url}/v1/stream/mine"
    assert (
        httpx.put(stream, headers={"Content-Type": "text/plain"}, content=b"x").status_code == 201
    )
    assert httpx.post(f"{server.url}/v1/jobs", json=JOB).status_code == 202
    for origin in (EVIL, "null", "http://127.0.0.1:1", "https://localhost"):
        page = {"Origin": origin}
        _refused(
            httpx.post(f"{server.url}/v1/jobs", json=JOB, headers=page), 403, "forbidden_origin"
        )
        _refused(httpx.get(f"{server.url}/v1/jobs", headers=page), 403, "forbidden_origin")
        _refused(httpx.get(stream, params={"offset": "-1"}, headers=page), 403, "forbidden_origin")
        _refused(
            httpx.get(stream, params={"offset": "-1", "live": "sse"}, headers=page),
            403,
            "forbidden_origin",
        )
        plain = {**page, "Content-Type": "text/plain"}
        _refused(httpx.post(stream, content=b"evil", headers=plain), 403, "forbidden_origin")
        _refused(httpx.put(f"{stream}-new", headers=plain), 403, "forbidden_origin")
        _refused(httpx.delete(stream, headers=page), 403, "forbidden_origin")
        # A preflight is answered (it gives nothing away) but allows no origin.
        pre = httpx.options(stream, headers={**page, "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 204
        assert "access-control-allow-origin" not in pre.headers
    assert _job_count(server) == 1
    assert httpx.get(stream, params={"offset": "-1"}).content == b"x"
    assert httpx.head(f"{stream}-new").status_code == 404
    # The server's own origin is not another origin.
    own = {"Origin": server.url}
    assert httpx.post(f"{server.url}/v1/jobs", json=JOB, headers=own).status_code == 202
    own_by_name = {"Origin": f"http://localhost:{server.port}", "Host": f"localhost:{server.port}"}
    assert httpx.get(f"{server.url}/v1/jobs", headers=own_by_name).status_code == 200


def test_foreign_host_names_are_refused(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """DNS rebinding: evil.example resolves to 127.0.0.1, the page is "same-origin" for the
    browser, and only the Host header tells."""
    server = _echo_server(server_factory, tmp_path)
    port = server.port
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.nip.io:{port}", "0.0.0.0"):
        rebound = {"Host": host}
        _refused(
            httpx.post(f"{server.url}/v1/jobs", json=JOB, headers=rebound), 403, "forbidden_host"
        )
        _refused(httpx.get(f"{server.url}/v1/jobs", headers=rebound), 403, "forbidden_host")
        _refused(
            httpx.get(f"{server.url}/v1/stream/any", params={"offset": "-1"}, headers=rebound),
            403,
            "forbidden_host",
        )
        _refused(
            httpx.post(
                f"{server.url}/v1/stream/any",
                content=b"x",
                headers={**rebound, "Content-Type": "text/plain"},
            ),
            403,
            "forbidden_host",
        )
        _refused(httpx.get(f"{server.url}/metrics", headers=rebound), 403, "forbidden_host")
    assert _job_count(server) == 0
    for host in (
        f"localhost:{port}",
        "localhost",
        f"127.0.0.1:{port}",
        "127.1.2.3",
        f"[::1]:{port}",
    ):
        assert httpx.get(f"{server.url}/v1/jobs", headers={"Host": host}).status_code == 200, host


def test_allowed_hosts_let_a_local_proxy_through(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = _echo_server(
        server_factory, tmp_path, OUTLAST_SERVER__ALLOWED_HOSTS='["outlast.internal"]'
    )
    proxied = {"Host": "outlast.internal:8080"}
    assert httpx.get(f"{server.url}/v1/jobs", headers=proxied).status_code == 200
    _refused(
        httpx.get(f"{server.url}/v1/jobs", headers={"Host": "evil.example"}), 403, "forbidden_host"
    )


def test_tokens_mode_serves_configured_origins(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    app_origin = "https://app.example"
    server = _echo_server(
        server_factory,
        tmp_path,
        OUTLAST_CORS__ORIGINS=json.dumps([app_origin]),
        **_tokens_env(),
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    resp = httpx.post(f"{server.url}/v1/jobs", json=JOB, headers={**auth, "Origin": app_origin})
    assert resp.status_code == 202, resp.text
    assert resp.headers["access-control-allow-origin"] == app_origin
    assert "Origin" in resp.headers["vary"]
    pre = httpx.options(
        f"{server.url}/v1/jobs",
        headers={"Origin": app_origin, "Access-Control-Request-Method": "POST"},
    )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == app_origin
    # Another origin gets nothing, token or not.
    _refused(
        httpx.post(f"{server.url}/v1/jobs", json=JOB, headers={**auth, "Origin": EVIL}),
        403,
        "forbidden_origin",
    )
    # A token is not sent by a browser on its own: the Host name does not matter with tokens.
    public = {**auth, "Host": "outlast.example.com"}
    assert httpx.get(f"{server.url}/v1/jobs", headers=public).status_code == 200
    assert _job_count(server, auth) == 1


EVIL_PAGE = """<!doctype html><script>
window.outcome = null;
const target = new URLSearchParams(location.search).get("target");
fetch(target, {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"},
               body: JSON.stringify({task: "echo", input: {stolen: true}})})
  .then(() => { window.outcome = "sent"; }, () => { window.outcome = "failed"; });
</script>"""


@pytest.fixture
def evil_page(tmp_path: Path) -> Iterator[str]:
    """A page on another origin (another port of 127.0.0.1) that posts a job as a form would."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "evil.html").write_text(EVIL_PAGE)
    with static_site(site) as url:
        yield f"{url}/evil.html"


@pytest.mark.slow
def test_a_page_in_chromium_cannot_submit_a_job(
    server_factory: Callable[..., ServerProcess], tmp_path: Path, evil_page: str
) -> None:
    server = _echo_server(server_factory, tmp_path)
    outcome = in_chromium(
        f"{evil_page}?target={server.url}/v1/jobs",
        until="window.outcome !== null",
        result="window.outcome",
    )
    assert outcome == "sent"  # the browser sent it; outlast refused it
    assert _job_count(server) == 0

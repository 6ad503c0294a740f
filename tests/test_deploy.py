"""docs/deploy.md, tested where this machine allows: a real nginx (Debian's package, run as a
plain process on 127.0.0.1) with the documented config in front of a real ``outlast serve``. SSE
events pass one by one, long-polls answer when data comes, and SIGTERM of outlast ends readers
behind nginx cleanly. The systemd unit is checked against the rules the doc states."""

from __future__ import annotations

import configparser
import json
import shutil
import signal
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, free_port, wait_for
from tests.test_examples import code_blocks

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "examples" / "deploy"
DOC = ROOT / "docs" / "deploy.md"
GRACE = 5.0


def _documented(language: str) -> str:
    blocks = [body for lang, body in code_blocks(DOC) if lang == language]
    assert len(blocks) == 1, f"one {language} block in docs/deploy.md"
    return "\n".join(blocks[0]) + "\n"


def test_the_doc_shows_the_files_the_tests_use() -> None:
    assert _documented("nginx") == (DEPLOY / "nginx.conf").read_text()
    assert _documented("ini") == (DEPLOY / "outlast.service").read_text()
    assert "docs/deploy.md" in (ROOT / "README.md").read_text()


def test_the_systemd_unit_follows_the_rules_the_doc_gives() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "outlast.service").read_text())
    service = unit["Service"]
    assert service["KillSignal"] == "SIGTERM"
    assert service["Restart"] == "on-failure"
    assert int(service["LimitNOFILE"]) >= 65536
    grace = float(service["ExecStart"].split("--grace", 1)[1].split()[0])
    assert float(service["TimeoutStopSec"].rstrip("s")) > grace + 1  # + the readers' second
    assert "--log-format json" in service["ExecStart"]


@dataclass
class Nginx:
    port: int
    proc: subprocess.Popen[bytes]
    context: ssl.SSLContext
    error_log: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.context, timeout=30)


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for outlast.example.com and 127.0.0.1."""
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is needed: scripts/test installs it"
    cert, key = folder / "fullchain.pem", folder / "privkey.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt"),
            *("ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=outlast.example.com"),
            *("-addext", "subjectAltName=DNS:outlast.example.com,IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the documented config no longer has {old!r}"
    return text.replace(old, new)


@pytest.fixture
def nginx_factory(tmp_path: Path) -> Iterator[Callable[[ServerProcess], Nginx]]:
    """Start nginx with examples/deploy/nginx.conf in front of a server: only its ports, the
    certificate's paths and outlast's address are changed, and it runs as a plain foreground
    process with everything under a temporary prefix."""
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(exe).exists(), "nginx is needed: scripts/test installs it"
    started: list[subprocess.Popen[bytes]] = []

    def start(server: ServerProcess) -> Nginx:
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        cert, key = _certificate(prefix)
        port, plain_port = free_port(), free_port()
        site = (DEPLOY / "nginx.conf").read_text()
        site = _replace_once(site, "server 127.0.0.1:8787;", f"server 127.0.0.1:{server.port};")
        site = _replace_once(site, "listen 80;", f"listen 127.0.0.1:{plain_port};")
        site = _replace_once(site, "listen 443 ssl", f"listen 127.0.0.1:{port} ssl")
        live = "/etc/letsencrypt/live/outlast.example.com"
        site = _replace_once(site, f"{live}/fullchain.pem", str(cert))
        site = _replace_once(site, f"{live}/privkey.pem", str(key))
        (prefix / "outlast.conf").write_text(site)
        temp = "\n".join(
            f"    {kind}_temp_path {prefix / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (prefix / "nginx.conf").write_text(
            f"daemon off;\nmaster_process off;\npid {prefix / 'nginx.pid'};\n"
            f"error_log {prefix / 'error.log'} info;\n"
            "events { worker_connections 1024; }\n"
            f"http {{\n    access_log {prefix / 'access.log'};\n{temp}\n"
            f"    include {prefix / 'outlast.conf'};\n}}\n"
        )
        proc = subprocess.Popen(
            [exe, "-e", str(prefix / "error.log"), "-p", str(prefix), "-c", "nginx.conf"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(proc)
        context = ssl.create_default_context(cafile=str(cert))
        nginx = Nginx(port, proc, context, prefix / "error.log")

        def up() -> bool:
            assert proc.poll() is None, nginx.error_log.read_text()
            try:
                with nginx.client() as client:
                    return client.get("/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=20)
        redirect = httpx.get(f"http://127.0.0.1:{plain_port}/healthz")
        assert redirect.status_code == 301
        assert redirect.headers["location"].startswith("https://")
        return nginx

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@dataclass
class Reader:
    """Follows an SSE response in a thread, keeping its lines and how it ended."""

    client: httpx.Client
    path: str
    lines: list[str] = field(default_factory=list)
    error: BaseException | None = None
    ended: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Reader:
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        try:
            with self.client.stream("GET", self.path) as resp:
                assert resp.status_code == 200, resp.status_code
                for line in resp.iter_lines():
                    self.lines.append(line)
        except BaseException as exc:  # reported to the test thread
            self.error = exc
        finally:
            self.ended.set()

    def data(self) -> list[object]:
        return [json.loads(line[5:]) for line in list(self.lines) if line.startswith("data:")]


def _append(client: httpx.Client, path: str, value: object) -> None:
    resp = client.post(path, json=value)
    assert resp.status_code == 204, resp.text


def test_events_and_long_polls_pass_nginx_unbuffered(
    server_factory: Callable[..., ServerProcess], nginx_factory: Callable[[ServerProcess], Nginx]
) -> None:
    server = server_factory(env={"OUTLAST_STREAMS__LONG_POLL_TIMEOUT": "30"}).start()
    nginx = nginx_factory(server)
    with nginx.client() as client, nginx.client() as reading:
        path = "/v1/stream/through-nginx"
        assert client.put(path, headers={"Content-Type": "application/json"}).status_code == 201
        reader = Reader(reading, f"{path}?offset=-1&live=sse").start()
        for i in range(5):
            _append(client, path, {"i": i})
            # Each event reaches the reader before the next one is even appended.
            wait_for(lambda i=i: [{"i": i}] in reader.data(), timeout=10)
        assert [d for d in reader.data() if isinstance(d, list)] == [[{"i": i}] for i in range(5)]

        # A long-poll answers as soon as data comes, not when its 30 s are over.
        tail = client.head(path).headers["stream-next-offset"]
        answer: list[httpx.Response] = []
        poll = threading.Thread(
            target=lambda: answer.append(
                client.get(path, params={"offset": tail, "live": "long-poll"})
            ),
            daemon=True,
        )
        poll.start()
        wait_for(lambda: _long_polls(server) >= 1, timeout=10)  # it reached outlast
        _append(client, path, {"late": True})
        wait_for(lambda: answer, timeout=10)
        assert answer[0].status_code == 200 and answer[0].json() == [{"late": True}]
        assert reader.error is None


def _long_polls(server: ServerProcess) -> float:
    """Long-polls waiting in outlast now (its own gauge, read past nginx)."""
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith('outlast_stream_readers{mode="long-poll"}'):
            return float(line.split()[-1])
    return 0.0


def test_sigterm_of_outlast_ends_readers_behind_nginx_cleanly(
    server_factory: Callable[..., ServerProcess], nginx_factory: Callable[[ServerProcess], Nginx]
) -> None:
    server = server_factory(env={"OUTLAST_SERVER__GRACE": str(GRACE)}).start()
    nginx = nginx_factory(server)
    with nginx.client() as client:
        path = "/v1/stream/draining"
        assert client.put(path, headers={"Content-Type": "application/json"}).status_code == 201
        _append(client, path, {"before": "stop"})
        readers = [Reader(nginx.client(), f"{path}?offset=-1&live=sse").start() for _ in range(3)]
        for reader in readers:
            wait_for(lambda reader=reader: reader.data(), timeout=10)
        server.signal(signal.SIGTERM)
        assert server.wait_exit(timeout=30) == 0
        for reader in readers:
            assert reader.ended.wait(timeout=10)
            # The response ended as a whole (nginx passed the end on), not cut mid-body.
            assert reader.error is None, repr(reader.error)
            assert [{"before": "stop"}] in reader.data()
            reader.client.close()

"""``Client::sendEvents`` where PHP apps run it: a page under real nginx + PHP-FPM (Debian's
packages) relays a job's events to headless Chromium's ``EventSource``
(examples/php/stream_to_browser.php, served as it is).

- A browser that leaves after a few events: the PHP worker stops and closes its connection to
  outlast at once, while the job goes on (PHP's default abort would keep that connection open
  until the worker exits).
- A browser whose connection is cut mid-way (the PHP-FPM worker serving it is killed): its
  EventSource reconnects with ``Last-Event-ID``, a new worker resumes from there, and the browser
  gets every event once, in order; after the end the page answers 204 and EventSource stops.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.clients.helpers import CHROMIUM, CHROMIUM_ARGS, CLIENTS, as_received, expected_events
from tests.conftest import ServerProcess, free_port, wait_for
from tests.relay.helpers import finished, relay_server, submit
from tests.tiers import backend_params

# What is tried here is PHP's side; the store behind outlast does not change it.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("backend", backend_params("sqlite"), indirect=True),
]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "php"


@dataclass
class PhpFpmSite:
    """nginx on 127.0.0.1 in front of a PHP-FPM pool, both in a temporary prefix."""

    url: str
    fpm: subprocess.Popen[bytes]
    nginx: subprocess.Popen[bytes]
    logs: Path

    def fpm_workers(self) -> list[int]:
        children = Path(f"/proc/{self.fpm.pid}/task/{self.fpm.pid}/children").read_text()
        return [int(pid) for pid in children.split()]

    def worker_connections_to(self, port: int) -> dict[int, int]:
        """Established TCP connections from PHP-FPM workers to 127.0.0.1:*port*, by pid."""
        inodes = _established_inodes_to(port)
        found: dict[int, int] = {}
        for pid in self.fpm_workers():
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except FileNotFoundError:
                continue
            for fd in fds:
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                    found[pid] = found.get(pid, 0) + 1
        return found

    def log(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')}"
            for p in sorted(self.logs.glob("*.log"))
        )


def _established_inodes_to(port: int) -> set[int]:
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            remote, state, inode = fields[2], fields[3], int(fields[9])
            if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


@pytest.fixture
def php_site(tmp_path: Path) -> Iterator[Callable[[ServerProcess], PhpFpmSite]]:
    fpm_bins = sorted(glob.glob("/usr/sbin/php-fpm*"))
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    assert fpm_bins, "php-fpm is needed: scripts/test installs Debian's php-fpm"
    assert Path(nginx_bin).exists(), "nginx is needed: scripts/test installs Debian's nginx"
    started: list[PhpFpmSite] = []

    def start(outlast: ServerProcess) -> PhpFpmSite:
        prefix = tmp_path / "site"
        for sub in ("logs", "tmp"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)
        fpm_port, http_port = free_port(), free_port()
        (prefix / "php-fpm.conf").write_text(
            f"""[global]
pid = {prefix}/php-fpm.pid
error_log = {prefix}/logs/php-fpm.log
daemonize = no

[www]
listen = 127.0.0.1:{fpm_port}
pm = static
pm.max_children = 3
clear_env = no
catch_workers_output = yes
"""
        )
        (prefix / "nginx.conf").write_text(
            f"""daemon off;
worker_processes 1;
user root;
error_log {prefix}/logs/nginx-error.log;
pid {prefix}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/logs/nginx-access.log;
    client_body_temp_path {prefix}/tmp/body;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    proxy_temp_path {prefix}/tmp/proxy;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    types {{ text/html html; }}
    server {{
        listen 127.0.0.1:{http_port};
        root {EXAMPLES};
        location /page/ {{ alias {CLIENTS}/; }}
        location ~ \\.php$ {{
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
            fastcgi_pass 127.0.0.1:{fpm_port};
            fastcgi_read_timeout 300s;
        }}
    }}
}}
"""
        )
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OUTLAST_URL": outlast.url}
        fpm = subprocess.Popen(
            [
                fpm_bins[-1],
                "--nodaemonize",
                "--allow-to-run-as-root",
                "-y",
                str(prefix / "php-fpm.conf"),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        nginx = subprocess.Popen(
            [
                nginx_bin,
                "-p",
                str(prefix),
                "-c",
                str(prefix / "nginx.conf"),
                "-e",
                str(prefix / "logs/nginx-error.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        site = PhpFpmSite(f"http://127.0.0.1:{http_port}", fpm, nginx, prefix / "logs")
        started.append(site)

        def listening() -> bool:
            for proc in (fpm, nginx):
                if proc.poll() is not None:
                    raise AssertionError(f"exited with {proc.returncode}:\n{site.log()}")
            return port_open(fpm_port) and port_open(http_port) and len(site.fpm_workers()) == 3

        wait_for(listening, timeout=20)
        return site

    yield start
    for site in started:
        for proc in (site.nginx, site.fpm):
            if proc.poll() is None:
                proc.send_signal(signal.SIGQUIT if proc is site.nginx else signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


def port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def page_url(site: PhpFpmSite, job_id: str) -> str:
    events = f"/stream_to_browser.php?job={job_id}"
    return f"{site.url}/page/eventsource.html?events={urllib.parse.quote(events, safe='')}"


def report(page: Page) -> dict[str, Any]:
    value: dict[str, Any] = page.evaluate("window.report")
    return value


def test_a_browser_that_leaves_frees_the_php_worker_connection_at_once(
    server_factory: Callable[..., ServerProcess], upstream: Any, php_site: Callable[..., PhpFpmSite]
) -> None:
    server = relay_server(server_factory, upstream)
    site = php_site(server)
    # 200 events 50 ms apart: the job runs for 10 s, long after the browser has left.
    job_id = submit(server, "/sse?n=200&interval=0.05&key=leaves")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(page_url(site, job_id))
            page.wait_for_function("window.report.events.length >= 5", timeout=30_000)
            # While the page reads, its PHP worker holds one connection to outlast.
            assert sum(site.worker_connections_to(server.port).values()) == 1, site.log()
            page.evaluate("window.source.close()")
            page.close()
            # The worker notices at its next write and closes its connection to outlast.
            wait_for(lambda: not site.worker_connections_to(server.port), timeout=10)
        finally:
            browser.close()
    # The job went on without its reader, and finished.
    job = finished(server, job_id)
    assert job["state"] == "succeeded" and job["result"]["events"] == 201
    assert not site.worker_connections_to(server.port)


def test_a_browser_cut_off_mid_way_resumes_without_gap_or_duplicate(
    server_factory: Callable[..., ServerProcess], upstream: Any, php_site: Callable[..., PhpFpmSite]
) -> None:
    server = relay_server(server_factory, upstream)
    site = php_site(server)
    # 200 events 50 ms apart: the cut comes while the job still runs.
    job_id = submit(server, "/sse?n=200&interval=0.05&key=reconnects")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(page_url(site, job_id))
            page.wait_for_function("window.report.events.length >= 10", timeout=30_000)
            # Cut the browser's connection where it hurts: kill the PHP worker serving it.
            serving = wait_for(lambda: site.worker_connections_to(server.port), timeout=10)
            for pid in serving:
                os.kill(pid, signal.SIGKILL)
            page.wait_for_function("window.report.closed === true", timeout=60_000)
            got = report(page)
        finally:
            browser.close()
    received = [as_received(e["event"], e["data"]) for e in got["events"]]
    assert received == expected_events(server, job_id)
    ids = [e["id"] for e in got["events"]]
    assert ids == sorted(set(ids))
    assert got["opens"] == 2, got  # the first stream, and the one after the cut
    assert finished(server, job_id)["result"]["events"] == 201
    wait_for(lambda: not site.worker_connections_to(server.port), timeout=10)

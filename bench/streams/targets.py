"""The servers under test: how to start each one on a free 127.0.0.1 port, and stop it.

A *target* is a name and a recipe (a :class:`TargetSpec`); :func:`start` turns a recipe into a
running :class:`Server` in its own temporary directory and process group, so that stopping it
kills everything it spawned. Adding a target is adding one entry to :func:`specs`.

- ``ref``            the protocol's reference Node server, in memory (the peer for every ratio)
- ``ref-file``       the same server with its file-backed store (LMDB + log files), optional
- ``outlast-sqlite`` ``outlast serve --store sqlite:///<tmp>/outlast.db``
- ``outlast-redis``  ``outlast serve --store redis://127.0.0.1:<port>/0`` on a private
                     ``redis-server`` started for the run
- ``outlast-sqlite-workers``, ``outlast-redis-workers``: the same with ``--workers N``
                     (``--outlast-workers``, default 2): N processes on the port

``--outlast-cmd`` replaces the outlast command line (a template with ``{host}``, ``{port}``,
``{store}``); ``--dry-run`` points the outlast targets at the reference server instead, to test
the harness before outlast exists.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BENCH_DIR = Path(__file__).resolve().parent.parent  # bench/
REPO = BENCH_DIR.parent
REF_SCRIPT = Path(__file__).resolve().parent / "ref_server.mjs"
HOST = "127.0.0.1"  # benchmarks only ever talk to loopback
START_TIMEOUT = 30.0  # seconds for a server to answer its first request
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL


@dataclass
class TargetSpec:
    name: str
    label: str  # what the report calls it
    kind: str  # "ref" | "outlast"
    argv: Callable[[int, Path, str], list[str]]  # (port, workdir, store URL) -> command
    store: Callable[[Path], str] = lambda workdir: ""
    needs_redis: bool = False
    env: dict[str, str] = field(default_factory=dict)
    custom_command: bool = False  # --outlast-cmd was given
    start_timeout: float = START_TIMEOUT  # seconds for its first answer


@dataclass
class Server:
    spec: TargetSpec
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes]
    log: Path
    command: list[str]
    redis: subprocess.Popen[bytes] | None = None
    version: str = ""

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def pids(self) -> list[int]:
        """The server's process tree, plus its private redis-server: all count as the server."""
        roots = [self.proc.pid] + ([self.redis.pid] if self.redis else [])
        return [pid for root in roots for pid in process_tree(root)]

    def cpu_seconds(self) -> float:
        return sum(proc_cpu_seconds(pid) for pid in self.pids())

    def rss_bytes(self) -> int:
        return sum(proc_rss_bytes(pid) for pid in self.pids())

    def alive(self) -> bool:
        return self.proc.poll() is None and (self.redis is None or self.redis.poll() is None)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# ------------------------------------------------------------------------------ the recipes


def node_command() -> list[str]:
    return [shutil.which("node") or "node", str(REF_SCRIPT)]


def outlast_command(
    template: str | None, workers: int = 1
) -> Callable[[int, Path, str], list[str]]:
    extra = ["--workers", str(workers)] if workers != 1 else []

    def argv(port: int, workdir: Path, store: str) -> list[str]:
        if template:
            return shlex.split(template.format(host=HOST, port=port, store=store)) + extra
        # The same interpreter as the benchmark, so `pip install -e .` here is what runs.
        return [
            sys.executable,
            "-m",
            "outlast",
            "serve",
            "--host",
            HOST,
            "--port",
            str(port),
            "--store",
            store,
            *extra,
        ]

    return argv


def specs(
    outlast_cmd: str | None = None, dry_run: bool = False, workers: int = 2
) -> dict[str, TargetSpec]:
    node: Callable[[int, Path, str], list[str]] = lambda p, w, s: node_command()  # noqa: E731
    ref = TargetSpec("ref", "reference (Node, in memory)", "ref", node)
    ref_file = TargetSpec(
        "ref-file", "reference (Node, file store)", "ref", node, env={"DATA_DIR": "{workdir}/data"}
    )
    found = {"ref": ref, "ref-file": ref_file}
    for suffix, count, how in (("", 1, ""), ("-workers", workers, f", --workers {workers}")):
        argv = outlast_command(outlast_cmd, count)
        for store, label, url in (
            ("sqlite", "SQLite", lambda w: f"sqlite:///{w}/outlast.db"),
            ("redis", "Redis", lambda w: "redis://{redis}/0"),
        ):
            name = f"outlast-{store}{suffix}"
            found[name] = (
                # Harness test: the outlast slots run the reference server, labelled as such.
                TargetSpec(name, f"DRY RUN: reference as {name}", "ref", node)
                if dry_run
                else TargetSpec(
                    name,
                    f"outlast ({label}{how})",
                    "outlast",
                    argv,
                    store=url,
                    needs_redis=store == "redis",
                    custom_command=bool(outlast_cmd),
                )
            )
    return found


# ------------------------------------------------------------------------------ lifecycle


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    # The benchmark's own OUTLAST_* variables must not leak into the servers: an unknown key
    # is an error for outlast, and a stray setting would change what is measured.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTLAST_")}
    env.update(extra)
    return env


def spawn(
    argv: list[str], workdir: Path, log: Path, env: dict[str, str], cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        # Own session = own process group: stop() kills whatever the server spawned.
        return subprocess.Popen(
            argv,
            cwd=cwd or workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    exe = shutil.which("redis-server")
    if not exe:
        raise RuntimeError("redis-server not found (apt-get install redis-server)")
    port = free_port()
    # In memory, no snapshots or AOF: persistence stalls would measure the disk, not outlast.
    argv = [
        exe,
        "--bind",
        HOST,
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        "--protected-mode",
        "yes",
        "--daemonize",
        "no",
    ]
    proc = spawn(argv, workdir, workdir / "redis.log", clean_env({}))
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited: {(workdir / 'redis.log').read_text()}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return proc, port
        time.sleep(0.05)
    kill_group(proc)
    raise RuntimeError("redis-server did not answer PING")


def start(spec: TargetSpec, keep: bool = False) -> Server:
    workdir = Path(tempfile.mkdtemp(prefix=f"outlast-bench-{spec.name}-"))
    redis, redis_port = start_redis(workdir) if spec.needs_redis else (None, 0)
    server: Server | None = None
    try:
        port = free_port()
        store = spec.store(workdir).format(redis=f"{HOST}:{redis_port}")
        argv = spec.argv(port, workdir, store)
        env = clean_env({k: v.format(workdir=workdir) for k, v in spec.env.items()})
        env["PORT"] = str(port)
        (workdir / "data").mkdir(exist_ok=True)  # ref-file's DATA_DIR
        log = workdir / "server.log"
        proc = spawn(argv, workdir, log, env)
        server = Server(spec, port, workdir, proc, log, argv, redis)
        wait_ready(server)
        server.version = version_of(spec)
        return server
    except BaseException:
        if server is not None:
            stop(server, keep=keep)  # also stops its redis-server
        elif redis is not None:
            kill_group(redis)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def wait_ready(server: Server) -> None:
    """Wait until the server answers HTTP on its port (any status: a 404 is fine)."""
    deadline = time.monotonic() + server.spec.start_timeout
    probe = f"{server.base}/v1/stream/__bench_probe__"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            tail = server.log_tail()
            last = tail.splitlines()[-1][:200] if tail.strip() else "no output"
            raise RuntimeError(
                f"{server.spec.name} exited with {server.proc.returncode} while starting "
                f"({last})\n$ {shlex.join(server.command)}\n{tail}"
            )
        with contextlib.suppress(httpx.HTTPError):
            httpx.head(probe, timeout=1.0)
            return
        time.sleep(0.1)
    raise RuntimeError(
        f"{server.spec.name} did not answer within {server.spec.start_timeout:.0f}s:\n"
        f"{server.log_tail()}"
    )


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL it after STOP_TIMEOUT. Only our own children."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_TIMEOUT)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers in the group, if any
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(STOP_TIMEOUT)


def stop(server: Server, keep: bool = False) -> None:
    kill_group(server.proc)
    if server.redis is not None:
        kill_group(server.redis)
    if not keep:
        shutil.rmtree(server.workdir, ignore_errors=True)


def version_of(spec: TargetSpec) -> str:
    if spec.kind == "ref":
        pkg = BENCH_DIR / "node_modules" / "@durable-streams" / "server" / "package.json"
        with contextlib.suppress(OSError, ValueError):
            import json

            return f"@durable-streams/server {json.loads(pkg.read_text())['version']}"
        return "@durable-streams/server"
    if spec.custom_command:
        return "outlast, run by --outlast-cmd"  # which code that runs, only the command says
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        def git(*args: str) -> str:
            return subprocess.run(
                ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=5
            ).stdout.strip()

        rev = git("rev-parse", "--short", "HEAD")
        # With the default command the editable install runs the work tree, edits included.
        if rev and git("status", "--porcelain", "--", "src"):
            rev += " + uncommitted changes"
        return f"outlast {version('outlast')}" + (f" (commit {rev})" if rev else "")
    return "outlast"


# ------------------------------------------------------------------------------ /proc accounting

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as fh:
        text = fh.read()
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    try:
        fields = _stat_fields(pid)
    except (OSError, ValueError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def proc_rss_bytes(pid: int) -> int:
    try:
        return int(_stat_fields(pid)[21]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def process_tree(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parents.setdefault(int(_stat_fields(int(entry))[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, []))
    return tree

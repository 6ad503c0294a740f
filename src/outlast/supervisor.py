"""``outlast serve --workers N``: N processes on one port, under a supervising parent.

The parent serves nothing itself. It reserves the port, starts N children (``python -m
outlast.supervisor``, given the settings on their stdin), and watches them:

- **The port.** Each child binds its own listening socket on the port with ``SO_REUSEPORT``,
  and the kernel spreads new connections over them evenly. The parent keeps a socket bound to
  the port (never listening, so it takes no connections) from start to exit: port 0 becomes one
  port for every child, and the port stays outlast's while a child restarts.
  (docs/operations.md, "Several processes: --workers", says why not one inherited socket.)
- **Each child** is a whole node: its own event loop, store connection, job workers and
  webhook deliverer. On SQLite the children tell each other their commits
  (:class:`~outlast.store.notify.Siblings`, Unix datagram sockets in a directory the parent
  makes); Redis carries them itself.
- **Signals.** SIGTERM or SIGINT is passed on to every child, which runs the shutdown phases
  (:mod:`outlast.server`); the parent exits 0 once every child has exited 0, else 1. A second
  signal is passed on too: the children stop at once.
- **Restarts.** A child that exits while no signal was received is started again after a
  back-off (:data:`RESTART_BASE` doubling to :data:`RESTART_CAP`; a child that ran
  :data:`RESTART_STABLE` seconds starts the count over). Its running jobs are recovered, by any
  child, when their leases expire. After a signal, nothing is restarted.
- **The parent's own death** (kill -9): each child gets SIGTERM from the kernel and shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from outlast.config import Settings
from outlast.server import check_binding
from outlast.tasks import load_app

log = logging.getLogger("outlast.supervisor")

RESTART_BASE = 0.5
RESTART_CAP = 30.0
RESTART_STABLE = 60.0
LISTEN_BACKLOG = 2048
PR_SET_PDEATHSIG = 1
# The processes' wake-up sockets live in <temp dir>/outlast-peers-<parent pid>-<random>/.
PEERS_PREFIX = "outlast-peers-"


def process_count(settings: Settings) -> int:
    """``[server] workers``: 0 means one per core."""
    return settings.server.workers or os.cpu_count() or 1


def bind_shared(host: str, port: int, *, listen: bool) -> socket.socket:
    """A TCP socket on *host*:*port* that other sockets of this user may bind too."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if listen:
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class _Child:
    index: int
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    failures: int = 0  # unexpected exits in a row
    codes: list[int] = field(default_factory=list)


class Supervisor:
    def __init__(self, settings: Settings, log_level: str) -> None:
        self.settings = settings
        self.log_level = log_level
        self.count = process_count(settings)
        self.children = [_Child(i) for i in range(self.count)]
        self.signals = 0
        self.stopping = asyncio.Event()
        self.peers_dir = ""
        self.port = 0

    async def run(self) -> int:
        check_binding(self.settings)
        if self.settings.server.app:
            # A module that cannot be imported would fail every child, again and again: say so
            # once, as a single process would (exit 2).
            load_app(self.settings.server.app)
        server = self.settings.server
        reserved = bind_shared(server.host, server.port, listen=False)
        self.port = reserved.getsockname()[1]
        sweep_stale_peer_dirs(tempfile.gettempdir())
        self.peers_dir = tempfile.mkdtemp(prefix=f"{PEERS_PREFIX}{os.getpid()}-")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            log.info("serving http://%s:%d with %d processes", server.host, self.port, self.count)
            watchers = [asyncio.create_task(self._keep(child)) for child in self.children]
            await asyncio.gather(*watchers)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            reserved.close()
            shutil.rmtree(self.peers_dir, ignore_errors=True)
        clean = all(child.codes and child.codes[-1] == 0 for child in self.children)
        log.info("stopped" if clean else "stopped; a process did not exit cleanly")
        return 0 if clean else 1

    def _on_signal(self, signum: int) -> None:
        self.signals += 1
        name = signal.Signals(signum).name
        if self.signals == 1:
            log.info("signal %s: shutting down %d processes", name, self.count)
        else:
            log.warning("second signal (%s): the processes stop at once", name)
        self.stopping.set()
        for child in self.children:
            if child.proc is not None and child.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signum)

    async def _keep(self, child: _Child) -> None:
        """Run one child; start it again after an unexpected exit, until a signal."""
        while not self.stopping.is_set():
            await self._start(child)
            assert child.proc is not None
            if self.stopping.is_set():
                # The signal came while it was starting: it did not get it.
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
            code = await child.proc.wait()
            child.codes.append(code)
            if self.stopping.is_set():
                log.info("process %d (pid %d) exited with %d", child.index, child.proc.pid, code)
                return
            ran = time.monotonic() - child.started_at
            child.failures = 1 if ran >= RESTART_STABLE else child.failures + 1
            delay = min(RESTART_CAP, RESTART_BASE * 2 ** (child.failures - 1))
            log.warning(
                "process %d (pid %d) exited unexpectedly with %d; starting it again in %.1f s",
                child.index,
                child.proc.pid,
                code,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.stopping.wait()

    async def _start(self, child: _Child) -> None:
        spec = {
            "settings": self.settings.model_dump(mode="json"),
            "port": self.port,
            "index": child.index,
            "count": self.count,
            "peers_dir": self.peers_dir,
            "log_level": self.log_level,
            "parent": os.getpid(),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "outlast.supervisor",
            stdin=asyncio.subprocess.PIPE,
            # Not in the terminal's process group: a Ctrl-C reaches them once, from here.
            start_new_session=True,
        )
        assert proc.stdin is not None
        # The settings hold secrets: a pipe, not the command line or the environment.
        proc.stdin.write(json.dumps(spec).encode())
        proc.stdin.close()
        child.proc = proc
        child.started_at = time.monotonic()
        log.info("process %d started (pid %d)", child.index, proc.pid)


async def supervise(settings: Settings, log_level: str) -> None:
    code = await Supervisor(settings, log_level).run()
    if code:
        sys.exit(code)


def sweep_stale_peer_dirs(root: str) -> list[str]:
    """Remove the wake-up directories of parents that are gone without removing theirs (a
    parent killed with SIGKILL cannot); returns what was removed."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            pid, dash, _ = entry.name.removeprefix(PEERS_PREFIX).partition("-")
            if not entry.name.startswith(PEERS_PREFIX) or not dash or not pid.isdigit():
                continue
            if entry.is_dir(follow_symlinks=False) and not _alive(int(pid)):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def _die_with_parent(parent: int) -> None:
    """SIGTERM when the parent dies (Linux), so a killed supervisor leaves no children."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above
        sys.exit(1)


def child_main() -> None:
    """One child: read what the parent sent, bind the port, run :func:`outlast.server.serve`."""
    from outlast.logs import configure_logging, use_log_format
    from outlast.server import run, serve
    from outlast.store.notify import Siblings

    spec: dict[str, Any] = json.loads(sys.stdin.buffer.read())
    _die_with_parent(int(spec["parent"]))
    settings = Settings.model_validate(spec["settings"])
    configure_logging(spec["log_level"])
    use_log_format(settings.logs.format)
    sys.path.insert(0, os.getcwd())  # --app names the user's module, as in the parent
    listener = bind_shared(settings.server.host, int(spec["port"]), listen=True)
    siblings = Siblings(spec["peers_dir"], int(spec["index"]), int(spec["count"]))
    run(serve(settings, listener=listener, siblings=siblings))


if __name__ == "__main__":
    child_main()

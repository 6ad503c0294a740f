"""The two scenarios, as run against one target in one :class:`~bench.jobs.targets.Slot`.

Both start the target's workers (10 jobs at once), enqueue ``jobs`` jobs that each take
``seconds`` and wait until 10 of them are running (their start marks, see ``marks.py``); then:

- ``sigterm``  SIGTERM to each worker process (the process started, not its group: the signal
               an operator's ``kill`` or ``docker stop`` sends); seconds until every process of
               the target has exited (capped at ``exit_cap``, then SIGKILL), and the exit codes;
- ``sigkill``  SIGKILL to each worker's whole process group: a crash.

Then the workers are started again, as they were, and every accepted job has ``cap`` seconds
to finish. **Lost** = accepted and not finished by then; **ran twice** = its body started more
than once. Where a lost job is, the broker is asked (``Client.remaining``): still held (queued,
or waiting to be redelivered later) or gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.jobs import targets
from bench.jobs.targets import CONCURRENCY, Slot, TargetSpec
from bench.jobs.workloads import run_for_slot
from bench.shutdown.marks import Marks, Snapshot
from bench.streams.targets import process_tree

HELPER = Path(__file__).resolve().parent / "enqueue.py"
SIGNALS = {"sigterm": signal.SIGTERM, "sigkill": signal.SIGKILL}
START_LIMIT = 60.0  # seconds for the first jobs to start (a worker starting up)
Show = Callable[[str], None]


@dataclass(frozen=True)
class Config:
    jobs: int = 30  # jobs enqueued
    seconds: float = 2.0  # what each job takes
    running: int = CONCURRENCY  # jobs running when the signal is sent
    exit_cap: float = 60.0  # seconds the workers get to exit (outlast's default grace is 30 s)
    cap: float = 60.0  # seconds after the restart for every job to finish
    interval: float = 0.02  # seconds between two looks at the marks or the processes


def helper(slot: Slot, op: str, spec: dict[str, Any], log: Path) -> dict[str, Any]:
    full = {"producers": 1, "limit": 60, **spec}
    return run_for_slot(HELPER, slot, op, full, 90, lambda s: None, log)


def wait_for(
    what: str, check: Callable[[], bool], limit: float, interval: float, slot: Slot | None
) -> float:
    """Poll *check* until it holds; the seconds it took. *slot*: its workers must stay up."""
    began = time.monotonic()
    while not check():
        if slot is not None:
            slot.check_alive()
        if time.monotonic() - began > limit:
            raise RuntimeError(f"{what}: not within {limit:.0f} s")
        time.sleep(interval)
    return time.monotonic() - began


def _live_in_groups(pgids: set[int]) -> list[int]:
    """Processes (not zombies) left in these process groups: forks the worker did not reap."""
    live = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            if int(fields[2]) in pgids and fields[0] != "Z":
                live.append(int(entry))
    return live


def wait_exit(slot: Slot, sent: float, cfg: Config) -> dict[str, Any]:
    """Seconds from *sent* until each worker process exited, and until nothing of their process
    groups is left; SIGKILL of the groups at ``exit_cap``."""
    procs = list(slot.procs)
    pgids = {p.pid for p in procs}
    exits: dict[int, float] = {}
    killed = False
    while True:
        now = time.monotonic()
        for proc in procs:
            if proc.pid not in exits and proc.poll() is not None:
                exits[proc.pid] = now - sent
        if len(exits) == len(procs) and not _live_in_groups(pgids):
            break
        if now - sent > cfg.exit_cap and not killed:
            killed = True
            for pgid in pgids:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
        time.sleep(cfg.interval / 2)
    return {
        "exit_seconds": time.monotonic() - sent,  # every process of every group gone
        "main_exit_seconds": max(exits.values()),
        "exit_codes": [p.returncode for p in procs],
        "killed_at_cap": killed,
    }


def run_scenario(key: str, slot: Slot, cfg: Config, show: Show, log: Path) -> dict[str, Any]:
    """One measurement; a failure is recorded in the result (with the workers' log), not raised."""
    marks = Marks(slot.marks_url, slot.marks_key)
    try:
        return _run(key, slot, cfg, show, log, marks)
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        if tail := slot.log_tail():
            result["worker_log"] = tail
        return result
    finally:
        marks.close()


def _run(key: str, slot: Slot, cfg: Config, show: Show, log: Path, marks: Marks) -> dict[str, Any]:
    marks.clear()
    show("starting the workers")
    slot.start(with_workers=True)
    pids = [pid for p in slot.procs for pid in process_tree(p.pid)]
    show(f"enqueueing {cfg.jobs} jobs")
    enq = helper(slot, "slow", {"jobs": cfg.jobs, "seconds": cfg.seconds}, log)
    accepted: list[int] = enq["accepted"]
    slot.enqueued += len(accepted)
    if len(accepted) < cfg.running:
        raise RuntimeError(f"only {len(accepted)} jobs accepted: {enq['error_samples']}")

    show(f"waiting for {cfg.running} running jobs")
    box: dict[str, Snapshot] = {}

    def enough_running() -> bool:
        box["snap"] = marks.read()
        return len(box["snap"].running()) >= cfg.running

    wait_for("jobs running", enough_running, START_LIMIT, cfg.interval, slot)
    sig = SIGNALS[key]
    sent = time.monotonic()
    for proc in slot.procs:
        with contextlib.suppress(ProcessLookupError):
            if sig == signal.SIGKILL:
                os.killpg(proc.pid, sig)  # the whole group: a crash
            else:
                os.kill(proc.pid, sig)
    at_signal = marks.read()
    show(f"{sig.name} sent, waiting for the workers to exit")
    exited = wait_exit(slot, sent, cfg)
    at_exit = marks.read()
    slot.stop()  # nothing left to stop: forgets the processes

    show("restarted, draining")
    restarted = time.monotonic()
    slot.start(with_workers=True, wait=False)
    final = marks.read()
    drain_seconds: float | None = None
    while time.monotonic() - restarted < cfg.cap:
        slot.check_alive()
        final = marks.read()
        done = final.done(accepted)
        show(f"restarted, {done}/{len(accepted)} jobs finished")
        if done == len(accepted):
            drain_seconds = time.monotonic() - restarted
            break
        time.sleep(cfg.interval)
    lost = [seq for seq in accepted if final.finished.get(seq, 0) == 0]
    held: int | None = None
    if lost:
        held = helper(slot, "remaining", {"expected": slot.enqueued}, log)["remaining"]
    running = at_signal.running()
    return {
        "signal": sig.name,
        "accepted": len(accepted),
        "enqueue_errors": enq["errors"],
        "enqueue_error_samples": enq["error_samples"],
        "worker_pids": pids,
        "running_at_signal": len(running),
        **exited,
        "finished_before_exit": sum(1 for s in running if at_exit.finished.get(s, 0) > 0),
        "started_after_signal": len(set(at_exit.started) - set(at_signal.started)),
        "drain_seconds": drain_seconds,
        "cap": cfg.cap,
        "lost": len(lost),
        "lost_seqs": lost,
        "held_by_broker": None if held is None else min(held, len(lost)),
        "ran_twice": len(final.twice()),
        "ran_twice_seqs": final.twice(),
        "finished_twice": sum(1 for n in final.finished.values() if n > 1),
        "ok": not lost and not final.twice() and not exited["killed_at_cap"],
    }


def _retarget(workers: Callable[[Slot], list[list[str]]]) -> Callable[[Slot], list[list[str]]]:
    """The same worker command lines, pointed at this benchmark's tasks modules."""

    def argv(slot: Slot) -> list[list[str]]:
        old, new = "bench.jobs.", "bench.shutdown."
        return [
            [new + a.removeprefix(old) if a.startswith(old) else a for a in cmd]
            for cmd in workers(slot)
        ]

    return argv


def specs() -> dict[str, TargetSpec]:
    """The jobs benchmark's targets, each running ``bench.shutdown.<target>_tasks``."""
    return {n: replace(s, workers=_retarget(s.workers)) for n, s in targets.specs().items()}

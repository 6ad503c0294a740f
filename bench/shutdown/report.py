"""Medians and the Shutdown section of docs/benchmarks.md.

A run's results are ``{"sigterm": {target: r}, "sigkill": {target: r}}`` (``scenario.py``).
Seconds are medians over runs; counts (jobs lost, ran twice, ...) are shown run by run when the
runs differ. Only the text between ``<!-- bench:shutdown -->`` and ``<!-- /bench:shutdown -->``
is rewritten, by the streams benchmark's section writer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.common import median, table

SECTION = "shutdown"
SCENARIO_NAMES = {"sigterm": "SIGTERM", "sigkill": "SIGKILL"}

# What each target does on SIGTERM and after a kill, with the settings it runs with here (its
# defaults unless said; read from each one's documentation and source, for the versions above).
BEHAVIOUR: dict[str, tuple[str, str]] = {
    "outlast": (
        "Stops claiming; running jobs get `--grace` (default 30 s, not changed here) to finish; "
        "any still running at the deadline are stopped and handed back to their queue without "
        "spending an attempt; exits 0.",
        "The jobs' leases (`[jobs] lease`, default 30 s, not changed here) expire; recovery (at "
        "start, then every lease/3, at most 10 s) returns them to their queue. The interrupted "
        "attempt counts (default `retries=3`), so they run again: at least once.",
    ),
    "celery": (
        "Warm shutdown: stops consuming, waits for running tasks (no time limit by default); "
        "prefetched messages go back to the queue.",
        "`task_acks_late=True` (set here; Celery's default is `False`: a message is acknowledged "
        "when its task starts, and a killed worker's running tasks are gone for good). Every "
        "message the worker had taken, running or prefetched (prefetch multiplier 4 × "
        "concurrency), stays in kombu's `unacked` hash until the Redis transport's "
        "`visibility_timeout` (3,600 s) has passed, then is delivered again.",
    ),
    "dramatiq": (
        "The main process passes the signal on; each worker thread stops after its current "
        "message (`--worker-shutdown-timeout`, 600 s); prefetched messages go back to the queue.",
        "The worker's messages, running and prefetched (2 × threads), stay in its set of unacked "
        "messages; a live worker's maintenance (a random 1 in 1,000 broker commands) puts them "
        "back once the dead worker's heartbeat is older than `heartbeat_timeout` (60 s).",
    ),
    "rq": (
        "Warm shutdown: each SimpleWorker finishes its current job, then exits (a second signal "
        "kills the job).",
        "The job stays in the `StartedJobRegistry`; once its heartbeat lapses (90 s here), a "
        "worker's registry clean-up (at its start, then every 10 min) moves it to the "
        "`FailedJobRegistry` (`AbandonedJobError`): not run again unless enqueued with `Retry`.",
    ),
    "arq": (
        "Cancels the running jobs at once (`job_completion_wait=0`); with `retry_jobs=True` "
        "they stay queued and run again, from the start.",
        "A job stays queued with an in-progress key that expires after `job_timeout` + 10 s "
        "(310 s); then it runs again (`max_tries=5`).",
    ),
}


def _behaviour(name: str) -> tuple[str, str]:
    key = "outlast" if name.startswith("outlast") else name.removesuffix("-fast")
    return BEHAVIOUR.get(key, ("", ""))


def _ok(runs: list[dict[str, dict[str, Any]]], key: str, name: str) -> list[dict[str, Any]]:
    return [r for run in runs if (r := run.get(key, {}).get(name)) is not None and "error" not in r]


def summarize(runs: list[dict[str, dict[str, Any]]], names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in runs[0] if runs else []:
        out[key] = {}
        for name in names:
            ok = _ok(runs, key, name)
            drained = [r["drain_seconds"] for r in ok if r["drain_seconds"] is not None]
            out[key][name] = {
                "runs": len(ok),
                "errors": sum(1 for run in runs if "error" in run.get(key, {}).get(name, {})),
                "exit_seconds": median([r["exit_seconds"] for r in ok]),
                "exit_codes": sorted({c for r in ok for c in r["exit_codes"]}),
                "killed_at_cap": sum(1 for r in ok if r["killed_at_cap"]),
                "drain_seconds": median(drained),
                "drained_runs": len(drained),
                **{
                    k: [r[k] for r in ok]
                    for k in (
                        "running_at_signal",
                        "started_after_signal",
                        "finished_before_exit",
                        "lost",
                        "held_by_broker",
                        "ran_twice",
                    )
                },
            }
    return out


def _counts(values: list[Any]) -> str:
    """One figure when every run agrees, else the median and each run's."""
    if not values:
        return "—"
    if None in values:
        values = [v for v in values if v is not None]
        if not values:
            return "—"
    if len(set(values)) == 1:
        return f"{values[0]}"
    mid = median([float(v) for v in values])
    return f"{mid:g} ({' · '.join(str(v) for v in values)})"


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _codes(codes: list[int], processes: int) -> str:
    text = ", ".join(f"{c}" if c >= 0 else f"killed ({-c})" for c in codes)
    return text + (f" (×{processes} processes)" if processes > 1 else "")


def _drain(s: dict[str, Any], cap: float) -> str:
    if s["runs"] == 0:
        return "—"
    if s["drained_runs"] == 0:
        return f"not within {cap:.0f}"
    text = _seconds(s["drain_seconds"])
    if s["drained_runs"] < s["runs"]:
        text += f" ({s['runs'] - s['drained_runs']} of {s['runs']} runs: not within {cap:.0f})"
    return text


def _processes(data: dict[str, Any], name: str) -> int:
    for run in data["runs"]:
        for per in run.values():
            r = per.get(name, {})
            if "exit_codes" in r:
                return len(r["exit_codes"])
    return 1


INTROS = {
    "sigterm": "SIGTERM to each worker process started (not its process group: what `kill` or "
    "`docker stop` sends); seconds until every process of the target has exited, children "
    "included (killed after {exit_cap:.0f} s).",
    "sigkill": "SIGKILL to each worker's whole process group (a crash), then the same restart. "
    "*Held by the broker* = of the jobs lost, how many the broker still keeps (queued, or waiting "
    "to be redelivered later than {cap:.0f} s); the rest are gone (failed).",
}
Cell = Callable[[dict[str, Any], str], str]  # (a target's summary, its name) -> table cell


def _columns(key: str, data: dict[str, Any]) -> list[tuple[str, Cell]]:
    cap, sig = data["meta"]["config"]["cap"], SCENARIO_NAMES[key]

    def count(field: str) -> Cell:
        return lambda s, n: _counts(s[field])

    def exit_cell(s: dict[str, Any], n: str) -> str:
        killed = s["killed_at_cap"]
        note = f" (killed at the cap in {killed} runs)" if killed else ""
        return _seconds(s["exit_seconds"]) + note

    def codes(s: dict[str, Any], n: str) -> str:
        return _codes(s["exit_codes"], _processes(data, n)) if s["runs"] else "—"

    graceful = [
        ("seconds to exit ↓", exit_cell),
        ("exit code", codes),
        ("of those, finished before exit", count("finished_before_exit")),
        (f"started after {sig}", count("started_after_signal")),
    ]
    return [
        (f"running at {sig}", count("running_at_signal")),
        *(graceful if key == "sigterm" else []),
        ("jobs lost", count("lost")),
        *([("held by the broker", count("held_by_broker"))] if key == "sigkill" else []),
        ("ran twice", count("ran_twice")),
        ("restart → all done (s)", lambda s, n: _drain(s, cap)),
    ]


def _version(info: dict[str, str]) -> str:
    """The version at the start, and at the end when it changed (outlast's work tree was edited
    during the run: the workers restarted after that ran the edited code)."""
    end = info.get("version_end")
    return info["version"] + (f" at the start, {end} at the end" if end else "")


def render(data: dict[str, Any]) -> str:
    meta, targets, summary = data["meta"], data["targets"], data["summary"]
    cfg, machine = meta["config"], meta["machine"]
    names = list(targets)
    cap = cfg["cap"]
    lines = [
        f"<!-- bench:{SECTION} -->",
        "## Shutdown",
        "",
        f"Command: `{meta['command']}` · {meta['date']} · {cfg['runs']} run(s), medians.",
        "",
        f"Machine: {machine['summary']}; {machine['redis']}. Load "
        f"average {machine['loadavg_start']} at the start, {machine.get('loadavg_end', '?')} "
        "at the end (this machine is shared with other work).",
        "",
        f"Each target runs 10 jobs at once and gets {cfg['jobs']} jobs that each take "
        f"{cfg['seconds']:g} s (a sleep: `time.sleep` in the thread and process workers, "
        "`asyncio.sleep` in outlast and arq); each job counts in Redis when its body starts and "
        "when it finishes. Once 10 are running, the workers get a signal; when they are gone "
        f"they are started again, as before, and every job has {cap:.0f} s to finish. **Jobs "
        f"lost** = accepted and not finished {cap:.0f} s after the restart (SPEC §9: must be 0); "
        "**ran twice** = its body started more than once. Versions: "
        + "; ".join(f"{targets[n]['label']}: {_version(targets[n])}" for n in names)
        + ".",
        "",
    ]
    for key in summary:
        cols = _columns(key, data)
        intro = INTROS[key].format(exit_cap=cfg["exit_cap"], cap=cap)
        lines += [f"### {SCENARIO_NAMES[key]}", "", intro, ""]
        rows = [
            [targets[n]["label"], *(cell(summary[key][n], n) for _, cell in cols)] for n in names
        ]
        lines += table(["Target", *(head for head, _ in cols)], rows, 1)
        lines.append("")
    checks = []
    for n in (n for n in names if n.startswith("outlast")):
        for key, per in summary.items():
            s, total = per[n], len(data["runs"])
            met = s["runs"] == total and not any(s["lost"])
            checks.append(
                f"- {targets[n]['label']}, {SCENARIO_NAMES[key]}: jobs lost "
                f"{_counts(s['lost'])} in {s['runs']} of {total} runs — "
                + ("**met**" if met else "**not met**")
            )
    if checks:
        lines += ["SPEC §9 (jobs lost must be 0):", "", *checks, ""]
    lines += ["### What each target does", ""]
    rows = [[targets[n]["label"], *_behaviour(n)] for n in names]
    lines += table(["Target", "on SIGTERM", "after a kill"], rows, 3)
    lines += ["", "Worker commands:", ""]
    lines += [f"- {targets[n]['label']}: `{targets[n]['command']}`" for n in names]
    errors = [
        f"run {i} · {name} · {key}: {r['error'].splitlines()[0]}"
        for i, run in enumerate(data["runs"], 1)
        for key, per in run.items()
        for name, r in per.items()
        if "error" in r
    ]
    if errors:
        lines += ["", "Failed measurements:", ""] + [f"- {e}" for e in errors]
    lines += ["", f"<!-- /bench:{SECTION} -->"]
    return "\n".join(lines) + "\n"

"""Medians, ratios against the peers, the targets, and the markdown section.

Each figure is the median over runs of one target's value. Each ratio compares an outlast target
with one peer *within* a run (then the median over runs), so a machine that is slower in one run
than in another moves both sides alike; "best peer" is, in each run, the peer with the best
value of that metric. docs/benchmarks.md is kept structured by section: this module rewrites
only the text between ``<!-- bench:jobs -->`` and ``<!-- /bench:jobs -->``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from bench.common import cell, median, ratio, table
from bench.streams.report import Metric, _value

SECTION = "jobs"
BUSY_NOTE = 0.3  # cores used by other processes during a measurement that earn it a note

METRICS = [
    Metric(
        "enqueue",
        "Enqueue no-op jobs, {producers} producers",
        "jobs/s ↑",
        lambda r: r["enqueue_per_s"],
        True,
        ",.0f",
    ),
    Metric(
        "enqueue_batch",
        "Enqueue no-op jobs in batches of {batch}, {producers} producers",
        "jobs/s ↑",
        lambda r: r["enqueue_per_s"],
        True,
        ",.0f",
    ),
    Metric(
        "noop",
        "Drain {jobs:,} no-op jobs",
        "jobs/s ↑",
        lambda r: r["jobs_per_s"],
        True,
        ",.0f",
    ),
    Metric(
        "sleep10",
        "Drain {jobs:,} 10 ms jobs, concurrency 10",
        "jobs/s ↑",
        lambda r: r["jobs_per_s"],
        True,
        ",.0f",
    ),
    Metric("sleep10", "", "% of 1,000/s ↑", lambda r: r["ceiling_share"] * 100, True, ".1f"),
    Metric(
        "latency",
        "Enqueue→start, {rate:g} jobs/s open loop",
        "p50 ms ↓",
        lambda r: r["latency_ms"]["p50"],
        False,
        ".2f",
    ),
    Metric("latency", "", "p99 ms ↓", lambda r: r["latency_ms"]["p99"], False, ".2f"),
    Metric(
        "noop_keys",
        "Drain {jobs:,} no-op jobs, 100 concurrency keys, mixed priorities",
        "jobs/s ↑",
        lambda r: r["jobs_per_s"],
        True,
        ",.0f",
    ),
]

WORKLOAD_NAMES = {
    "enqueue": "enqueue",
    "enqueue_batch": "enqueue, batches",
    "noop": "no-op drain",
    "sleep10": "10 ms jobs",
    "latency": "enqueue→start",
    "noop_keys": "no-op drain, keys",
}

SHARE = 4  # METRICS index of the share of the ceiling
Check = Callable[[float | None, float | None], bool | None]  # (median, × best peer) -> met?

# The targets (docs/benchmarks.md#targets), by index in METRICS: what each says, and whether
# a median meets it.
TARGETS: dict[int, tuple[str, Check]] = {
    0: ("≥ the best peer", lambda value, best: None if best is None else best >= 1),
    1: ("≥ the best peer", lambda value, best: None if best is None else best >= 1),
    2: ("≥ 2× the best peer", lambda value, best: None if best is None else best >= 2),
    4: ("≥ 95 % of the ceiling", lambda value, best: None if value is None else value >= 95),
    6: ("≤ 5 ms", lambda value, best: None if value is None else value <= 5),
}


def _met(check: Check, value: float | None, ratio_best: float | None) -> str:
    ok = check(value, ratio_best)
    return "—" if ok is None else "met" if ok else "**not met**"


def summarize(
    runs: list[dict[str, dict[str, Any]]], names: list[str], outlasts: list[str]
) -> list[dict[str, Any]]:
    """One row per metric: values and medians per target; for each outlast target the median
    within-run ratio against each peer and against the best peer of each run."""
    peers = [n for n in names if n not in outlasts]
    rows = []
    for metric in METRICS:

        def value(run: dict[str, dict[str, Any]], target: str, m: Metric = metric) -> float | None:
            return _value(run.get(m.workload, {}).get(target), m)

        row: dict[str, Any] = {"workload": metric.workload, "metric": metric.name}
        row["values"] = {t: [v for run in runs if (v := value(run, t)) is not None] for t in names}
        row["median"] = {t: median(vs) for t, vs in row["values"].items()}
        row["ratio"], row["ratio_best"], row["best_peer"] = {}, {}, {}
        for mine in outlasts:
            per_peer: dict[str, float | None] = {}
            for peer in peers:
                ratios = [
                    a / b
                    for run in runs
                    if (a := value(run, mine)) is not None and (b := value(run, peer))
                ]
                per_peer[peer] = median(ratios)
            row["ratio"][mine] = per_peer
            best_ratios, best_names = [], []
            for run in runs:
                a = value(run, mine)
                candidates = [(v, p) for p in peers if (v := value(run, p))]
                if a is None or not candidates:
                    continue
                best, who = (max if metric.higher_is_better else min)(candidates)
                best_ratios.append(a / best)
                best_names.append(who)
            row["ratio_best"][mine] = median(best_ratios)
            row["best_peer"][mine] = (
                Counter(best_names).most_common(1)[0][0] if best_names else None
            )
        rows.append(row)
    return rows


def cpu_summary(runs: list[dict[str, dict[str, Any]]], names: list[str]) -> dict[str, Any]:
    """workload -> target -> [target, load generator, other processes] median CPU (cores)."""
    table: dict[str, Any] = {}
    for workload in WORKLOAD_NAMES:
        table[workload] = {}
        for target in names:
            ok = [
                r for run in runs if (r := run.get(workload, {}).get(target)) and "error" not in r
            ]
            table[workload][target] = [
                median([r[k] for r in ok if k in r])
                for k in ("server_cpu", "client_cpu", "other_cpu")
            ]
    return table


def _notes(workload: str, r: dict[str, Any]) -> list[str]:
    if "error" in r:
        return [f"failed: {r['error'].splitlines()[0][:300]}"]
    notes = []
    if workload in ("enqueue", "enqueue_batch") and r.get("errors"):
        notes.append(f"{r['errors']} enqueues failed ({'; '.join(r['error_samples'][:2])})")
    if workload in ("noop", "sleep10", "noop_keys") and r.get("partial"):
        notes.append(
            f"drain stopped after {r['seconds']:.0f} s with {r['left_at_end']:,} jobs left "
            "(jobs/s is over that time)"
        )
    if workload == "latency":
        if r.get("missing"):
            notes.append(f"{r['missing']} of {r['sent']} jobs had not started by the end")
        if r.get("enqueue_errors"):
            notes.append(f"{r['enqueue_errors']} enqueues failed")
        if r.get("producer_late"):
            notes.append(f"the producer fell a whole interval behind {r['producer_late']} times")
    return notes


def problems(runs: list[dict[str, dict[str, Any]]]) -> list[str]:
    """Failed or suspicious measurements, one line per target and note; and how many
    measurements shared the machine with busy other processes."""
    grouped: dict[tuple[str, str], list[str]] = {}
    busy, total = 0, 0
    for i, run in enumerate(runs, 1):
        for workload, per_target in run.items():
            for target, r in per_target.items():
                total += 1
                busy += r.get("other_cpu", 0) > BUSY_NOTE
                for note in _notes(workload, r):
                    where = f"run {i} {WORKLOAD_NAMES.get(workload, workload)}"
                    grouped.setdefault((target, note), []).append(where)
    lines = [f"`{t}` ({', '.join(places)}): {note}" for (t, note), places in grouped.items()]
    if busy:
        lines.append(
            f"{busy} of {total} measurements ran while other processes used more than "
            f"{BUSY_NOTE * 100:.0f} % of a core (per measurement: `other_cpu` in the raw results)"
        )
    return lines


# ---------------------------------------------------------------------------------- markdown


def render(data: dict[str, Any]) -> str:
    meta, targets = data["meta"], data["targets"]
    names, outlasts = list(targets), data["outlast"]
    peers = [n for n in names if n not in outlasts]
    cfg, machine, noise = meta["config"], meta["machine"], data["noise"]
    # Recomputed from the runs: results written before a metric was added render too.
    summary = summarize(data["runs"], names, outlasts)
    lines = [f"<!-- bench:{SECTION} -->", "## Jobs", ""]
    if noise.get("warning"):
        lines += [f"> **Noisy machine:** {noise['warning']}", ""]
    lines += [
        "outlast's jobs (`POST /v1/jobs`, workers in the same process) against Dramatiq, Celery, "
        "RQ and arq, each on the same local Redis, measured in the same run. outlast is "
        "enqueued over HTTP, each peer with its own client library; in batches, outlast with "
        "`POST /v1/jobs/batch`, RQ with `enqueue_many`, Celery and Dramatiq with a `group`, arq "
        "(no batch form) one job after another. Ratios are outlast ÷ peer "
        "within each run, then the median over runs; ↑ higher is better, ↓ lower is better. How "
        "each figure is measured: [`bench/README.md`](../bench/README.md#jobs).",
        "",
        f"- **Command:** `{meta['command']}`, started {meta['date']}.",
        f"- **Machine:** {machine['cores']} cores ({machine['cpu'] or 'unknown CPU'}), "
        f"{machine['memory_gib']:g} GiB, Linux {machine['kernel']}; Python {machine['python']}; "
        f"Redis {machine.get('redis_version', '?')}. Workers, Redis and load generator share "
        f"these {machine['cores']} cores.",
        f"- **Load average:** {machine['loadavg_start']} at start, {noise['loadavg_end']} at the "
        f"end; other processes used {noise['other_cpu_median'] * 100:.0f} % of a core (median "
        f"over measurements, max {noise['other_cpu_max'] * 100:.0f} %; 200 % is both cores).",
        f"- **Runs:** {cfg['runs']}; enqueue and open loop {cfg['duration']:g} s each; drains "
        f"of {cfg['jobs']:,} jobs (measured for at most {cfg['cap']:g} s).",
        "- **Targets:** "
        + "; ".join(f"`{n}` = {targets[n]['label']} ({targets[n]['version']})" for n in names)
        + ".",
        "- **Durability differs:** the peers' Redis has no RDB and no AOF (a Redis restart loses "
        "their queues); outlast (SQLite) commits every job before its `202` (it survives "
        "`kill -9`, not a power cut: `store.fsync = false`)"
        + ("; outlast (Redis) uses the same Redis, without persistence" if outlasts[1:] else "")
        + ".",
        f"- **Raw results:** `{meta['json']}`",
        "",
    ]
    fmt_args = {
        "producers": cfg["producers"],
        "jobs": cfg["jobs"],
        "rate": cfg["rate"],
        "batch": cfg.get("batch", 100),
    }
    rows = []
    for metric, row in zip(METRICS, summary, strict=True):
        cells = [metric.row.format(**fmt_args), metric.name]
        cells += [cell(row["median"].get(n), metric.fmt) for n in names]
        rows.append(cells)
    lines += table(["Workload", "Metric", *(targets[n]["label"] for n in names)], rows, 2)

    if outlasts and peers:
        lines += ["", "outlast against each peer (outlast ÷ peer; for ms, below 1 is better):", ""]
        rows = []
        for mine in outlasts:
            for i, (metric, row) in enumerate(zip(METRICS, summary, strict=True)):
                if i == SHARE - 1:
                    continue  # the same ratio as the share of the ceiling, the next row
                title = metric.row.format(**fmt_args) or METRICS[i - 1].row.format(**fmt_args)
                best = row["best_peer"].get(mine)
                target, check = TARGETS.get(i, ("", None))
                rows.append(
                    [
                        f"`{mine}`",
                        f"{title} · {metric.name}",
                        *(ratio(row["ratio"][mine].get(p)) for p in peers),
                        ratio(row["ratio_best"].get(mine)) + (f" ({best})" if best else ""),
                        target,
                        _met(check, row["median"].get(mine), row["ratio_best"].get(mine))
                        if check
                        else "",
                    ]
                )
        header = ["Target", "Figure", *(f"× {p}" for p in peers), "× best peer", "Target", "Met?"]
        lines += table(header, rows, 2)
        lines += ["", *_by_run(data, summary, outlasts, fmt_args)]

    lines += [
        "",
        "CPU during the timed part (median, % of one core): target (its workers and server "
        "processes, plus the Redis server) / load generator / every other process on the machine.",
        "",
    ]
    rows = []
    for workload, per in data["cpu"].items():
        cells = []
        for n in names:
            server, client, other = per.get(n, [None, None, None])
            cells.append(
                "—"
                if server is None
                else f"{server * 100:.0f} / {(client or 0) * 100:.0f} / {(other or 0) * 100:.0f}"
            )
        if any(c != "—" for c in cells):
            rows.append([WORKLOAD_NAMES[workload], *cells])
    lines += table(["Workload", *(targets[n]["label"] for n in names)], rows, 1)
    if data["problems"]:
        lines += ["", "Problems seen during the runs:", ""]
        lines += [f"- {p}" for p in data["problems"]]
    lines += ["", f"<!-- /bench:{SECTION} -->"]
    return "\n".join(lines) + "\n"


def _by_run(
    data: dict[str, Any],
    summary: list[dict[str, Any]],
    outlasts: list[str],
    fmt_args: dict[str, Any],
) -> list[str]:
    """The figures with a target run by run, each with what other processes used meanwhile:
    on a shared machine the spread says more than the median."""
    lines = ["The figures with a target, run by run (other processes' CPU in brackets):", ""]
    for i in TARGETS:
        metric, row = METRICS[i], summary[i]
        title = metric.row.format(**fmt_args) or METRICS[i - 1].row.format(**fmt_args)
        best = [b for o in outlasts if (b := row["best_peer"].get(o))]
        for name in dict.fromkeys([*outlasts, *best]):
            cells = []
            for run in data["runs"]:
                r = run.get(metric.workload, {}).get(name)
                v = _value(r, metric)
                if v is not None and r is not None:
                    cells.append(f"{format(v, metric.fmt)} ({r.get('other_cpu', 0) * 100:.0f} %)")
                else:
                    cells.append("—")
            lines.append(f"- {title}, {metric.name} — `{name}`: {', '.join(cells)}")
    return lines

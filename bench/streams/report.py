"""Medians, ratios and the markdown section written into docs/benchmarks.md.

Each figure is the median over runs of one target's value; each ratio is the median over runs of
(target ÷ baseline) computed within the same run, so slow drift of a shared machine cancels out.
docs/benchmarks.md is kept structured by section: this module rewrites only the text between
``<!-- bench:streams -->`` and ``<!-- /bench:streams -->``, and other benchmarks own theirs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.common import cell, median, ratio

SECTION = "streams"
BUSY_NOTE = 0.3  # cores used by other processes during a measurement that earn it a note


@dataclass(frozen=True)
class Metric:
    workload: str  # key in a run's results
    row: str  # what the table calls the workload
    name: str  # the metric, with ↑ or ↓
    get: Callable[[dict[str, Any]], float]
    higher_is_better: bool
    fmt: str  # format spec for the value


def _lat(key: str) -> Callable[[dict[str, Any]], float]:
    return lambda r: float(r["latency_ms"][key])


METRICS = [
    Metric(
        "append-own",
        "Append 1 KiB JSON, 16 writers, a stream each",
        "appends/s ↑",
        lambda r: r["appends_per_s"],
        True,
        ",.0f",
    ),
    Metric("append-own", "", "p99 ms ↓", _lat("p99"), False, ".2f"),
    Metric(
        "append-shared",
        "Append 1 KiB JSON, 16 writers, one stream",
        "appends/s ↑",
        lambda r: r["appends_per_s"],
        True,
        ",.0f",
    ),
    Metric("append-shared", "", "p99 ms ↓", _lat("p99"), False, ".2f"),
    Metric("catchup", "Catch-up read from -1", "MB/s ↑", lambda r: r["mb_per_s"], True, ",.1f"),
    Metric(
        "sse",
        "SSE fan-out 1 → {readers} readers, {rate:g} appends/s",
        "delivered events/s ↑",
        lambda r: r["events_per_s"],
        True,
        ",.0f",
    ),
    Metric("sse", "", "p50 ms ↓", _lat("p50"), False, ".2f"),
    Metric("sse", "", "p99 ms ↓", _lat("p99"), False, ".2f"),
    Metric(
        "sse-max",
        "SSE fan-out 1 → {readers} readers, writer unthrottled",
        "delivered events/s ↑",
        lambda r: r["events_per_s"],
        True,
        ",.0f",
    ),
    Metric("sse-max", "", "appends/s", lambda r: r["appends_per_s"], True, ",.0f"),
    Metric("sse-max", "", "p99 ms ↓", _lat("p99"), False, ".1f"),
]

WORKLOAD_NAMES = {
    "append-own": "append, a stream per writer",
    "append-shared": "append, one shared stream",
    "catchup": "catch-up read",
    "sse": "SSE fan-out, steady writer",
    "sse-max": "SSE fan-out, unthrottled writer",
}


def _value(result: dict[str, Any] | None, metric: Metric) -> float | None:
    if not result or "error" in result:
        return None
    try:
        value = metric.get(result)
    except (KeyError, TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def summarize(
    runs: list[dict[str, dict[str, Any]]], targets: list[str], baseline: str | None
) -> list[dict[str, Any]]:
    """One row per metric: medians per target and median within-run ratios to the baseline."""
    rows = []
    for metric in METRICS:
        row: dict[str, Any] = {
            "workload": metric.workload,
            "metric": metric.name,
            "median": {},
            "ratio": {},
            "values": {},
        }
        for target in targets:
            values = [
                v
                for run in runs
                if (v := _value(run.get(metric.workload, {}).get(target), metric)) is not None
            ]
            row["values"][target] = values
            row["median"][target] = median(values)
            if baseline and target != baseline and baseline in targets:
                ratios = []
                for run in runs:
                    mine = _value(run.get(metric.workload, {}).get(target), metric)
                    peer = _value(run.get(metric.workload, {}).get(baseline), metric)
                    if mine is not None and peer:
                        ratios.append(mine / peer)
                row["ratio"][target] = median(ratios)
        rows.append(row)
    return rows


CpuCell = tuple[float | None, float | None, float | None]


def cpu_summary(
    runs: list[dict[str, dict[str, Any]]], targets: list[str]
) -> dict[str, dict[str, CpuCell]]:
    """workload -> target -> median CPU of (server, load generator, other processes), as
    fractions of one core."""
    table: dict[str, dict[str, CpuCell]] = {}
    for workload in WORKLOAD_NAMES:
        table[workload] = {}
        for target in targets:
            results = [
                r for run in runs if (r := run.get(workload, {}).get(target)) and "error" not in r
            ]
            table[workload][target] = (
                median([r["server_cpu"] for r in results if "server_cpu" in r]),
                median([r["client_cpu"] for r in results if "client_cpu" in r]),
                median([r["other_cpu"] for r in results if "other_cpu" in r]),
            )
    return table


def _notes(workload: str, r: dict[str, Any]) -> list[str]:
    """What is wrong or suspicious about one measurement, in words."""
    if "error" in r:
        return [f"failed: {r['error'].splitlines()[0][:300]}"]
    notes = []
    if r.get("other_cpu", 0) > BUSY_NOTE:
        notes.append(f"other processes used {r['other_cpu'] * 100:.0f} % of a core meanwhile")
    if workload.startswith("append") and not r.get("ok", True):
        notes.append(f"wrk errors {r['errors']}")
    if workload == "catchup" and not r.get("ok", True):
        notes.append(f"read {r['messages_per_read']} messages of {r['messages_written']} written")
    if workload.startswith("sse"):
        if r.get("errors"):
            notes.append("; ".join(r["errors"][:3]))
        if r.get("duplicates"):
            notes.append(f"{r['duplicates']} duplicate deliveries")
        if workload == "sse" and r.get("missing"):
            notes.append(f"{r['missing']} of {r['expected']} deliveries missing after the drain")
        if workload == "sse" and r.get("writer_late"):
            notes.append(
                f"the writer fell a whole interval behind its schedule {r['writer_late']} times"
            )
    return notes


def problems(runs: list[dict[str, dict[str, Any]]]) -> list[str]:
    """Every failed or suspicious measurement, for the notes under the table; the same note
    for one target in several places is written once, with where it happened."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for i, run in enumerate(runs, 1):
        for workload, per_target in run.items():
            for target, r in per_target.items():
                for note in _notes(workload, r):
                    where = f"run {i} {WORKLOAD_NAMES.get(workload, workload)}"
                    grouped.setdefault((target, note), []).append(where)
    total = len(runs) * len(WORKLOAD_NAMES)
    lines = []
    for (target, note), places in grouped.items():
        where = "every measurement" if len(places) >= total else ", ".join(places)
        lines.append(f"`{target}` ({where}): {note}")
    return lines


# ---------------------------------------------------------------------------------- markdown


def render(data: dict[str, Any]) -> str:
    meta, targets, baseline = data["meta"], data["targets"], data["baseline"]
    names = list(targets)
    cfg = meta["config"]
    labels = {n: targets[n]["label"] for n in names}
    lines = [f"<!-- bench:{SECTION} -->", "## Streams", ""]
    if meta.get("dry_run"):
        lines += [
            "> **Dry run:** the outlast columns are the reference server started again "
            "under another name, to test the harness. These are not outlast's figures.",
            "",
        ]
    peer = labels.get(baseline, baseline) if baseline else None
    lines += [
        "outlast's Durable Streams endpoint (`/v1/stream/<name>`) against the protocol's reference "
        f"Node server, measured in the same run. Ratios are target ÷ {peer or 'baseline'} within "
        "each run, then the median over runs; ↑ higher is better, ↓ lower is better. How each "
        "figure is measured: [`bench/README.md`](../bench/README.md#streams).",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"- **Date:** {meta['date']}",
        f"- **Machine:** {meta['machine']['summary']}. Server and load generator share these "
        f"{meta['machine']['cores']} cores: every figure is what a server gets from one core and "
        "a half, not a server's ceiling on a dedicated box.",
        f"- **Load average** at start: {meta['machine']['loadavg_start']} "
        "(other work on the machine skews all targets alike within a run).",
        f"- **Runs:** {cfg['runs']} × {cfg['duration']:g} s per workload "
        f"({cfg['warmup']:g} s warm-up before each append phase); catch-up stream "
        f"{cfg['catchup_mb']} MiB of 1 KiB messages; SSE messages 1 KiB.",
        "- **Servers:** "
        + "; ".join(f"`{n}` = {labels[n]} ({targets[n]['version']})" for n in names)
        + ".",
        f"- **Raw results:** `{meta['json']}`",
        "",
    ]
    header = ["Workload", "Metric"]
    for n in names:
        header.append(labels[n])
        if baseline and n != baseline and baseline in names:
            header.append(f"× {baseline}")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|")
    for metric, row in zip(METRICS, data["summary"], strict=True):
        title = metric.row.format(readers=cfg["sse_readers"], rate=cfg["sse_rate"])
        cells = [title, metric.name]
        for n in names:
            cells.append(cell(row["median"].get(n), metric.fmt))
            if baseline and n != baseline and baseline in names:
                cells.append(ratio(row["ratio"].get(n)))
        if any(c != "—" for c in cells[2:]):
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "CPU used during the timed part (median, % of one core): server (its whole process "
        "tree, plus its redis-server) / load generator (`wrk` or `loadgen.py`) / every other "
        "process on the machine (200 % is both cores).",
        "",
    ]
    lines.append("| Workload | " + " | ".join(labels[n] for n in names) + " |")
    lines.append("|---|" + "|".join(["---:"] * len(names)) + "|")
    for workload, per_target in data["cpu"].items():
        cells = []
        for n in names:
            server, client, other = per_target.get(n, (None, None, None))
            cells.append(
                "—"
                if server is None
                else f"{server * 100:.0f} % / "
                f"{(client or 0) * 100:.0f} % / {(other or 0) * 100:.0f} %"
            )
        if any(c != "—" for c in cells):
            lines.append(f"| {WORKLOAD_NAMES[workload]} | " + " | ".join(cells) + " |")
    if data["problems"]:
        lines += ["", "Problems seen during the runs:", ""]
        lines += [f"- {p}" for p in data["problems"]]
    lines += ["", f"<!-- /bench:{SECTION} -->"]
    return "\n".join(lines) + "\n"

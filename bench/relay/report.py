"""Medians, within-run differences and the Relay section of docs/benchmarks.md.

A run's results are ``{"latency": {N: {"direct": r, target: r}}, "ceiling": {"direct": r,
target: r}, "proxy": {N: {"direct": r, target: r}}, "scale": {target: r}, "server_log":
{target: ...}}``. Added latency is computed
within each run (the relay's percentile minus the direct read's, measured minutes apart on the
same machine), then the median over runs is taken; every other figure is a median over runs.
Only the text between ``<!-- bench:relay -->`` and ``<!-- /bench:relay -->`` is rewritten.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from bench.common import median, median_present, number

SECTION = "relay"
PROXY_SECTION = "relay-proxy"  # the pass-through and LiteLLM, its own section
DIRECT = "direct"
TARGET_P99_ADDED_MS = 2.0  # target: relay p99 added latency at 100 streams
TARGET_READER_BYTES = 64 * 1024  # target: per idle reader
BUSY_NOTE = 0.3  # cores used by other processes during a measurement that earn it a note
Result = dict[str, Any]
Runs = list[dict[str, Any]]


def ok(r: Result | None) -> bool:
    return bool(r) and "error" not in r  # type: ignore[operator]


def errors_of(r: Result | None) -> int:
    """Everything that went wrong in one measurement, as a count."""
    if not ok(r):
        return 1
    assert r is not None
    flow = r.get("flow", r)
    count = int(r.get("errors", {}).get("total", 0))
    for key in ("missing", "gaps", "duplicates", "without_done"):
        count += int(flow.get(key, 0) or 0)
    return count


def latency_rows(
    runs: Runs, levels: list[int], names: list[str], key: str = "latency"
) -> list[Result]:
    rows = []
    for n in levels:
        for pct in ("p50", "p99"):
            row: Result = {"streams": n, "pct": pct, "direct": None, "relay": {}, "added": {}}

            def lat(r: Result | None, pct: str = pct) -> float | None:
                return number(r["latency_ms"][pct]) if ok(r) and r["received"] else None  # type: ignore[index]

            per_run = [run.get(key, {}).get(str(n), {}) for run in runs]
            row["direct"] = median_present([lat(p.get(DIRECT)) for p in per_run])
            for name in names:
                row["relay"][name] = median_present([lat(p.get(name)) for p in per_run])
                diffs = []
                for p in per_run:
                    mine, base = lat(p.get(name)), lat(p.get(DIRECT))
                    diffs.append(None if mine is None or base is None else mine - base)
                row["added"][name] = median_present(diffs)
            rows.append(row)
    return rows


def _median_of(runs: Runs, get: Callable[[dict[str, Any]], Any]) -> float | None:
    values = []
    for run in runs:
        try:
            values.append(number(get(run)))
        except (KeyError, TypeError, ZeroDivisionError):
            values.append(None)
    return median_present(values)


def _level_cell(figure: str, streams: int, target: Result) -> str:
    """A target's events/s delivered or errors at one level of concurrent streams."""
    value = target[figure].get(str(streams))
    if figure == "delivered":
        return _rate(value)
    return "—" if value is None else str(value)


def _delivered(streams: int, who: str) -> Callable[[dict[str, Any]], Any]:
    return lambda run: run["latency"][str(streams)][who]["events_per_s"]


def _ceiling(who: str) -> Callable[[dict[str, Any]], Any]:
    return lambda run: run["ceiling"][who]["events_per_s"]


def summarize(runs: Runs, levels: list[int], names: list[str]) -> Result:
    out: Result = {"latency": latency_rows(runs, levels, names), "targets": {}}
    out["direct"] = {
        "ceiling_events_per_s": _median_of(runs, lambda r: r["ceiling"][DIRECT]["events_per_s"]),
        "delivered": {str(n): _median_of(runs, _delivered(n, DIRECT)) for n in levels},
    }
    for name in names:

        def sc(key: str, name: str = name) -> Callable[[dict[str, Any]], Any]:
            def get(run: dict[str, Any]) -> Any:
                r = run["scale"].get(name)
                # Memory of N relays is only that when all N reached the upstream.
                if not ok(r) or r.get("relays_at_upstream", r["relays"]) < r["relays"]:
                    return None
                return r[key]

            return get

        def flow_lat(pct: str, name: str = name) -> Callable[[dict[str, Any]], Any]:
            return lambda run: run["scale"][name]["flow"]["latency_ms"][pct]

        out["targets"][name] = {
            "delivered": {str(n): _median_of(runs, _delivered(n, name)) for n in levels},
            "errors": {
                str(n): sum(errors_of(r["latency"].get(str(n), {}).get(name)) for r in runs)
                for n in levels
            },
            "ceiling_events_per_s": _median_of(runs, _ceiling(name)),
            "ceiling_errors": sum(errors_of(r["ceiling"].get(name)) for r in runs),
            "per_relay_bytes": _median_of(runs, sc("per_relay_bytes")),
            "per_relay_redis_bytes": _median_of(runs, sc("per_relay_redis_bytes")),
            "per_reader_bytes": _median_of(runs, sc("per_reader_bytes")),
            "peak_rss": _median_of(runs, sc("peak_rss")),
            "scale_errors": [errors_of(r["scale"].get(name)) for r in runs],
            "scale_at_upstream": [
                (r["scale"].get(name) or {}).get("relays_at_upstream") for r in runs
            ],
            "scale_p50": _median_of(runs, flow_lat("p50")),
            "scale_p99": _median_of(runs, flow_lat("p99")),
        }
    return out


def summarize_proxies(runs: Runs, levels: list[int], names: list[str]) -> Result:
    """The proxy workload: latency rows as for the relay, events/s delivered and errors."""

    def delivered(n: int, who: str) -> Callable[[dict[str, Any]], Any]:
        return lambda run: run["proxy"][str(n)][who]["events_per_s"]

    return {
        "latency": latency_rows(runs, levels, names, key="proxy"),
        "delivered": {
            who: {str(n): _median_of(runs, delivered(n, who)) for n in levels}
            for who in [DIRECT, *names]
        },
        "errors": {
            who: {
                str(n): sum(errors_of(r.get("proxy", {}).get(str(n), {}).get(who)) for r in runs)
                for n in levels
            }
            for who in names
        },
        "cpu": [
            (
                f"{n:,} streams",
                who,
                _cpu_shares([r.get("proxy", {}).get(str(n), {}).get(who) for r in runs]),
            )
            for n in levels
            for who in [DIRECT, *names]
        ],
    }


def _cpu_shares(results: list[Result | None]) -> Result:
    good = [r for r in results if r is not None and ok(r)]
    return {
        k: median([r[k] for r in good if k in r])
        for k in ("server_cpu", "upstream_cpu", "client_cpu", "other_cpu")
    }


def cpu_rows(runs: Runs, levels: list[int], names: list[str]) -> list[tuple[str, str, Result]]:
    """(workload, who, median CPU shares) for the CPU table."""

    shares = _cpu_shares
    rows = []
    for n in levels:
        for who in [DIRECT, *names]:
            rows.append(
                (
                    f"{n:,} streams",
                    who,
                    shares([r["latency"].get(str(n), {}).get(who) for r in runs]),
                )
            )
    for who in [DIRECT, *names]:
        rows.append(("ceiling", who, shares([r["ceiling"].get(who) for r in runs])))
    for who in names:
        rows.append(
            (
                "1,000 relays × 10 readers",
                who,
                shares([(r["scale"].get(who) or {}).get("flow") for r in runs]),
            )
        )
    return rows


def problems(runs: Runs, proxy: bool = False) -> list[str]:
    """Failed or suspicious measurements, in words, grouped by note: those of the relay
    workloads, or with *proxy* those of the proxy workload."""
    grouped: dict[str, list[str]] = {}

    def note(text: str, where: str) -> None:
        grouped.setdefault(text, []).append(where)

    for i, run in enumerate(runs, 1):
        items: list[tuple[str, str, Result | None]] = []
        for n, per in run.get("proxy" if proxy else "latency", {}).items():
            items += [(f"{int(n):,} streams", who, r) for who, r in per.items()]
        if not proxy:
            items += [("ceiling", who, r) for who, r in run["ceiling"].items()]
            items += [("1,000 relays", who, r) for who, r in run["scale"].items()]
        for workload, who, r in items:
            where = f"run {i} {workload}"
            if not ok(r):
                error = str((r or {}).get("error", "no result")).splitlines()[0]
                note(f"`{who}`: failed: {error[:200]}", where)
                continue
            assert r is not None
            flow = r.get("flow", r)
            if flow.get("other_cpu", 0) > BUSY_NOTE:
                note(f"other processes used ≥ {BUSY_NOTE * 100:.0f} % of a core (`{who}`)", where)
            errs = r.get("errors", {})
            for kind, count in errs.get("by_kind", {}).items():
                sample = next((s for s in errs.get("samples", []) if s.startswith(kind)), kind)
                note(f"`{who}`: {count} × {sample[:220]}", where)
            for key in ("missing", "gaps", "duplicates", "without_done"):
                if flow.get(key):
                    note(f"`{who}`: {flow[key]} events {key.replace('_', ' ')}", where)
        for who, log in run.get("server_log", {}).items():
            if proxy != is_litellm_name(who):
                continue
            for message, count in log.get("top", {}).items():
                note(f"`{who}` log: {count} × {message}", f"run {i}")
    return [f"{text} ({', '.join(places)})" for text, places in grouped.items()]


# ---------------------------------------------------------------------------------- markdown


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.2f}"


def _kib(value: float | None) -> str:
    return "—" if value is None else f"{value / 1024:,.1f} KiB"


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _verdict(met: bool | None) -> str:
    return "—" if met is None else ("met" if met else "**not met**")


def _latency_table(
    latency: list[Result], names: list[str], label: Callable[[str], str]
) -> list[str]:
    """The per-event latency table: a row per level and percentile, the direct read, then each
    target's latency and what it added."""
    head = ["Streams", "", "direct"]
    for n in names:
        head += [label(n), "added"]
    lines = [
        "Per-event latency, ms (median of runs):",
        "",
        "| " + " | ".join(head) + " |",
        "|---|---|" + "|".join(["---:"] * (len(head) - 2)) + "|",
    ]
    for lat in latency:
        cells = [
            f"{lat['streams']:,}" if lat["pct"] == "p50" else "",
            lat["pct"],
            _ms(lat["direct"]),
        ]
        for n in names:
            added = lat["added"].get(n)
            cells += [_ms(lat["relay"].get(n)), "—" if added is None else f"{added:+,.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cpu_table(rows: list[tuple[str, str, Result]], label: Callable[[str], str]) -> list[str]:
    """The CPU table: a row per measurement that recorded CPU, its reader named by *label*."""
    lines = ["", "| Workload | Read by | CPU |", "|---|---|---|"]
    for workload, who, c in rows:
        if c["server_cpu"] is None and c["client_cpu"] is None:
            continue
        pct = [
            f"{(c[k] or 0) * 100:.0f} %"
            for k in ("server_cpu", "upstream_cpu", "client_cpu", "other_cpu")
        ]
        lines.append(f"| {workload} | {label(who)} | {' / '.join(pct)} |")
    return lines


def _scale_rows(
    row: Callable[[str, str, Callable[[Result], str]], None], cfg: Result, redis: bool
) -> None:
    row(
        f"{cfg['relays']:,} relays started: how many reached the upstream, per run",
        "",
        lambda s: ", ".join("—" if x is None else f"{x:,}" for x in s["scale_at_upstream"]),
    )
    row("memory per running relay (outlast RSS)", "", lambda s: _kib(s["per_relay_bytes"]))
    if redis:
        row("… and in redis-server", "", lambda s: _kib(s["per_relay_redis_bytes"]))
    row("memory per idle reader", "", lambda s: _kib(s["per_reader_bytes"]))
    row(
        "peak RSS of outlast",
        "",
        lambda s: "—" if not s["peak_rss"] else f"{s['peak_rss'] / 2**20:,.0f} MiB",
    )
    readers = cfg["relays"] * cfg["readers_per_relay"]
    row(
        f"{cfg['relays']:,} relays + {readers:,} readers: errors per run",
        "",
        lambda s: ", ".join(str(e) for e in s["scale_errors"]),
    )
    row(
        "… latency p50 / p99 ms while every reader reads",
        "",
        lambda s: f"{_ms(s['scale_p50'])} / {_ms(s['scale_p99'])}",
    )


def render(data: Result) -> str:
    meta, names, levels = data["meta"], data["names"], data["meta"]["config"]["levels"]
    cfg, summary, labels = meta["config"], data["summary"], data["labels"]
    machine = meta["machine"]
    lines = [f"<!-- bench:{SECTION} -->", "## Relay", ""]
    if meta.get("partial"):
        lines += [f"> **Partial:** {meta['partial']} finished; the rest was interrupted.", ""]
    lines += [
        "The fake OpenAI-style SSE upstream read directly by the load generator, against the same "
        "upstream read through outlast's relay: `POST /v1/jobs` with task `relay`, each job "
        "followed live on `GET /v1/jobs/<id>/events`. Each event carries the upstream's send "
        "time (CLOCK_MONOTONIC, one clock for every process); latency = receive time − send "
        "time; **added** = relay − direct, within a run, then the median over runs. Every reader "
        "is connected before the upstream starts sending, so every event is read live. How each "
        "figure is measured: [`bench/README.md`](../bench/README.md#relay).",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"- **Date:** {meta['date']}",
        f"- **Machine:** {machine['summary']}. outlast, the upstream and the load generator share "
        f"these {machine['cores']} cores, and so did other engineers' test runs (CPU table below).",
        f"- **Load average** at start: {machine['loadavg_start']}; at the end: "
        f"{meta.get('loadavg_end', '?')}.",
        f"- **Runs:** {cfg['runs']}. Latency: {cfg['rate']:g} events/s per stream for "
        f"{cfg['duration']:g} s at {', '.join(f'{n:,}' for n in levels)} concurrent streams "
        f"(one reader each); ceiling: {cfg['ceiling_streams']} streams × "
        f"{cfg['ceiling_events']:,} events, unthrottled; "
        + (
            f"memory and scale: {cfg['relays']:,} relays × {cfg['readers_per_relay']} readers, "
            f"then {cfg['scale_events']} events per relay at {cfg['scale_rate']:g}/s. "
            if cfg.get("scale", True)
            else "memory and the scale run not measured in this run (`--no-scale`). "
        )
        + "Events are ~210-byte `chat.completion.chunk`s."
        + (
            f" outlast ran with `{' '.join(cfg['outlast_args'])}`."
            if cfg.get("outlast_args")
            else ""
        ),
        "- **Servers:** "
        + "; ".join(f"`{n}` = {labels[n]} ({data['versions'].get(n, '')})" for n in names)
        + ".",
        f"- **Raw results:** `{meta['json']}`",
        "",
        *_latency_table(summary["latency"], names, labels.__getitem__),
    ]
    lines += ["", "Throughput, memory and the 1,000-relay run (median of runs; errors summed):", ""]
    lines.append("| Figure | direct | " + " | ".join(labels[n] for n in names) + " |")
    lines.append("|---|---:|" + "|".join(["---:"] * len(names)) + "|")
    t = summary["targets"]

    def row(title: str, direct: str, get: Callable[[Result], str]) -> None:
        lines.append(f"| {title} | {direct} | " + " | ".join(get(t[n]) for n in names) + " |")

    for n in levels:
        offered = cfg["rate"] * n
        row(
            f"events/s delivered at {n:,} streams (offered {offered:,.0f})",
            _rate(summary["direct"]["delivered"].get(str(n))),
            functools.partial(_level_cell, "delivered", n),
        )
        row(f"errors at {n:,} streams", "", functools.partial(_level_cell, "errors", n))
    row(
        f"events/s ceiling ({cfg['ceiling_streams']} streams unthrottled)",
        _rate(summary["direct"]["ceiling_events_per_s"]),
        lambda s: _rate(s["ceiling_events_per_s"]),
    )
    scale = cfg.get("scale", True)  # memory and the scale run (skipped by --no-scale)
    if scale:
        _scale_rows(row, cfg, any(t[n]["per_relay_redis_bytes"] for n in names))
    lines += ["", "Targets:", ""]
    lines.append("| Target | " + " | ".join(labels[n] for n in names) + " |")
    lines.append("|---|" + "|".join([":---:"] * len(names)) + "|")
    p99_100 = next(
        (r for r in summary["latency"] if r["streams"] == 100 and r["pct"] == "p99"), None
    )

    def verdicts(check: Callable[[str], bool | None]) -> str:
        return " | ".join(_verdict(check(n)) for n in names)

    def added_ok(n: str) -> bool | None:
        added = p99_100["added"].get(n) if p99_100 else None
        return None if added is None else added <= TARGET_P99_ADDED_MS

    def reader_ok(n: str) -> bool | None:
        value = t[n]["per_reader_bytes"]
        return None if value is None else value <= TARGET_READER_BYTES

    lines.append(
        f"| p99 added latency ≤ {TARGET_P99_ADDED_MS:g} ms at 100 streams | {verdicts(added_ok)} |"
    )
    if scale:
        lines.append(f"| ≤ 64 KiB per idle reader | {verdicts(reader_ok)} |")
        lines.append(
            f"| {cfg['relays']:,} relays with {cfg['relays'] * cfg['readers_per_relay']:,} "
            f"readers without an error | {verdicts(lambda n: not any(t[n]['scale_errors']))} |"
        )
    lines += [
        "",
        "CPU during each measurement (median, % of one core): outlast (with its redis-server) / "
        "upstream / load generator / every other process on the machine (200 % is both cores).",
        *_cpu_table(data["cpu"], lambda who: labels.get(who, who)),
    ]
    if data.get("notes"):
        lines += ["", *data["notes"]]
    if data["problems"]:
        lines += ["", "Problems seen during the runs:", ""]
        lines += [f"- {p}" for p in data["problems"]]
    lines += ["", f"<!-- /bench:{SECTION} -->"]
    return "\n".join(lines) + "\n"


def is_litellm_name(name: str) -> bool:
    return name.startswith("litellm")


def render_proxies(data: Result) -> str:
    """The section of the pass-through and LiteLLM: latency per level, then events/s
    delivered, CPU and problems."""
    names, labels, summary = data["proxies"], data["labels"], data["proxy_summary"]
    meta = data["meta"]
    levels, cfg = meta["config"]["proxy_levels"], meta["config"]

    def label(n: str) -> str:
        return f"{labels[n]} pass-through" if n.startswith("outlast") else labels[n]

    lines = [
        f"<!-- bench:{PROXY_SECTION} -->",
        "### Relay: outlast's pass-through and the LiteLLM proxy",
        "",
        "The same upstream read as an OpenAI client reads a proxy: one streaming chat request "
        '(`"stream": true`) per stream, read on its own answer — directly from the upstream, '
        "through outlast's pass-through (`POST /v1/upstreams/bench/v1/chat/completions`: a relay "
        "job, answered with its live events) and through the LiteLLM proxy (`POST "
        "/v1/chat/completions` with its master key, a model on the same upstream). LiteLLM "
        "rebuilds each chunk from the fields it knows, so here the stamps travel in the chunks' "
        "content, for every reader alike. "
        f"{cfg['rate']:g} events/s per stream for {cfg['duration']:g} s; every request reached "
        "the upstream before it started sending. "
        + (
            f"outlast ran with `{' '.join(cfg['outlast_args'])}`. "
            if cfg.get("outlast_args")
            else "outlast ran as one process. "
        ),
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"- **Date:** {meta['date']}; **runs:** {cfg['runs']}; **load average** at start: "
        f"{meta['machine']['loadavg_start']}, at the end: {meta.get('loadavg_end', '?')}.",
        "- **Servers:** "
        + "; ".join(f"`{n}` = {label(n)} ({data['versions'].get(n, '')})" for n in names)
        + ".",
        f"- **Raw results:** `{meta['json']}`",
        "",
        *_latency_table(summary["latency"], names, label),
    ]
    lines += ["", "| Figure | direct | " + " | ".join(label(n) for n in names) + " |"]
    lines.append("|---|---:|" + "|".join(["---:"] * len(names)) + "|")
    for level in levels:
        k = str(level)
        lines.append(
            f"| events/s delivered at {level:,} streams (offered {cfg['rate'] * level:,.0f}) | "
            + " | ".join(_rate(summary["delivered"][w][k]) for w in [DIRECT, *names])
            + " |"
        )
        lines.append(
            f"| errors at {level:,} streams |  | "
            + " | ".join(str(summary["errors"][w][k]) for w in names)
            + " |"
        )
    lines += [
        "",
        "CPU (median, % of one core): the proxy (outlast with its redis-server, or LiteLLM with "
        "its workers) / upstream / load generator / every other process.",
        *_cpu_table(summary["cpu"], lambda who: "direct" if who == DIRECT else label(who)),
    ]
    found = problems(data["runs"], proxy=True)
    if found:
        lines += ["", "Problems seen during the runs:", ""]
        lines += [f"- {p}" for p in found]
    lines += ["", f"<!-- /bench:{PROXY_SECTION} -->"]
    return "\n".join(lines) + "\n"

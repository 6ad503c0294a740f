"""SVG bar charts of the newest benchmark results, and the Plots section of docs/benchmarks.md.

    python -m bench.plots [FILE ...] [--results DIR] [--img DIR] [--out FILE|none]

For each benchmark (streams, jobs, relay, and shutdown when it has results) the newest raw
results file in ``bench/results/`` is read, or the files given (one per benchmark, told apart by
the name's prefix ``streams-``, ``jobs-``, ``relay-``, ``shutdown-``, else by their keys). Medians
and ratios come from each benchmark's own summary functions (``bench/*/report.py``), so a chart
shows the same figures as its table. Each chart is an SVG written by hand (no plotting library)
into ``docs/img/``, on a white background so that it reads the same in light and dark themes.
The text between ``<!-- bench:plots -->`` and ``<!-- /bench:plots -->`` of docs/benchmarks.md is
replaced, or put right before the first benchmark's section. The output depends only on the
results files: a re-run without new results changes nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from bench import common
from bench.jobs import report as jobs_report
from bench.relay import report as relay_report
from bench.shutdown import report as shutdown_report
from bench.streams import report as streams_report

ROOT = common.REPO
RESULTS = ROOT / "bench" / "results"
IMG = ROOT / "docs" / "img"
DOC = common.DOC
COMMAND = "python -m bench.plots"
SECTION = "plots"
BENCHES = ("streams", "jobs", "relay", "shutdown")

# Colours: outlast's targets strong, the peers grey; p50 in a lighter tint of its target's colour.
COLOURS = {"outlast-sqlite": ("#2563eb", "#93c5fd"), "outlast-redis": ("#ea580c", "#fdba74")}
OTHER_OUTLAST = ("#7c3aed", "#c4b5fd")
PEER = ("#94a3b8", "#cbd5e1")
TEXT, MUTED, GRID, AXIS, TARGET = "#111827", "#6b7280", "#e5e7eb", "#9ca3af", "#dc2626"
FONT = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"

# Layout, in pixels.
WIDTH, PAD = 800, 16
ROW, BAR = 20, 13  # a bar's row and the bar's thickness
GROUP_TITLE, GROUP_GAP = 20, 8
CHAR_W = 6.6  # average width of a 12 px sans-serif character, for placing text


def colour(target: str, light: bool = False) -> str:
    pair = COLOURS.get(target, OTHER_OUTLAST if target.startswith("outlast") else PEER)
    return pair[1] if light else pair[0]


# ------------------------------------------------------------------------------------ charts


@dataclass(frozen=True)
class Bar:
    label: str  # left of the bar
    value: float | None  # None: no result, no bar
    text: str  # in the value column on the right
    colour: str


@dataclass(frozen=True)
class Group:
    title: str  # a row of its own above the bars; "" for none
    bars: list[Bar]


@dataclass(frozen=True)
class Rule:
    value: float  # a dashed vertical line at this value
    label: str
    group: int | None = None  # only across this group's bars; None: across the whole plot
    colour: str = TARGET


@dataclass(frozen=True)
class Axis:
    title: str
    tick: Callable[[float], str]
    log: bool = False
    base: float | None = None  # bars start at this value (default: the axis' low end)


@dataclass
class Chart:
    name: str  # file name without .svg
    title: str
    subtitle: list[str]
    groups: list[Group]
    axis: Axis
    rules: list[Rule] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)  # (label, colour)
    source: str = ""  # the raw results file, relative to the repository


def _text_w(text: str, size: float = 12) -> float:
    return len(text) * CHAR_W * size / 12


def _fmt(v: float) -> str:
    return f"{v:.1f}".removesuffix(".0")


def _text(
    x: float,
    y: float,
    text: str,
    *,
    size: float = 12,
    fill: str = TEXT,
    anchor: str = "start",
    weight: int | None = None,
) -> str:
    attrs = f'x="{_fmt(x)}" y="{_fmt(y)}"'
    if size != 12:
        attrs += f' font-size="{size:g}"'
    if fill != TEXT:
        attrs += f' fill="{fill}"'
    if anchor != "start":
        attrs += f' text-anchor="{anchor}"'
    if weight:
        attrs += f' font-weight="{weight}"'
    return f"<text {attrs}>{escape(text)}</text>"


def _nice_step(span: float, count: int = 5) -> float:
    raw = span / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5):
        if raw <= m * magnitude * (1 + 1e-9):
            return m * magnitude
    return 10 * magnitude


def _ticks(chart: Chart) -> list[float]:
    """The axis' ticks; the first and the last are its ends."""
    values = [b.value for g in chart.groups for b in g.bars if b.value is not None]
    values += [r.value for r in chart.rules]
    if chart.axis.base is not None:
        values.append(chart.axis.base)
    if not chart.axis.log:
        hi = max([*values, 0.0]) or 1.0
        step = _nice_step(hi)
        return [i * step for i in range(math.ceil(hi / step - 1e-9) + 1)]
    positive = [v for v in values if v > 0] or [1.0]
    lo, hi = min(positive), max(positive)
    first, last = math.floor(math.log10(lo) + 1e-9), math.ceil(math.log10(hi) - 1e-9)
    last = max(last, first + 1)
    multiples = (1, 2, 5) if last - first <= 3 else (1,)
    ticks = [m * 10.0**e for e in range(first, last + 1) for m in multiples]
    # Bars start at the low end: with no base, keep it below the smallest value or rule.
    below = [t for t in ticks if t <= lo * (1 + 1e-9)]
    if chart.axis.base is None:
        below = [t for t in ticks if t < lo * (1 - 1e-9)] or [ticks[0] / 10]
        ticks = sorted({*below, *ticks})
    start = max(below)
    end = min(t for t in ticks if t >= hi * (1 - 1e-9))
    return [t for t in ticks if start <= t <= end]


def render_svg(chart: Chart) -> str:
    """The chart as an SVG document: labels left, bars in the middle, values right."""
    bars = [b for g in chart.groups for b in g.bars]
    label_w = min(260.0, max(60.0, *(_text_w(b.label) for b in bars))) + 12
    value_w = max(40.0, *(_text_w(b.text) for b in bars)) + 16
    x0, x1 = PAD + label_w, WIDTH - PAD - value_w
    ticks = _ticks(chart)
    lo, hi, log = ticks[0], ticks[-1], chart.axis.log

    def x(v: float) -> float:
        v = min(max(v, lo), hi)
        if log:
            share = (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        else:
            share = (v - lo) / (hi - lo)
        return x0 + share * (x1 - x0)

    head: list[str] = []
    y = PAD + 16.0
    head.append(_text(PAD, y, chart.title, size=16, weight=600))
    for line in chart.subtitle:
        y += 18
        head.append(_text(PAD, y, line, fill=MUTED))
    if chart.legend:
        y += 20
        lx = float(PAD)
        for label, fill in chart.legend:
            head.append(
                f'<rect x="{_fmt(lx)}" y="{_fmt(y - 9)}" width="10" height="10" rx="2" '
                f'fill="{fill}"/>'
            )
            head.append(_text(lx + 15, y, label))
            lx += 15 + _text_w(label) + 18
    top = y + (26 if any(r.group is None for r in chart.rules) else 12)

    grid: list[str] = []
    shapes: list[str] = []
    texts: list[str] = []
    spans: list[tuple[float, float, float]] = []  # per group: title row top, bars top, bottom
    cur = top
    base = x(chart.axis.base if chart.axis.base is not None else lo)
    for i, group in enumerate(chart.groups):
        if i:
            cur += GROUP_GAP
        g_top = cur
        if group.title:
            texts.append(_text(PAD, cur + 14, group.title, weight=600))
            cur += GROUP_TITLE
        bars_top = cur
        for b in group.bars:
            mid = cur + ROW / 2
            texts.append(_text(x0 - 8, mid + 4, b.label, anchor="end"))
            texts.append(_text(WIDTH - PAD, mid + 4, b.text, anchor="end"))
            if b.value is not None:
                end = x(b.value)
                left, width = min(base, end), max(abs(end - base), 1.5)
                shapes.append(
                    f'<rect x="{_fmt(left)}" y="{_fmt(mid - BAR / 2)}" width="{_fmt(width)}" '
                    f'height="{BAR}" rx="2" fill="{b.colour}">'
                    f"<title>{escape(f'{b.label}: {b.text}')}</title></rect>"
                )
            cur += ROW
        spans.append((g_top, bars_top, cur))
    bottom = cur + 4

    for t in ticks:
        tx = x(t)
        stroke = AXIS if t == lo else GRID
        grid.append(
            f'<line x1="{_fmt(tx)}" y1="{_fmt(top - 4)}" x2="{_fmt(tx)}" y2="{_fmt(bottom)}" '
            f'stroke="{stroke}"/>'
        )
        texts.append(
            _text(tx, bottom + 15, chart.axis.tick(t), size=11, fill=MUTED, anchor="middle")
        )
    texts.append(_text((x0 + x1) / 2, bottom + 33, chart.axis.title, fill=MUTED, anchor="middle"))
    if chart.source:
        texts.append(
            _text(PAD, bottom + 55, f"{chart.source} · {COMMAND}", size=11, fill=MUTED),
        )
    height = bottom + (67 if chart.source else 45)

    for rule in chart.rules:
        rx = x(rule.value)
        # Across the bars of each group it spans, not through the groups' titles.
        segments = [(b_top - 2, g_bottom) for _, b_top, g_bottom in spans]
        if rule.group is None:
            segments[0] = (top - 8, segments[0][1])
            w = _text_w(rule.label)
            cx = min(max(rx, PAD + w / 2), WIDTH - PAD - w / 2)
            texts.append(_text(cx, top - 12, rule.label, fill=rule.colour, anchor="middle"))
        else:
            g_top = spans[rule.group][0]
            segments = [segments[rule.group]]
            title_end = PAD + _text_w(chart.groups[rule.group].title) * 1.08 + 12
            texts.append(_text(max(rx + 4, title_end), g_top + 14, rule.label, fill=rule.colour))
        shapes += [
            f'<line x1="{_fmt(rx)}" y1="{_fmt(y1)}" x2="{_fmt(rx)}" y2="{_fmt(y2)}" '
            f'stroke="{rule.colour}" stroke-width="1.5" stroke-dasharray="5 3"/>'
            for y1, y2 in segments
        ]

    h = _fmt(height)
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{h}" '
            f'viewBox="0 0 {WIDTH} {h}" role="img" aria-labelledby="title">',
            f'<title id="title">{escape(chart.title)}</title>',
            f'<rect width="{WIDTH}" height="{h}" rx="6" fill="#ffffff" stroke="{GRID}"/>',
            f'<g font-family="{FONT}" font-size="12" fill="{TEXT}">',
            *head,
            *grid,
            *shapes,
            *texts,
            "</g>",
            "</svg>",
            "",
        ]
    )


# ------------------------------------------------------------------------- one per benchmark


def _ratio_tick(v: float) -> str:
    return f"{v:g}×"


def _ms_tick(v: float) -> str:
    return f"{v:,g}"


def _dry(data: dict[str, Any]) -> str:
    return "DRY RUN (not outlast's figures) — " if data["meta"].get("dry_run") else ""


def streams_charts(data: dict[str, Any], source: str) -> list[Chart]:
    """Every streams figure as outlast ÷ reference: throughput (↑) and latency (↓)."""
    names, baseline = list(data["targets"]), data.get("baseline")
    if not baseline or baseline not in names:
        return []
    rows = streams_report.summarize(data["runs"], names, baseline)
    cfg = data["meta"]["config"]
    labels = {n: data["targets"][n]["label"] for n in names}
    mine = [n for n in names if n != baseline]
    runs = cfg.get("runs", len(data["runs"]))
    charts = []
    for arrow, name, what, side in (
        ("↑", "streams-throughput", "throughput", "right of 1× = more than the reference"),
        ("↓", "streams-latency", "latency", "left of 1× = lower latency than the reference"),
    ):
        groups, title = [], ""
        for metric, row in zip(streams_report.METRICS, rows, strict=True):
            title = metric.row.format(readers=cfg["sse_readers"], rate=cfg["sse_rate"]) or title
            if arrow not in metric.name:
                continue
            ref = row["median"].get(baseline)
            ref_text = "—" if ref is None else format(ref, metric.fmt)
            bars = []
            for n in mine:
                ratio, value = row["ratio"].get(n), row["median"].get(n)
                text = "—" if ratio is None else f"{ratio:.2f}×"
                if value is not None:
                    text += f" · {format(value, metric.fmt)}"
                bars.append(Bar(labels[n], ratio, text, colour(n)))
            if all(b.value is None for b in bars):
                continue  # not measured in this run (e.g. --no-sse-max)
            groups.append(Group(f"{title} — {metric.name} (reference: {ref_text})", bars))
        charts.append(
            Chart(
                name=name,
                title=f"{_dry(data)}Streams {what}: outlast ÷ {labels[baseline]}",
                subtitle=[
                    f"Ratio within each run, median of {runs} runs; {side}. "
                    "Value column: ratio · outlast's median.",
                ],
                groups=groups,
                axis=Axis("× reference (log scale)", _ratio_tick, log=True, base=1.0),
                rules=[Rule(1.0, f"{labels[baseline]} = 1×", colour=TEXT)],
                legend=[(labels[n], colour(n)) for n in mine],
                source=source,
            )
        )
    return charts


def jobs_charts(data: dict[str, Any], source: str) -> list[Chart]:
    """No-op drain jobs/s, 10 ms jobs as a share of the ceiling, enqueue→start p99."""
    names, outlasts = list(data["targets"]), list(data.get("outlast", []))
    rows = jobs_report.summarize(data["runs"], names, outlasts)
    cfg = data["meta"]["config"]
    labels = {n: data["targets"][n]["label"] for n in names}
    fmt_args = {
        "producers": cfg["producers"],
        "jobs": cfg["jobs"],
        "rate": cfg["rate"],
        "batch": cfg.get("batch", 100),
    }
    runs = cfg.get("runs", len(data["runs"]))
    peers = [n for n in names if n not in outlasts]
    legend = [(labels[n], colour(n)) for n in outlasts] + [("peers", colour("peer"))]
    # (workload, first word of the metric) -> (the workload's title, summary row)
    found: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
    title = ""
    for metric, row in zip(jobs_report.METRICS, rows, strict=True):
        title = metric.row.format(**fmt_args) or title
        found[metric.workload, metric.name.split()[0]] = (title, row)

    def figure(workload: str, metric: str, target: str) -> float | None:
        value: float | None = found[workload, metric][1]["median"].get(target)
        return value

    def chart(
        name: str, key: tuple[str, str], what: str, describe: Callable[[str, float], str], **kw: Any
    ) -> Chart:
        """One bar per target for *key*'s medians; *describe* gives the value column."""
        bars = []
        for n in names:
            v = figure(*key, n)
            bars.append(Bar(labels[n], v, "—" if v is None else describe(n, v), colour(n)))
        return Chart(
            name=name,
            title=f"Jobs: {found[key][0]} — {what}",
            groups=[Group("", bars)],
            legend=legend,
            source=source,
            **kw,
        )

    def noop(n: str, v: float) -> str:
        best = found["noop", "jobs/s"][1]["ratio_best"].get(n)
        return f"{v:,.0f}/s" + ("" if best is None else f" · {best:.2f}× best peer")

    def share(n: str, v: float) -> str:
        per_s = figure("sleep10", "jobs/s", n)
        return f"{v:.1f} %" + ("" if per_s is None else f" · {per_s:,.0f}/s")

    def p99(n: str, v: float) -> str:
        p50 = figure("latency", "p50", n)
        return f"{v:,.2f} ms" + ("" if p50 is None else f" (p50 {p50:,.2f})")

    best_peer = [v for n in peers if (v := figure("noop", "jobs/s", n)) is not None]
    return [
        chart(
            "jobs-noop",
            ("noop", "jobs/s"),
            "jobs/s (↑)",
            noop,
            subtitle=[
                f"Median of {runs} runs; every peer on the same local Redis. × best peer: "
                "median of outlast ÷ that run's best peer."
            ],
            axis=Axis("jobs/s", _ms_tick),
            rules=[Rule(2 * max(best_peer), "2× the best peer's median (target: ≥ 2×)")]
            if best_peer and outlasts
            else [],
        ),
        chart(
            "jobs-sleep10",
            ("sleep10", "%"),
            "% of the 1,000/s ceiling (↑)",
            share,
            subtitle=[f"10 at once × 10 ms each: 1,000 jobs/s at most. Median of {runs} runs."],
            axis=Axis("% of 1,000 jobs/s", lambda v: f"{v:g} %"),
            rules=[Rule(95.0, "target: ≥ 95 %")],
        ),
        chart(
            "jobs-latency",
            ("latency", "p99"),
            "p99 ms (↓)",
            p99,
            subtitle=[
                "From the enqueue call to the task's first statement, over every job of the "
                f"open loop. Median of {runs} runs."
            ],
            axis=Axis("enqueue→start p99, ms (log scale)", _ms_tick, log=True),
            rules=[Rule(5.0, "target: p99 ≤ 5 ms")],
        ),
    ]


def relay_charts(data: dict[str, Any], source: str) -> list[Chart]:
    """Added p50/p99 latency (relay − direct) at each number of concurrent streams."""
    cfg, names, labels = data["meta"]["config"], list(data["names"]), data["labels"]
    levels = [int(n) for n in cfg["levels"]]
    rows = relay_report.latency_rows(data["runs"], levels, names)
    groups, rules = [], []
    for i, level in enumerate(levels):
        bars = []
        for name in names:
            for pct in ("p50", "p99"):
                row = next(r for r in rows if r["streams"] == level and r["pct"] == pct)
                added = row["added"].get(name)
                relayed = row["relay"].get(name)
                text = "—" if added is None else f"{added:+,.2f} ms"
                if relayed is not None:
                    text += f" (relayed {relayed:,.2f})"
                bars.append(Bar(f"{labels[name]} {pct}", added, text, colour(name, pct == "p50")))
        streams = "stream" if level == 1 else "streams"
        groups.append(Group(f"{level:,} concurrent {streams}, {cfg['rate']:g} events/s each", bars))
        if level == 100:
            rules.append(Rule(relay_report.TARGET_P99_ADDED_MS, "target: p99 added ≤ 2 ms", i))
    partial = f" (partial: {data['meta']['partial']})" if data["meta"].get("partial") else ""
    legend = [
        (f"{labels[n]} {pct}", colour(n, pct == "p50")) for n in names for pct in ("p50", "p99")
    ]
    return [
        Chart(
            name="relay-latency",
            title=f"Relay: latency added by outlast's relay per event{partial}",
            subtitle=[
                "Added = relay − direct read of the same fake upstream, within a run; median "
                f"of {cfg.get('runs', len(data['runs']))} runs. Value column: added (relayed)."
            ],
            groups=groups,
            axis=Axis("added latency, ms (log scale)", _ms_tick, log=True),
            rules=rules,
            legend=legend,
            source=source,
        )
    ]


def shutdown_charts(data: dict[str, Any], source: str) -> list[Chart]:
    """Seconds to exit after SIGTERM per target, with the jobs lost in each scenario."""
    names = list(data["targets"])
    summary = shutdown_report.summarize(data["runs"], names)
    if "sigterm" not in summary:
        return []
    labels = {n: data["targets"][n]["label"] for n in names}
    bars = []
    for n in names:
        s = summary["sigterm"][n]
        v = s["exit_seconds"]
        text = "—" if v is None else f"{v:.2f} s"
        lost = [str(sum(x for x in per[n]["lost"] if x is not None)) for per in summary.values()]
        text += " · lost " + " / ".join(lost)
        bars.append(Bar(labels[n], v, text, colour(n)))
    cfg = data["meta"]["config"]
    runs = cfg.get("runs", len(data["runs"]))
    outlasts = [n for n in names if n.startswith("outlast")]
    return [
        Chart(
            name="shutdown",
            title="Shutdown: seconds from SIGTERM until every worker process has exited (↓)",
            subtitle=[
                f"10 of {cfg['jobs']} jobs of {cfg['seconds']:g} s running at the signal; "
                f"median of {runs} runs.",
                f"Value column: seconds · jobs lost in all {runs} runs, "
                + " / ".join(shutdown_report.SCENARIO_NAMES.get(k, k) for k in summary)
                + " (target: 0).",
            ],
            groups=[Group("", bars)],
            axis=Axis("seconds", _ms_tick),
            legend=[(labels[n], colour(n)) for n in outlasts] + [("peers", colour("peer"))],
            source=source,
        )
    ]


BUILDERS: dict[str, Callable[[dict[str, Any], str], list[Chart]]] = {
    "streams": streams_charts,
    "jobs": jobs_charts,
    "relay": relay_charts,
    "shutdown": shutdown_charts,
}
CAPTIONS = {
    "streams-throughput": "Streams throughput, outlast ÷ the reference server",
    "streams-latency": "Streams latency, outlast ÷ the reference server",
    "jobs-noop": "Jobs: no-op drain, jobs/s per target",
    "jobs-sleep10": "Jobs: 10 ms jobs as a share of the 1,000/s ceiling",
    "jobs-latency": "Jobs: enqueue→start p99 per target",
    "relay-latency": "Relay: added latency at 1, 100 and 1,000 streams",
    "shutdown": "Shutdown: seconds to exit after SIGTERM, jobs lost",
}


# ----------------------------------------------------------------------------- input, output


def _kind(path: Path, data: dict[str, Any]) -> str | None:
    prefix = path.name.split("-", 1)[0]
    if prefix in BENCHES:
        return prefix
    if "baseline" in data:
        return "streams"
    if "outlast" in data:
        return "jobs"
    if "names" in data and "labels" in data:
        return "relay"
    if data.get("runs") and set(data["runs"][0]) <= set(shutdown_report.SCENARIO_NAMES):
        return "shutdown"
    return None


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def choose(files: Sequence[Path], results: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """benchmark -> (file, its results): the files given, else the newest of each in *results*
    (the date is in the name; a streams dry run and a relay run without the relay workloads
    are passed over)."""
    chosen: dict[str, tuple[Path, dict[str, Any]]] = {}
    if files:
        for path in files:
            data = _load(path)
            kind = _kind(path, data)
            if kind is None:
                raise SystemExit(f"{path}: not the raw results of a benchmark I know")
            chosen[kind] = (path, data)
        return chosen
    for bench in BENCHES:
        for path in sorted(results.glob(f"{bench}-*.json"), reverse=True):
            data = _load(path)
            meta = data.get("meta", {})
            # A dry run, or a relay run of the proxy workload alone (--no-relay): nothing to draw.
            if meta.get("dry_run") or meta.get("config", {}).get("relay") is False:
                continue
            chosen[bench] = (path, data)
            break
    return chosen


def _shown(path: Path) -> str:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def render_section(charts: list[Chart], img: Path, doc: Path) -> str:
    rel = Path(os.path.relpath(img, doc.parent)).as_posix()
    lines = [
        f"<!-- bench:{SECTION} -->",
        "## Plots",
        "",
        "The newest results of each benchmark below, drawn as charts: the same medians and "
        "ratios as the tables (each benchmark's own summary code), redrawn from the raw results "
        f"by `{COMMAND}` (after a benchmark has run, or with results files as arguments). "
        "The targets are the red dashed lines. How each figure is measured: "
        "[`bench/README.md`](../bench/README.md).",
        "",
    ]
    for chart in charts:
        alt = CAPTIONS.get(chart.name, chart.title)
        lines += [
            f"![{alt}]({rel}/{chart.name}.svg)",
            "",
            f"*{alt} — drawn from `{chart.source}` by `{COMMAND}`.*",
            "",
        ]
    lines.append(f"<!-- /bench:{SECTION} -->")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="raw results files (default: newest)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to look for them")
    parser.add_argument("--img", type=Path, default=IMG, help="where the SVGs go (docs/img)")
    parser.add_argument("--out", default=str(DOC), help="markdown file to update, or 'none'")
    args = parser.parse_args(argv)

    chosen = choose(args.files, args.results)
    if not chosen:
        print(f"no results in {args.results}", file=sys.stderr)
        return 1
    charts: list[Chart] = []
    for bench in BENCHES:
        if bench not in chosen:
            continue
        path, data = chosen[bench]
        made = [c for c in BUILDERS[bench](data, _shown(path)) if any(g.bars for g in c.groups)]
        if not made:
            print(f"{path}: nothing to draw", file=sys.stderr)
        charts += made
    args.img.mkdir(parents=True, exist_ok=True)
    for chart in charts:
        out = args.img / f"{chart.name}.svg"
        out.write_text(render_svg(chart), encoding="utf-8")
        print(f"wrote {_shown(out)} (from {chart.source})")
    if args.out != "none" and charts:
        doc = Path(args.out)
        # Before the first benchmark's section (after the intro), when it is not there yet.
        section = render_section(charts, args.img, doc)
        common.write_section(doc, SECTION, section, before_others=True)
        print(f"wrote the {SECTION} section of {_shown(doc)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

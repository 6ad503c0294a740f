"""CPU per append: the reference server, the floor of Python HTTP, and outlast.

The appends figures of ``python -m bench.streams`` are throughput on 2 cores that the server
shares with ``wrk``; this benchmark says where the CPU goes. The same closed-loop workload (16
``wrk`` connections POSTing a 1 KiB JSON message, a stream per writer, then one shared stream)
runs against each target in turn, every run in a new order, and each figure is the server's CPU
per append (its whole process tree, plus its redis-server): CPU seconds over appends.

- ``ref``: the protocol's reference Node server, in memory.
- ``floor``: uvicorn (httptools, uvloop) and an ASGI app that reads the body and answers ``204``,
  storing nothing (:mod:`bench.streams.floor_app`): what any Python server on uvicorn pays.
- ``outlast-sqlite``, ``outlast-redis`` and their ``-workers`` variants (``--workers 2``).

    python -m bench.streams.floor [--runs 3] [--duration 5] [--targets ref,floor,...]
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from bench import common
from bench.streams import targets, workloads
from bench.streams.targets import TargetSpec

SECTION = "streams-floor"
DEFAULT_TARGETS = [
    "ref",
    "floor",
    "outlast-sqlite",
    "outlast-redis",
    "outlast-sqlite-workers",
    "outlast-redis-workers",
]
MODES = {"per-writer": "a stream per writer", "shared": "one shared stream"}


def floor_spec() -> TargetSpec:
    def argv(port: int, workdir: Path, store: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(targets.REPO),
            "bench.streams.floor_app:app",
            "--host",
            targets.HOST,
            "--port",
            str(port),
            "--http",
            "httptools",
            "--loop",
            "uvloop",
            "--no-access-log",
            "--log-level",
            "warning",
        ]

    return TargetSpec("floor", "uvicorn, storing nothing (the floor)", "floor", argv)


def all_specs(outlast_cmd: str | None) -> dict[str, TargetSpec]:
    return {**targets.specs(outlast_cmd), "floor": floor_spec()}


def measure(spec: TargetSpec, run: int, cfg: workloads.Config) -> dict[str, Any]:
    server = targets.start(spec)
    try:
        log = server.workdir / "wrk.log"
        result: dict[str, Any] = {"version": server.version}
        for mode in MODES:
            r = workloads.append(server, run, mode, cfg, lambda s: None, log)
            r["cpu_us_per_append"] = r["server_cpu"] / r["appends_per_s"] * 1e6
            result[mode] = r
        return result
    finally:
        targets.stop(server)


def summarise(runs: list[dict[str, dict[str, Any]]], names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        out[name] = {}
        for mode in MODES:
            rows = [r[name][mode] for r in runs if name in r and mode in r[name]]
            if not rows:
                continue
            out[name][mode] = {
                key: statistics.median(row[key] for row in rows)
                for key in ("appends_per_s", "server_cpu", "client_cpu", "cpu_us_per_append")
            }
    return out


def render(doc: dict[str, Any]) -> str:
    summary = doc["summary"]
    names = [n for n in doc["targets"] if n in summary]
    labels = doc["labels"]
    lines = [
        f"<!-- bench:{SECTION} -->",
        "### Appends: CPU per append, against the floor of Python HTTP",
        "",
        "Written by `python -m bench.streams.floor` (see its docstring): the appends workload of "
        "the table above against each target in turn, each run in a new order; the server's CPU "
        "(process tree, plus its redis-server) per append, medians.",
        "",
        f"- **Command:** `{doc['command']}`, started {doc['started']} UTC; load average at "
        f"start {doc['load']}.",
        f"- **Runs:** {doc['runs']} × {doc['duration']:g} s per workload and target.",
        f"- **Raw results:** `{doc['results']}`",
        "",
    ]
    ref = summary.get("ref", {})
    floor = summary.get("floor", {})
    header = [
        "Target",
        "Workload",
        "appends/s",
        "server CPU",
        "CPU µs/append",
        "× ref",
        "− floor µs",
    ]
    rows = []
    for name in names:
        for mode, label in MODES.items():
            r = summary[name].get(mode)
            if r is None:
                continue
            us = r["cpu_us_per_append"]
            base = ref.get(mode, {}).get("cpu_us_per_append")
            low = floor.get(mode, {}).get("cpu_us_per_append")
            rows.append(
                [
                    labels[name],
                    label,
                    f"{r['appends_per_s']:,.0f}",
                    f"{r['server_cpu'] * 100:.0f} %",
                    f"{us:.1f}",
                    common.ratio(us / base if base else None),
                    "—" if low is None or name == "floor" else f"{us - low:+.1f}",
                ]
            )
    lines += common.table(header, rows, right_from=2)
    lines += ["", f"<!-- /bench:{SECTION} -->", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = common.parser("bench.streams.floor", __doc__)
    common.add_runs(p)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per timed phase")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of appends before each")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS))
    common.add_outputs(p, section=SECTION, results="floor-<date>.json")
    p.add_argument(
        "--settle",
        type=float,
        default=30.0,
        help="seconds to wait, at most, for a quiet machine before each target",
    )
    common.add_outlast_cmd(p)
    args = p.parse_args(argv)
    specs = all_specs(args.outlast_cmd)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in specs]
    if unknown:
        p.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(specs)}")
    cfg = workloads.Config(duration=args.duration, warmup=args.warmup)
    started = dt.datetime.now(dt.UTC)
    load = common.loadavg()
    runs: list[dict[str, dict[str, Any]]] = []
    for run in range(args.runs):
        # Each run in another order, so that no target always follows the same one.
        order = names[run % len(names) :] + names[: run % len(names)]
        results: dict[str, dict[str, Any]] = {}
        for name in order:
            common.settle(args.settle, lambda msg: print(f"  {msg}", file=sys.stderr))
            results[name] = measure(specs[name], run, cfg)
            line = ", ".join(
                f"{mode} {results[name][mode]['appends_per_s']:,.0f}/s "
                f"{results[name][mode]['cpu_us_per_append']:.1f} µs"
                for mode in MODES
            )
            print(f"run {run + 1}/{args.runs} {name}: {line}", file=sys.stderr)
        runs.append(results)
    path = common.results_path(args.json_path, "floor", started)
    doc = {
        "command": common.command_line("bench.streams.floor", argv),
        "started": f"{started:%Y-%m-%d %H:%M}",
        "load": load,
        "machine": common.machine_info(),
        "runs": args.runs,
        "duration": args.duration,
        "targets": names,
        "labels": {n: specs[n].label for n in names},
        "raw": runs,
        "summary": summarise(runs, names),
        "results": common.repo_relative(path),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    section = render(doc)
    print(section)
    written = common.publish(args.out, SECTION, section)
    if written is not None:
        print(f"wrote {written}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

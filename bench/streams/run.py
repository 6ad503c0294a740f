"""Side-by-side streams benchmark: outlast (SQLite, Redis) against the reference Node server.

    python -m bench.streams [--runs 3] [--duration 10] [--redis]
                            [--targets ref,outlast-sqlite,outlast-redis] [--out docs/benchmarks.md]

In one run it starts every target itself on a free 127.0.0.1 port, runs the same workloads
against each (appends from 16 writers, catch-up read, SSE fan-out), stops it, and writes the
medians and ratios into docs/benchmarks.md and the raw results into bench/results/. Every server
it started is killed on the way out, Ctrl-C and SIGTERM included. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/streams/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import common
from bench.common import Interrupted, machine_info, on_sigterm, settle
from bench.streams import report, targets, workloads
from bench.streams.targets import Server
from bench.streams.workloads import Config
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

DEFAULT_TARGETS = ["ref", "outlast-sqlite"]
BASELINE = "ref"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser("bench.streams", __doc__)
    common.add_runs(p, "runs per target; figures are medians")
    p.add_argument(
        "--duration", type=float, default=10.0, help="seconds of each timed phase (default 10)"
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="seconds of untimed appends before each timed append phase",
    )
    p.add_argument(
        "--targets",
        help="comma-separated: ref, ref-file, outlast-sqlite, outlast-redis, "
        "outlast-sqlite-workers, outlast-redis-workers (default ref,outlast-sqlite, plus "
        "outlast-redis with --redis)",
    )
    p.add_argument(
        "--outlast-workers",
        type=int,
        default=2,
        help="processes of the outlast-*-workers targets (serve --workers N; default 2)",
    )
    p.add_argument(
        "--redis",
        action="store_true",
        help="add outlast-redis (needs redis-server on PATH; skipped if missing)",
    )
    common.add_outputs(p, section="Streams", results="streams-<date>.json")
    p.add_argument("--catchup-mb", type=int, default=64, help="MiB in the catch-up stream")
    p.add_argument("--sse-readers", type=int, default=100)
    p.add_argument(
        "--sse-rate",
        type=float,
        default=50.0,
        help="appends/s of the steady SSE writer (default 50)",
    )
    p.add_argument(
        "--no-sse-max", action="store_true", help="skip the SSE fan-out with an unthrottled writer"
    )
    common.add_outlast_cmd(p)
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="run the reference server in the outlast slots (harness test)",
    )
    common.add_settle_keep(p, settle=30.0)
    args = p.parse_args(argv)
    if args.runs < 1 or args.duration < 1 or args.sse_readers < 1 or args.warmup < 0:
        p.error("--runs, --sse-readers and --duration (seconds) must be at least 1")
    # wrk counts whole seconds: keep every phase the same length for every workload.
    args.duration, args.warmup = float(round(args.duration)), float(round(args.warmup))
    return args


def choose_targets(args: argparse.Namespace, console: Console) -> list[str]:
    if args.targets:
        names = [t.strip() for t in args.targets.split(",") if t.strip()]
    else:
        names = list(DEFAULT_TARGETS)
        if args.redis:
            if shutil.which("redis-server") or args.dry_run:
                names.append("outlast-redis")
            else:
                console.print("[yellow]--redis: no redis-server on PATH, outlast-redis skipped")
    known = targets.specs(dry_run=args.dry_run, workers=args.outlast_workers)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown target(s): {', '.join(unknown)}; known: {', '.join(known)}")
    return names


def command_line(argv: list[str] | None) -> str:
    if __package__ in (None, ""):
        args = sys.argv[1:] if argv is None else argv
        return shlex.join(["python", "bench/streams/run.py", *args])
    return common.command_line("bench.streams", argv)


def workload_plan(cfg: Config) -> list[tuple[str, str, float]]:
    """(key, description, expected seconds) of each workload, in the order they run."""
    d, w = cfg.duration, cfg.warmup
    plan = [
        ("append-own", "append, 16 writers, a stream each", d + w),
        ("append-shared", "append, 16 writers, one stream", d + w),
        ("catchup", f"catch-up read of {cfg.catchup_mb} MiB", d + 5),
        ("sse", f"SSE 1 → {cfg.sse_readers}, {cfg.sse_rate:g} appends/s", d + 3),
    ]
    if cfg.sse_max:
        plan.append(("sse-max", f"SSE 1 → {cfg.sse_readers}, unthrottled writer", d + 6))
    return plan


def run_workload(
    key: str, server: Server, run: int, cfg: Config, tick: workloads.Tick, log: Path
) -> dict[str, Any]:
    if key == "append-own":
        return workloads.append(server, run, "per-writer", cfg, tick, log)
    if key == "append-shared":
        return workloads.append(server, run, "shared", cfg, tick, log)
    if key == "catchup":
        return workloads.catchup(server, run, cfg, tick, log)
    if key == "sse":
        return workloads.sse(server, run, cfg, cfg.sse_rate, tick, log)
    if key == "sse-max":
        return workloads.sse(server, run, cfg, 0.0, tick, log)
    raise ValueError(key)


def headline(key: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return f"[red]failed: {r['error'].splitlines()[0][:120]}"
    cpu = f"(server {r['server_cpu'] * 100:.0f} %, loadgen {r['client_cpu'] * 100:.0f} % CPU)"
    ok = "" if r.get("ok", True) else " [yellow]⚠ see results"
    if key.startswith("append"):
        return f"{r['appends_per_s']:,.0f} appends/s, p99 {r['latency_ms']['p99']:.2f} ms {cpu}{ok}"
    if key == "catchup":
        return f"{r['mb_per_s']:,.1f} MB/s, {r['requests_per_read']:.0f} requests/read {cpu}{ok}"
    lat = r["latency_ms"]
    return (
        f"{r['events_per_s']:,.0f} events/s ({r['appends_per_s']:,.0f} appends/s), "
        f"p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms {cpu}{ok}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    names = choose_targets(args, console)
    specs = targets.specs(args.outlast_cmd, args.dry_run, args.outlast_workers)
    cfg = Config(
        duration=args.duration,
        warmup=args.warmup,
        catchup_mb=args.catchup_mb,
        sse_readers=args.sse_readers,
        sse_rate=args.sse_rate,
        sse_max=not args.no_sse_max,
    )
    plan = workload_plan(cfg)
    started_at = dt.datetime.now(dt.UTC)
    json_path = common.results_path(args.json_path, "streams", started_at)
    logdir = Path(tempfile.mkdtemp(prefix="outlast-bench-streams-"))
    meta: dict[str, Any] = {
        "command": command_line(argv),
        "date": started_at.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "config": {
            "runs": args.runs,
            "duration": cfg.duration,
            "warmup": cfg.warmup,
            "catchup_mb": cfg.catchup_mb,
            "sse_readers": cfg.sse_readers,
            "sse_rate": cfg.sse_rate,
            "sse_max": cfg.sse_max,
            "writers": workloads.WRITERS,
            "message_bytes": workloads.MESSAGE_SIZE,
        },
        "dry_run": args.dry_run,
        "json": common.repo_relative(json_path),
    }
    target_info: dict[str, dict[str, Any]] = {
        n: {"label": specs[n].label, "version": "", "command": ""} for n in names
    }
    runs: list[dict[str, dict[str, Any]]] = []
    failed = False
    signal.signal(signal.SIGTERM, on_sigterm)
    console.print(
        f"[bold]streams benchmark[/]: {', '.join(names)} · {args.runs} run(s) · "
        f"{cfg.duration:g} s per phase · logs in {logdir}"
    )
    total = args.runs * len(names) * (sum(s for _, _, s in plan) + 5)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    servers: dict[str, Server] = {}
    try:
        with progress:
            overall = progress.add_task("[bold]all", total=total)
            done = 0.0
            for run in range(1, args.runs + 1):
                results: dict[str, dict[str, Any]] = {key: {} for key, _, _ in plan}
                runs.append(results)
                # Fresh servers every run, all started together and measured in turn, one
                # workload at a time: a burst of other work on the machine then hits every
                # target's figures of that run alike instead of one target's.
                for name in names:
                    step = progress.add_task(f"run {run}/{args.runs} · starting {name}", total=None)
                    try:
                        try:
                            servers[name] = targets.start(specs[name], keep=args.keep)
                        except RuntimeError:  # once more: a first start can trip on a cold disk
                            time.sleep(2)
                            servers[name] = targets.start(specs[name], keep=args.keep)
                        target_info[name].update(
                            version=servers[name].version, command=shlex.join(servers[name].command)
                        )
                    except Exception as exc:  # this target could not start: record, go on
                        failed = True
                        msg = f"could not start: {exc}"
                        progress.console.print(f"[red]run {run} · {name}: {msg}", soft_wrap=True)
                        for key, _, _ in plan:
                            results[key][name] = {"error": msg}
                    progress.remove_task(step)
                    done += 5
                    progress.update(overall, completed=done)
                for index, (key, desc, expected) in enumerate(plan):
                    # Rotate the order so that no target always goes first (or last).
                    shift = (run - 1 + index) % len(names)
                    for name in names[shift:] + names[:shift]:
                        base = done
                        done += expected
                        server = servers.get(name)
                        if server is None:
                            progress.update(overall, completed=done)
                            continue
                        step = progress.add_task(
                            f"run {run}/{args.runs} · {name} · {desc}", total=expected
                        )

                        def tick(
                            s: float,
                            base: float = base,
                            expected: float = expected,
                            step: Any = step,
                        ) -> None:
                            progress.update(step, completed=min(s, expected))
                            progress.update(overall, completed=base + min(s, expected))

                        where = f"run {run}/{args.runs} · {name}"

                        def show(text: str, step: Any = step, where: str = where) -> None:
                            progress.update(step, description=f"{where} · {text}")

                        busy, waited = settle(args.settle, show)
                        show(desc)
                        try:
                            result = run_workload(
                                key, server, run, cfg, tick, logdir / f"{name}.log"
                            )
                        except Exception as exc:  # one failed workload: record, go on
                            failed = True
                            result = {
                                "error": f"{type(exc).__name__}: {exc}",
                                "traceback": traceback.format_exc(),
                            }
                            if not server.alive():
                                result["error"] += f"\nserver died:\n{server.log_tail()}"
                        result["machine_busy_before"] = busy
                        result["settle_seconds"] = waited
                        results[key][name] = result
                        progress.remove_task(step)
                        progress.update(overall, completed=done)
                        progress.console.print(
                            f"run {run} · {name:15} · {key:13} · {headline(key, result)}",
                            soft_wrap=True,
                        )
                        if not server.alive():
                            targets.stop(servers.pop(name), keep=True)
                            progress.console.print(
                                f"[red]{name} died; its log is kept in {server.workdir}",
                                soft_wrap=True,
                            )
                while servers:
                    targets.stop(servers.popitem()[1], keep=args.keep)
    except (KeyboardInterrupt, Interrupted):
        console.print("[yellow]interrupted: servers stopped, nothing written")
        if not args.keep:
            shutil.rmtree(logdir, ignore_errors=True)
        return 130
    finally:
        while servers:  # Ctrl-C, SIGTERM or an error: never leave a server behind
            targets.stop(servers.popitem()[1], keep=args.keep)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    baseline = BASELINE if BASELINE in names else None
    data = {
        "meta": meta,
        "baseline": baseline,
        "targets": target_info,
        "runs": runs,
        "summary": report.summarize(runs, names, baseline),
        "cpu": report.cpu_summary(runs, names),
        "problems": report.problems(runs),
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    section = report.render(data)
    print()
    print(section, flush=True)
    empty = [
        n
        for n in names
        if not any("error" not in r for run in runs for per in run.values() if (r := per.get(n)))
    ]
    if empty:
        console.print(
            f"[red]no result at all for {', '.join(empty)}: "
            f"{'docs left as they were; ' if (args.out or '').lower() != 'none' else ''}"
            f"see {json_path} and the logs"
        )
    elif out := common.publish(args.out, report.SECTION, section):
        console.print(f"wrote {out} (section 'Streams') and {json_path}")
    else:
        console.print(f"wrote {json_path}")
    if failed or args.keep:
        console.print(f"logs kept in {logdir}")
    else:
        shutil.rmtree(logdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

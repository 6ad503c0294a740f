"""Side-by-side jobs benchmark: outlast against Dramatiq, Celery, RQ and arq on one local Redis.

    python -m bench.jobs [--runs 3] [--duration 10] [--jobs 10000]
                         [--targets outlast-sqlite,outlast-redis,celery,dramatiq,rq,arq,arq-fast]

Each run starts its own redis-server on a free 127.0.0.1 port; then, workload by workload
(enqueue/s, no-op drain, 10 ms jobs at concurrency 10, enqueue→start at 100 jobs/s), each target
in turn gets a fresh Redis database (and temp dir) and starts its workers for that workload only,
so no idle worker of another target polls Redis meanwhile. Medians and ratios go into
docs/benchmarks.md, the raw results into bench/results/. Every process it started is stopped on
the way out, Ctrl-C and SIGTERM included. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/jobs/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import common
from bench.common import Interrupted, machine_info, median, on_sigterm, settle
from bench.jobs import report, targets, workloads
from bench.jobs.targets import RedisServer, Slot
from bench.jobs.workloads import Config
from bench.streams.targets import REPO
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TimeElapsedColumn

PEERS = ["celery", "dramatiq", "rq", "arq", "arq-fast"]
WORKLOADS = ["enqueue", "enqueue_batch", "noop", "sleep10", "latency", "noop_keys"]
NOISY = 0.25  # cores of other processes (median) above which the report calls the run noisy


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser("bench.jobs", __doc__)
    common.add_runs(p)
    p.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds of the enqueue phase and of the open loop (default 10)",
    )
    p.add_argument("--jobs", type=int, default=10_000, help="jobs in each drain (default 10000)")
    p.add_argument(
        "--cap",
        type=float,
        default=30.0,
        help="seconds a drain is measured at most; a slower target is measured over that "
        "time (default 30)",
    )
    p.add_argument(
        "--producers", type=int, default=16, help="concurrent producers when enqueueing (16)"
    )
    p.add_argument(
        "--batch", type=int, default=100, help="jobs per call of enqueue_batch (100; ≤ 1000)"
    )
    p.add_argument("--rate", type=float, default=100.0, help="jobs/s of the open loop (100)")
    p.add_argument(
        "--targets",
        help="comma-separated, in this order by default: outlast-sqlite, outlast-redis (when "
        "outlast has a Redis store), " + ", ".join(PEERS),
    )
    p.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"subset of {','.join(WORKLOADS)}"
    )
    common.add_outlast_cmd(p)
    p.add_argument(
        "--outlast-workers",
        type=int,
        default=2,
        help="processes of the outlast-sqlite-workers and outlast-redis-workers targets "
        "(serve --workers N; default 2)",
    )
    common.add_outputs(p, section="Jobs", results="jobs-<date>.json")
    common.add_settle_keep(p, settle=30.0)
    common.add_render(p)
    args = p.parse_args(argv)
    if args.runs < 1 or args.duration < 1 or args.jobs < 100 or args.producers < 1:
        p.error("--runs ≥ 1, --duration ≥ 1 s, --jobs ≥ 100 and --producers ≥ 1")
    if not 2 <= args.batch <= 1000:
        p.error("--batch from 2 to 1000")
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if unknown := [w for w in args.workloads if w not in WORKLOADS]:
        p.error(f"unknown workload(s): {', '.join(unknown)}")
    return args


def choose_targets(args: argparse.Namespace, console: Console) -> list[str]:
    known = targets.specs()
    if args.targets:
        names = [t.strip() for t in args.targets.split(",") if t.strip()]
        if unknown := [n for n in names if n not in known]:
            raise SystemExit(f"unknown target(s): {', '.join(unknown)}; known: {', '.join(known)}")
    else:
        names = ["outlast-sqlite", "outlast-redis", *PEERS]
    if not targets.outlast_redis_available():
        for name in [n for n in names if n.startswith("outlast-redis")]:
            console.print(
                f"[yellow]outlast has no Redis store (outlast.store.redis): {name} skipped"
            )
            names.remove(name)
    return names


def expected_seconds(key: str, cfg: Config) -> float:
    """A rough length of one measurement, for the progress bars."""
    return {
        "enqueue": cfg.warmup + cfg.duration + 3,
        "enqueue_batch": cfg.warmup + cfg.duration + 3,
        "noop": min(cfg.cap, cfg.jobs / 1500) + cfg.jobs / 3000 + 3,
        "sleep10": min(cfg.cap, cfg.jobs / 800) + cfg.jobs / 3000 + 3,
        "latency": cfg.duration + 3,
        "noop_keys": min(cfg.cap, cfg.jobs / 1500) + cfg.jobs / 3000 + 3,
    }[key]


def headline(key: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return f"[red]failed: {r['error'].splitlines()[0][:140]}"
    cpu = (
        f"(target {r['server_cpu'] * 100:.0f} %, loadgen {r['client_cpu'] * 100:.0f} %, "
        f"others {r['other_cpu'] * 100:.0f} % CPU)"
    )
    ok = "" if r.get("ok", True) else " [yellow]⚠ see results"
    if key in ("enqueue", "enqueue_batch"):
        return f"{r['enqueue_per_s']:,.0f} enqueues/s {cpu}{ok}"
    if key in ("noop", "noop_keys"):
        return f"{r['jobs_per_s']:,.0f} jobs/s {cpu}{ok}"
    if key == "sleep10":
        return f"{r['jobs_per_s']:,.0f} jobs/s = {r['ceiling_share'] * 100:.1f} % {cpu}{ok}"
    lat = r["latency_ms"]
    return f"p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms {cpu}{ok}"


def noise(runs: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    others = [
        r["other_cpu"]
        for run in runs
        for per in run.values()
        for r in per.values()
        if "other_cpu" in r
    ]
    mid = median(others) or 0.0
    out: dict[str, Any] = {
        "loadavg_end": common.loadavg(),
        "other_cpu_median": mid,
        "other_cpu_max": max(others, default=0.0),
    }
    if mid > NOISY:
        out["warning"] = (
            f"other processes used {mid * 100:.0f} % of a core (median over the measurements, "
            f"up to {out['other_cpu_max'] * 100:.0f} %) while these figures were taken, on a "
            "2-core machine: every target lost CPU to them, unevenly. Read the figures as "
            "indicative; ratios within a run are the steadier part."
        )
    return out


def measure(
    key: str,
    slot: Slot,
    cfg: Config,
    progress: Progress,
    where: str,
    settle_max: float,
    log: Path,
) -> dict[str, Any]:
    expected = expected_seconds(key, cfg)
    step = progress.add_task(where, total=expected)

    def show(text: str) -> None:
        progress.update(step, description=f"{where} · {text}")

    def tick(seconds: float) -> None:
        progress.update(step, completed=min(seconds, expected))

    busy, waited = settle(settle_max, show)
    show(report.WORKLOAD_NAMES[key])
    try:
        result = workloads.run_workload(key, slot, cfg, tick, log)
    except Exception as exc:  # one failed measurement: record it, go on
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        if tail := slot.log_tail():
            result["worker_log"] = tail
    finally:
        progress.remove_task(step)
    result["machine_busy_before"] = busy
    result["settle_seconds"] = waited
    return result


def write_out(args: argparse.Namespace, console: Console, section: str, json_path: Path) -> None:
    if out := common.publish(args.out, report.SECTION, section):
        console.print(f"wrote {out} (section 'Jobs') from {json_path}")
    else:
        console.print(f"wrote {json_path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    if args.render:
        path = Path(args.render)
        write_out(args, console, report.render(json.loads(path.read_text())), path)
        return 0
    names = choose_targets(args, console)
    specs = targets.specs(args.outlast_cmd, args.outlast_workers)
    outlasts = [n for n in names if specs[n].is_outlast]
    cfg = Config(
        duration=args.duration,
        jobs=args.jobs,
        producers=args.producers,
        batch=args.batch,
        rate=args.rate,
        cap=args.cap,
    )
    started_at = dt.datetime.now(dt.UTC)
    json_path = common.results_path(args.json_path, "jobs", started_at).absolute()
    logdir = Path(tempfile.mkdtemp(prefix="outlast-bench-jobs-"))
    machine = machine_info()
    meta: dict[str, Any] = {
        "command": common.command_line("bench.jobs", argv),
        "date": started_at.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine,
        "config": {"runs": args.runs, "workloads": args.workloads, **cfg.__dict__},
        "json": os.path.relpath(json_path, REPO)
        if json_path.is_relative_to(REPO)
        else str(json_path),
    }
    target_info = {
        n: {
            "label": specs[n].label,
            "version": targets.version_of(specs[n]),
            "command": "",
        }
        for n in names
    }
    runs: list[dict[str, dict[str, Any]]] = []
    failed = False
    signal.signal(signal.SIGTERM, on_sigterm)
    console.print(
        f"[bold]jobs benchmark[/]: {', '.join(names)} · {args.runs} run(s) · "
        f"workloads {', '.join(args.workloads)} · logs in {logdir}"
    )
    per_run = sum(expected_seconds(k, cfg) + 2 for k in args.workloads) * len(names)
    progress = Progress(
        SpinnerColumn(), *Progress.get_default_columns()[:3], TimeElapsedColumn(), console=console
    )
    redis: RedisServer | None = None
    slot: Slot | None = None
    try:
        with progress:
            overall = progress.add_task("[bold]all", total=per_run * args.runs)
            for run in range(1, args.runs + 1):
                results: dict[str, dict[str, Any]] = {k: {} for k in args.workloads}
                runs.append(results)
                redis = RedisServer.start()
                machine["redis_version"] = redis.version()
                for index, key in enumerate(args.workloads):
                    # Rotate the order so that no target always goes first (or last).
                    shift = (run - 1 + index) % len(names)
                    for name in names[shift:] + names[:shift]:
                        where = f"run {run}/{args.runs} · {name} · {report.WORKLOAD_NAMES[key]}"
                        slot = targets.open_slot(specs[name], redis, names.index(name) + 1, run)
                        result = measure(
                            key, slot, cfg, progress, where, args.settle, logdir / f"{name}.log"
                        )
                        if slot.commands and not target_info[name]["command"]:
                            target_info[name]["command"] = " ; ".join(
                                dict.fromkeys(shlex.join(a) for a in slot.commands)
                            )
                        # A failed measurement keeps its slot's dir: the worker's log is there.
                        targets.close_slot(slot, keep=args.keep or "error" in result)
                        slot = None
                        failed |= "error" in result
                        results[key][name] = result
                        progress.advance(overall, expected_seconds(key, cfg) + 2)
                        progress.console.print(
                            f"run {run} · {name:14} · {key:8} · {headline(key, result)}",
                            soft_wrap=True,
                        )
                redis.stop(keep=args.keep)
                redis = None
    except (KeyboardInterrupt, Interrupted):
        console.print("[yellow]interrupted: everything stopped, nothing written")
        if not args.keep:
            shutil.rmtree(logdir, ignore_errors=True)
        return 130
    finally:
        if slot is not None:  # Ctrl-C, SIGTERM or an error: never leave a process behind
            targets.close_slot(slot, keep=args.keep)
        if redis is not None:
            redis.stop(keep=args.keep)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    data = {
        "meta": meta,
        "outlast": outlasts,
        "targets": target_info,
        "runs": runs,
        "summary": report.summarize(runs, names, outlasts),
        "cpu": report.cpu_summary(runs, names),
        "noise": noise(runs),
        "problems": report.problems(runs),
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    section = report.render(data)
    console.print("\n" + section, markup=False, highlight=False, soft_wrap=True)
    write_out(args, console, section, json_path)
    if failed:
        console.print(f"[red]some measurements failed: see {json_path} and the logs in {logdir}")
    elif not args.keep:
        shutil.rmtree(logdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Shutdown benchmark: outlast's and its peers' workers stopped with jobs running, in one run.

    python -m bench.shutdown [--runs 3] [--jobs 30] [--seconds 2]
                             [--targets outlast-sqlite,outlast-redis,celery,dramatiq,rq,arq]

Each run starts its own redis-server on a free 127.0.0.1 port; then, scenario by scenario
(SIGTERM, then SIGKILL), each target in turn gets a fresh Redis database and temp dir, starts its
workers (10 jobs at once), gets ``--jobs`` jobs of ``--seconds`` each, and is signalled once 10
are running; then it is started again and every job gets ``--cap`` seconds to finish. Medians go
into docs/benchmarks.md, the raw results into bench/results/. Every process it started is
stopped on the way out, Ctrl-C and SIGTERM included. See bench/README.md.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/shutdown/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import common
from bench.common import Interrupted, machine_info, on_sigterm, settle
from bench.jobs import targets
from bench.jobs.run import choose_targets
from bench.jobs.targets import BIN, CONCURRENCY, RedisServer, Slot, TargetSpec
from bench.shutdown import report, scenario
from bench.shutdown.scenario import Config
from bench.streams.targets import HOST
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TimeElapsedColumn

DEFAULT_TARGETS = ["outlast-sqlite", "outlast-redis", "celery", "dramatiq", "rq", "arq"]
SCENARIOS = list(scenario.SIGNALS)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser("bench.shutdown", __doc__)
    common.add_runs(p)
    p.add_argument("--jobs", type=int, default=30, help="jobs enqueued per scenario (30)")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds each job takes (2)")
    p.add_argument(
        "--cap",
        type=float,
        default=60.0,
        help="seconds after the restart for every job to finish; later counts as lost (60)",
    )
    p.add_argument(
        "--exit-cap",
        type=float,
        default=60.0,
        help="seconds the workers get to exit after SIGTERM before they are killed (60)",
    )
    p.add_argument(
        "--targets",
        help="comma-separated (default: " + ",".join(DEFAULT_TARGETS) + "; arq-fast on request)",
    )
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="subset of sigterm,sigkill")
    common.add_outputs(p, section="Shutdown", results="shutdown-<date>.json")
    common.add_settle_keep(p, settle=15.0)
    common.add_render(p)
    args = p.parse_args(argv)
    if args.runs < 1 or args.jobs < CONCURRENCY or args.seconds <= 0 or args.cap <= 0:
        p.error(f"--runs ≥ 1, --jobs ≥ {CONCURRENCY}, --seconds > 0, --cap > 0")
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if unknown := [s for s in args.scenarios if s not in SCENARIOS]:
        p.error(f"unknown scenario(s): {', '.join(unknown)}")
    # The jobs benchmark's choice of targets (it drops outlast-redis without a Redis store).
    args.targets = args.targets or ",".join(DEFAULT_TARGETS)
    return args


def shown_command(slot: Slot) -> str:
    """The workers' command line as the report prints it: no temp dir, port or venv path."""
    first = slot.spec.workers(slot)
    text = shlex.join(first[0])
    for old, new in (
        (str(slot.workdir), "<tmp>"),
        (f"{HOST}:{slot.redis.port}/", f"{HOST}:<port>/"),
        (f"--port {slot.port}", "--port <port>"),
        (sys.executable, "python"),
        (f"{BIN}/", ""),
    ):
        text = text.replace(old, new)
    return text + (f" (×{len(first)} processes)" if len(first) > 1 else "")


def expected_seconds(cfg: Config) -> float:
    """A rough length of one measurement, for the progress bar."""
    return 3 + cfg.seconds * 2 + cfg.jobs / CONCURRENCY * cfg.seconds


def headline(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"[red]failed: {r['error'].splitlines()[0][:140]}"
    drain = (
        f"all done {r['drain_seconds']:.1f} s after the restart"
        if r["drain_seconds"] is not None
        else f"[yellow]{r['lost']} not done {r['cap']:.0f} s after the restart"
    )
    codes = ",".join(str(c) for c in sorted(set(r["exit_codes"])))
    return (
        f"{r['running_at_signal']} running · exit {r['exit_seconds']:.2f} s (code {codes}) · "
        f"{drain} · lost {r['lost']} · ran twice {r['ran_twice']}"
    )


@dataclass
class Bench:
    """One benchmark's runs: the targets, the Redis and slot of the moment, the progress bars."""

    args: argparse.Namespace
    names: list[str]
    cfg: Config
    progress: Progress
    logdir: Path
    specs: dict[str, TargetSpec] = field(default_factory=scenario.specs)
    info: dict[str, dict[str, str]] = field(default_factory=dict)  # per target, for the report
    redis: RedisServer | None = None
    slot: Slot | None = None
    failed: bool = False

    def __post_init__(self) -> None:
        for n in self.names:
            spec = self.specs[n]
            self.info[n] = {"label": spec.label, "version": targets.version_of(spec), "command": ""}
        per_run = (expected_seconds(self.cfg) + 2) * len(self.names) * len(self.args.scenarios)
        self.overall = self.progress.add_task("[bold]all", total=per_run * self.args.runs)

    def run(self, number: int) -> dict[str, dict[str, Any]]:
        """Every scenario against every target, on a fresh redis-server."""
        results: dict[str, dict[str, Any]] = {k: {} for k in self.args.scenarios}
        self.redis = RedisServer.start()
        for index, key in enumerate(self.args.scenarios):
            shift = (number - 1 + index) % len(self.names)  # no target always first (or last)
            for name in self.names[shift:] + self.names[:shift]:
                results[key][name] = self.one(number, key, name)
        self.redis.stop(keep=self.args.keep)
        self.redis = None
        return results

    def one(self, number: int, key: str, name: str) -> dict[str, Any]:
        assert self.redis is not None
        where = f"run {number}/{self.args.runs} · {name} · {key}"
        step = self.progress.add_task(where, total=None)

        def show(text: str) -> None:
            self.progress.update(step, description=f"{where} · {text}")

        db = self.names.index(name) + 1
        self.slot = slot = targets.open_slot(self.specs[name], self.redis, db, number)
        try:
            busy, waited = settle(self.args.settle, show)
            log = self.logdir / f"{name}.log"
            result = scenario.run_scenario(key, slot, self.cfg, show, log)
            result.update(machine_busy_before=busy, settle_seconds=waited)
            if slot.commands and not self.info[name]["command"]:
                self.info[name]["command"] = shown_command(slot)
        finally:
            self.progress.remove_task(step)
        # A failed measurement keeps its slot's dir: the workers' log is there.
        targets.close_slot(slot, keep=self.args.keep or "error" in result)
        self.slot = None
        self.failed |= "error" in result
        self.progress.advance(self.overall, expected_seconds(self.cfg) + 2)
        self.progress.console.print(
            f"run {number} · {name:14} · {key:7} · {headline(result)}", soft_wrap=True
        )
        return result

    def close(self) -> None:
        """Ctrl-C, SIGTERM or an error: never leave a process behind."""
        if self.slot is not None:
            targets.close_slot(self.slot, keep=self.args.keep)
        if self.redis is not None:
            self.redis.stop(keep=self.args.keep)


def publish(args: argparse.Namespace, console: Console, data: dict[str, Any], src: Path) -> None:
    """Write the section into --out (unless `none`)."""
    if out := common.publish(args.out, report.SECTION, report.render(data)):
        console.print(f"wrote {out} (section 'Shutdown') from {src}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    if args.render:
        publish(args, console, json.loads(Path(args.render).read_text()), Path(args.render))
        return 0
    names = choose_targets(args, console)
    cfg = Config(jobs=args.jobs, seconds=args.seconds, exit_cap=args.exit_cap, cap=args.cap)
    began = dt.datetime.now(dt.UTC)
    json_path = common.results_path(args.json_path, "shutdown", began).absolute()
    logdir = Path(tempfile.mkdtemp(prefix="outlast-bench-shutdown-"))
    machine = machine_info()
    console.print(
        f"[bold]shutdown benchmark[/]: {', '.join(names)} · {args.runs} run(s) · "
        f"{', '.join(args.scenarios)} · logs in {logdir}"
    )
    progress = Progress(
        SpinnerColumn(), *Progress.get_default_columns()[:3], TimeElapsedColumn(), console=console
    )
    bench = Bench(args, names, cfg, progress, logdir)
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with progress:
            runs = [bench.run(number) for number in range(1, args.runs + 1)]
    except (KeyboardInterrupt, Interrupted):
        console.print("[yellow]interrupted: everything stopped, nothing written")
        return 130
    finally:
        bench.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if not args.keep and not bench.failed:
            shutil.rmtree(logdir, ignore_errors=True)

    for name, info in bench.info.items():  # the work tree may change under a long run
        if (end := targets.version_of(bench.specs[name])) != info["version"]:
            info["version_end"] = end
    machine["loadavg_end"] = common.loadavg()
    data = {
        "meta": {
            "command": common.command_line("bench.shutdown", argv),
            "date": f"{began:%Y-%m-%d %H:%M} UTC",
            "machine": machine,
            "config": {"runs": args.runs, "scenarios": args.scenarios, **cfg.__dict__},
        },
        "targets": bench.info,
        "runs": runs,
        "summary": report.summarize(runs, names),
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    console.print("\n" + report.render(data), markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {json_path}")
    publish(args, console, data, json_path)
    if bench.failed:
        console.print(f"[red]some measurements failed: see {json_path} and the logs in {logdir}")
    return 1 if bench.failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Relay benchmark: the fake SSE upstream read directly against the same upstream read through
outlast's relay (SQLite, and Redis when the store exists), and through outlast's OpenAI-compatible
pass-through against the LiteLLM proxy (when bench/.venv-litellm has it).

    python -m bench.relay [--runs 3] [--duration 10] [--rate 10] [--targets ...]

Each run starts the fake upstream and every target on free 127.0.0.1 ports, measures per-event
latency directly and through each target at 1, 100 and 1,000 concurrent streams and the
events/s ceiling, then the proxies (outlast's pass-through, LiteLLM) at 1, 100 and 200 streams,
then restarts each outlast target fresh for memory per running relay and per idle reader and the
1,000 relays + 10,000 readers run. Medians go into the Relay section of
docs/benchmarks.md, raw results into bench/results/relay-<date>.json. Every process it started
is stopped on the way out, Ctrl-C and SIGTERM included. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/relay/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import common
from bench.common import Interrupted, machine_info, on_sigterm, settle
from bench.relay import report, workloads
from bench.relay.workloads import Config, Upstream
from bench.streams import targets
from bench.streams.targets import REPO, Server
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

Step = Callable[[Callable[[float], None], Callable[[str], None]], dict[str, Any]]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser("bench.relay", __doc__)
    common.add_runs(p)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of events per stream")
    p.add_argument("--rate", type=float, default=10.0, help="events/s per stream (default 10)")
    p.add_argument("--levels", default="1,100,1000", help="concurrent streams (default 1,100,1000)")
    p.add_argument("--ceiling-streams", type=int, default=100)
    p.add_argument("--ceiling-events", type=int, default=1000, help="events per ceiling stream")
    p.add_argument("--relays", type=int, default=1000, help="relays of the scale run")
    p.add_argument("--readers-per-relay", type=int, default=10)
    p.add_argument("--scale-events", type=int, default=20, help="events per relay, scale run")
    p.add_argument("--scale-rate", type=float, default=2.0, help="events/s per relay, scale run")
    p.add_argument(
        "--targets", help="comma-separated: outlast-sqlite, outlast-redis, litellm, litellm-<N>w"
    )
    p.add_argument("--no-scale", action="store_true", help="skip memory and the scale run")
    p.add_argument("--no-relay", action="store_true", help="skip the relay latency and ceiling")
    p.add_argument("--outlast-cmd", help="command template for outlast ({host} {port} {store})")
    p.add_argument("--outlast-args", help="more arguments for `outlast serve`, one string")
    p.add_argument(
        "--outlast-workers", type=int, help="`outlast serve --workers N` (with --outlast-args)"
    )
    p.add_argument(
        "--proxy-levels",
        default="1,100,200",
        help="concurrent streams through the pass-through and LiteLLM (default 1,100,200)",
    )
    p.add_argument("--no-proxy", action="store_true", help="skip the pass-through and LiteLLM")
    p.add_argument(
        "--litellm-workers",
        help="LiteLLM worker counts, comma-separated (default 1, and outlast's if more)",
    )
    common.add_outputs(p, section="Relay", results="relay-<date>.json")
    common.add_settle_keep(p, settle=30.0)
    common.add_render(p)
    args = p.parse_args(argv)
    args.levels = tuple(int(x) for x in args.levels.split(",") if x.strip())
    args.proxy_levels = tuple(int(x) for x in args.proxy_levels.split(",") if x.strip())
    if args.runs < 1 or args.duration <= 0 or args.rate <= 0 or not args.levels:
        p.error("--runs, --duration, --rate and --levels must be positive")
    if args.outlast_workers is not None and args.outlast_workers < 1:
        p.error("--outlast-workers must be at least 1")
    args.outlast_argv = workloads.split_args(args.outlast_args)
    if args.outlast_workers is not None:
        args.outlast_argv += ["--workers", str(args.outlast_workers)]
    if args.litellm_workers:
        args.litellm = tuple(int(x) for x in args.litellm_workers.split(",") if x.strip())
    else:
        args.litellm = tuple(sorted({1, args.outlast_workers or 1}))
    if any(n < 1 for n in args.litellm):
        p.error("--litellm-workers must be positive")
    return args


def choose_targets(args: argparse.Namespace, console: Console) -> list[str]:
    if args.targets:
        names = [t.strip() for t in args.targets.split(",") if t.strip()]
    else:
        names = ["outlast-sqlite"]
        if workloads.has_redis_store() and shutil.which("redis-server"):
            names.append("outlast-redis")
        else:
            console.print(
                "[yellow]no outlast.store.redis or no redis-server: outlast-redis skipped"
            )
        if args.no_proxy:
            pass
        elif workloads.has_litellm():
            names += [workloads.litellm_name(n) for n in args.litellm]
        else:
            console.print(
                f"[yellow]no {workloads.LITELLM} (see bench/README.md): the LiteLLM peer skipped"
            )
    known = ("outlast-sqlite", "outlast-redis")
    unknown = [n for n in names if n not in known and not workloads.is_litellm(n)]
    if unknown:
        raise SystemExit(f"unknown target(s): {', '.join(unknown)}; known: {', '.join(known)}")
    # A LiteLLM target named with its workers (litellm-2w) brings that count along.
    chosen = {workloads.litellm_workers(n) for n in names if workloads.is_litellm(n)}
    args.litellm = tuple(sorted(set(args.litellm) | chosen))
    return names


def raise_fd_limit() -> int:
    """10,000 readers and 1,000 relays are sockets: take the hard limit (children inherit it)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Harness:
    """The run loop's state: the progress display, the processes to stop, the results."""

    def __init__(self, args: argparse.Namespace, names: list[str], console: Console) -> None:
        self.args, self.console = args, console
        # The relay workloads run on outlast; the proxy workload on every target.
        self.names = [n for n in names if not workloads.is_litellm(n)]
        self.proxies = [] if args.no_proxy else names
        self.cfg = Config(
            levels=args.levels,
            rate=args.rate,
            duration=args.duration,
            ceiling_streams=args.ceiling_streams,
            ceiling_events=args.ceiling_events,
            relays=args.relays,
            readers_per_relay=args.readers_per_relay,
            scale_events=args.scale_events,
            scale_rate=args.scale_rate,
        )
        self.logdir = Path(tempfile.mkdtemp(prefix="outlast-bench-relay-"))
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self.upstream: Upstream | None = None
        self.servers: dict[str, Server] = {}
        self.versions: dict[str, str] = {}
        self.failed = False
        self.overall: Any = None

    def plan(self) -> int:
        per_run = 0 if self.args.no_relay else (len(self.cfg.levels) + 1) * (1 + len(self.names))
        if self.proxies:
            per_run += len(self.args.proxy_levels) * (1 + len(self.proxies))
        runs: int = self.args.runs
        return runs * (per_run + (0 if self.args.no_scale else len(self.names)))

    def step(self, where: str, desc: str, work: Step) -> dict[str, Any]:
        """One measurement: settle, run, record an exception as the result, show a headline."""
        task = self.progress.add_task(f"{where} · {desc}", total=None)

        def show(text: str) -> None:
            self.progress.update(task, description=f"{where} · {desc} · {text}")

        busy, waited = settle(self.args.settle, show)
        try:
            result = work(lambda s: None, show)
        except Exception as exc:  # one failed measurement: record, go on
            self.failed = True
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        result["machine_busy_before"], result["settle_seconds"] = busy, waited
        self.progress.remove_task(task)
        self.progress.advance(self.overall)
        self.progress.console.print(f"{where} · {desc} · {headline(result)}", soft_wrap=True)
        return result

    def start_targets(self, upstream: Upstream, names: list[str]) -> None:
        specs = workloads.specs(
            upstream, self.args.outlast_cmd, self.args.outlast_argv, self.args.litellm
        )
        for name in names:
            task = self.progress.add_task(f"starting {name}", total=None)
            try:
                self.servers[name] = workloads.start(specs[name], self.args.keep)
                self.versions[name] = self.servers[name].version
            except Exception as exc:  # recorded as this target's results
                self.failed = True
                self.progress.console.print(f"[red]{name} could not start: {exc}", soft_wrap=True)
            self.progress.remove_task(task)

    def on_target(
        self,
        where: str,
        desc: str,
        name: str,
        work: Callable[..., dict[str, Any]],
        *args: Any,
    ) -> dict[str, Any]:
        """*work* on target *name*'s server (its last argument before the step's) as a step, or
        a 'not running' result."""
        server = self.servers.get(name)
        if server is None:
            return missing(name)
        return self.step(where, desc, bind(self.logdir / "loadgen.log", work, *args, server))

    def stop_targets(self, run_log: dict[str, Any]) -> None:
        while self.servers:
            name, server = self.servers.popitem()
            run_log[name] = workloads.server_log_problems(server)
            alive = server.alive()
            targets.stop(server, keep=self.args.keep or not alive)
            if not alive:
                self.progress.console.print(f"[red]{name} died; log kept in {server.workdir}")

    def stop_all(self) -> None:
        while self.servers:
            targets.stop(self.servers.popitem()[1], keep=self.args.keep)
        if self.upstream is not None:
            workloads.stop_upstream(self.upstream, keep=self.args.keep)
            self.upstream = None

    def one_run(self, run: int) -> dict[str, Any]:
        cfg = self.cfg
        results: dict[str, Any] = {
            "latency": {},
            "ceiling": {},
            "proxy": {},
            "scale": {},
            "server_log": {},
        }
        self.upstream = upstream = workloads.start_upstream()
        where = f"run {run}/{self.args.runs}"
        # Rotate the order of the targets run by run, so that none always goes first.
        names, proxies = rotate(self.names, run), rotate(self.proxies, run)
        self.start_targets(upstream, list(dict.fromkeys(names + proxies)))
        self.relay_phases(where, results, names, upstream)
        self.proxy_phase(where, results, proxies, upstream)
        self.stop_targets(results["server_log"])
        if not self.args.no_scale:
            # Memory is measured on a fresh server: one that ran the phases above keeps their
            # freed memory for reuse, and a delta on top of it would read too low.
            for name in names:
                self.start_targets(upstream, [name])
                results["scale"][name] = self.on_target(
                    where,
                    f"{name} · {cfg.relays:,} relays × {cfg.readers_per_relay} readers",
                    name,
                    workloads.scale,
                    cfg,
                    upstream,
                )
                scale_log: dict[str, Any] = {}
                self.stop_targets(scale_log)
                results["server_log"][f"{name} (scale)"] = scale_log.get(name, {})
        workloads.stop_upstream(upstream, keep=self.args.keep)
        self.upstream = None
        return results

    def relay_phases(
        self, where: str, results: dict[str, Any], names: list[str], upstream: Upstream
    ) -> None:
        """The ceiling, then latency at each level: direct, then through each outlast's relay."""
        if self.args.no_relay:
            return
        cfg, log = self.cfg, self.logdir / "loadgen.log"
        # The ceiling first: a level that fails (1,000 relays) may leave a server unable to relay.
        results["ceiling"]["direct"] = self.step(
            where,
            "direct · ceiling",
            bind(log, workloads.ceiling, "direct", cfg, upstream, None),
        )
        for name in names:
            results["ceiling"][name] = self.on_target(
                where, f"{name} · ceiling", name, workloads.ceiling, "relay", cfg, upstream
            )
        for n in cfg.levels:
            per: dict[str, Any] = {}
            results["latency"][str(n)] = per
            per["direct"] = self.step(
                where,
                f"direct · {n:,} streams",
                bind(log, workloads.latency, "direct", n, cfg, upstream, None),
            )
            for name in names:
                per[name] = self.on_target(
                    where,
                    f"{name} · {n:,} streams",
                    name,
                    workloads.latency,
                    "relay",
                    n,
                    cfg,
                    upstream,
                )

    def proxy_phase(
        self, where: str, results: dict[str, Any], proxies: list[str], upstream: Upstream
    ) -> None:
        """Latency at each proxy level: the upstream read directly (stamps in the content),
        then through outlast's pass-through and through LiteLLM, one streaming request each."""
        if not proxies:
            return
        cfg, log = self.cfg, self.logdir / "loadgen.log"
        for n in self.args.proxy_levels:
            per: dict[str, Any] = {}
            results["proxy"][str(n)] = per
            per["direct"] = self.step(
                where,
                f"direct (content stamps) · {n:,} streams",
                bind(log, workloads.proxy_latency, n, cfg, upstream, None),
            )
            for name in proxies:
                per[name] = self.on_target(
                    where,
                    f"{name} · {'pass-through · ' * (name in self.names)}{n:,} streams",
                    name,
                    workloads.proxy_latency,
                    n,
                    cfg,
                    upstream,
                )


def rotate(names: list[str], run: int) -> list[str]:
    """*names* starting from a different one each run, so that none always goes first."""
    if not names:
        return names
    k = (run - 1) % len(names)
    return names[k:] + names[:k]


def missing(name: str) -> dict[str, Any]:
    return {"error": f"{name} is not running"}


def bind(log: Path, work: Callable[..., dict[str, Any]], *args: Any) -> Step:
    """A workload as a step: its arguments, then the step's tick, the log, the status."""
    return lambda tick, status: work(*args, tick, log, status)


def headline(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"[red]failed: {r['error'].splitlines()[0][:150]}"
    errors = report.errors_of(r)
    flag = f" [red]{errors} error(s)" if errors else ""
    if "per_reader_bytes" in r:
        flow = r["flow"]["latency_ms"]
        return (
            f"{r['per_relay_bytes'] / 1024:,.1f} KiB/relay, {r['per_reader_bytes'] / 1024:,.1f} "
            f"KiB/reader, flow p50 {flow['p50']:,.1f} p99 {flow['p99']:,.1f} ms{flag}"
        )
    lat = r["latency_ms"]
    return (
        f"{r['events_per_s']:,.0f} events/s, p50 {lat['p50']:,.2f} p99 {lat['p99']:,.2f} ms "
        f"(server {r['server_cpu'] * 100:.0f} %, other {r['other_cpu'] * 100:.0f} % CPU){flag}"
    )


def finish(data: dict[str, Any], out: str | None, console: Console) -> None:
    """(Re)compute the summary from the raw runs, print the section and write it."""
    levels, names = data["meta"]["config"]["levels"], data["names"]
    data["summary"] = report.summarize(data["runs"], levels, names)
    data["proxy_summary"] = report.summarize_proxies(
        data["runs"], data["meta"]["config"].get("proxy_levels", []), data.get("proxies", [])
    )
    data["cpu"] = report.cpu_rows(data["runs"], levels, names)
    data["problems"] = report.problems(data["runs"])
    sections = []
    if names and data["meta"]["config"].get("relay", True):
        sections.append((report.SECTION, report.render(data)))
    if data.get("proxies"):
        sections.append((report.PROXY_SECTION, report.render_proxies(data)))
    for name, section in sections:
        print()
        print(section, flush=True)
        if path := common.publish(out, name, section):
            console.print(f"wrote {path} (section {name!r})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    if args.render:
        finish(json.loads(Path(args.render).read_text()), args.out, console)
        return 0
    names = choose_targets(args, console)
    fd_limit = raise_fd_limit()
    # The children run `-m bench.relay.*` whatever the caller's working directory.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])
    )
    started = dt.datetime.now(dt.UTC)
    json_path = common.results_path(args.json_path, "relay", started)
    harness = Harness(args, names, console)
    cfg = harness.cfg
    meta: dict[str, Any] = {
        "command": common.command_line("bench.relay", argv),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "fd_limit": fd_limit,
        "config": {
            "runs": args.runs,
            "levels": list(cfg.levels),
            "rate": cfg.rate,
            "duration": cfg.duration,
            "ceiling_streams": cfg.ceiling_streams,
            "ceiling_events": cfg.ceiling_events,
            "relays": cfg.relays,
            "readers_per_relay": cfg.readers_per_relay,
            "scale_events": cfg.scale_events,
            "scale_rate": cfg.scale_rate,
            "queue_concurrency": workloads.CONCURRENCY,
            "proxy_levels": [] if args.no_proxy else list(args.proxy_levels),
            "outlast_args": args.outlast_argv,
            "relay": not args.no_relay,
            "scale": not args.no_scale,
        },
        "json": common.repo_relative(json_path),
    }
    m = meta["machine"]
    m["summary"] = (
        f"{m['cores']} cores ({m['cpu'] or 'unknown CPU'}), {m['memory_gib']:g} GiB, "
        f"Linux {m['kernel']}; Python {m['python']}"
    )
    console.print(
        f"[bold]relay benchmark[/]: {', '.join(names)} · {args.runs} run(s) · streams "
        f"{', '.join(map(str, cfg.levels))} at {cfg.rate:g} events/s · logs in {harness.logdir}"
    )
    runs: list[dict[str, Any]] = []
    labels = {**{n: workloads.specs_label(n) for n in names}, "direct": "direct"}
    relays, proxies = harness.names, harness.proxies
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with harness.progress:
            harness.overall = harness.progress.add_task("[bold]all", total=harness.plan())
            for run in range(1, args.runs + 1):
                runs.append(harness.one_run(run))
                # Raw results so far, after every run: an interrupted run can still be rendered.
                partial = {**meta, "partial": f"{run} of {args.runs} runs"}
                json_path.parent.mkdir(parents=True, exist_ok=True)
                json_path.write_text(
                    json.dumps(
                        {
                            "meta": partial,
                            "names": relays,
                            "proxies": proxies,
                            "labels": labels,
                            "runs": runs,
                            "versions": harness.versions,
                        },
                        indent=2,
                    )
                    + "\n"
                )
    except (KeyboardInterrupt, Interrupted):
        console.print("[yellow]interrupted: every process stopped, nothing written")
        return 130
    finally:
        harness.stop_all()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    meta["loadavg_end"] = common.loadavg()
    data: dict[str, Any] = {
        "meta": meta,
        "names": relays,
        "proxies": proxies,
        "labels": labels,
        "versions": harness.versions,
        "runs": runs,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data, indent=2) + "\n")  # raw first: a report bug loses nothing
    finish(data, args.out, console)  # adds the summary, written into the JSON too
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    console.print(f"wrote {json_path}")
    if harness.failed or args.keep:
        console.print(f"logs kept in {harness.logdir}")
    else:
        shutil.rmtree(harness.logdir, ignore_errors=True)
    return 1 if harness.failed else 0


if __name__ == "__main__":
    sys.exit(main())

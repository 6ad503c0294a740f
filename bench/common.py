"""What every benchmark shares: its section of docs/benchmarks.md, medians and table cells, the
options every run has, the machine it ran on, waiting for a quiet machine, stopping cleanly on
SIGTERM.

The benchmarks (``bench.streams``, ``bench.jobs``, ``bench.relay``, ``bench.shutdown``) and
``bench.plots`` use these; what differs between them (targets, workloads, the figures and their
wording) stays in each one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
DOC_INTRO = """\
# Benchmarks

outlast's benchmarks run outlast and its peers side by side in the same run, on the kind of machine
outlast is meant for (2 cores), and report figures as ratios against the peer measured in that same
run (medians of several runs). Each section below is written by the benchmark named in it; run that
command to reproduce or refresh it. The harnesses live in [`bench/`](../bench/README.md).
"""

# -- the report -----------------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def median_present(values: list[float | None]) -> float | None:
    """The median of the values that are there (``None``: not measured)."""
    return median([v for v in values if v is not None])


def number(value: Any) -> float | None:
    """*value* as a float, or ``None`` when it is not a number (or NaN)."""
    if isinstance(value, int | float) and not math.isnan(value):
        return float(value)
    return None


def cell(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def table(header: list[str], rows: list[list[str]], right_from: int) -> list[str]:
    """A markdown table; the columns from *right_from* on are right-aligned."""
    align = ["---"] * right_from + ["---:"] * (len(header) - right_from)
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(align) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def write_section(path: Path, name: str, section_md: str, *, before_others: bool = False) -> None:
    """Put the section *name* (``<!-- bench:NAME -->`` … ``<!-- /bench:NAME -->``) into *path*
    in place of the old one; a new one goes at the end, or with *before_others* before the first
    benchmark's section (after the intro). The rest of the file is left as it is."""
    text = path.read_text(encoding="utf-8") if path.exists() else DOC_INTRO
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section_md, text, count=1)
    elif before_others and (first := re.search(r"^<!-- bench:", text, re.M)):
        text = text[: first.start()] + section_md + "\n" + text[first.start() :]
    else:
        text = text.rstrip("\n") + "\n\n" + section_md
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def doc_path(out: str | None) -> Path | None:
    """The markdown file ``--out`` names (docs/benchmarks.md by default); ``None`` for 'none'."""
    if (out or "").lower() == "none":
        return None
    return Path(out) if out else DOC


def publish(out: str | None, name: str, section_md: str) -> Path | None:
    """Write the section *name* into the file ``--out`` names; the file, or ``None`` for 'none'."""
    path = doc_path(out)
    if path is not None:
        write_section(path, name, section_md)
    return path


def results_path(given: str | None, name: str, started: dt.datetime) -> Path:
    """Where the raw results go: ``--json``, or bench/results/NAME-<date>.json."""
    return Path(given or REPO / "bench" / "results" / f"{name}-{started:%Y-%m-%dT%H%M}.json")


def repo_relative(path: Path) -> str:
    """*path* as the report shows it: relative to the repository when it is inside it."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


# -- the command line -----------------------------------------------------------------------------


def parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The benchmark's parser, named as it is run, described by its docstring's first line."""
    return argparse.ArgumentParser(
        prog=f"python -m {module}", description=(doc or "").split("\n")[0]
    )


def add_runs(
    p: argparse.ArgumentParser, help: str = "runs; figures are medians (default 3)"
) -> None:
    p.add_argument("--runs", type=int, default=3, help=help)


def add_outputs(p: argparse.ArgumentParser, *, section: str, results: str) -> None:
    """``--out`` (the markdown file whose *section* is rewritten) and ``--json`` (raw results,
    by default bench/results/*results*)."""
    p.add_argument(
        "--out",
        help=f"markdown file whose {section} section is (re)written (default docs/benchmarks.md); "
        "'none' to skip",
    )
    p.add_argument(
        "--json", dest="json_path", help=f"raw results (default bench/results/{results})"
    )


def add_settle_keep(p: argparse.ArgumentParser, *, settle: float) -> None:
    p.add_argument(
        "--settle",
        type=float,
        default=settle,
        help="seconds to wait, at most, for a quiet machine before each measurement "
        f"(default {settle:g}; 0: measure at once)",
    )
    p.add_argument("--keep", action="store_true", help="keep the targets' temp dirs and logs")


def add_outlast_cmd(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--outlast-cmd",
        help="command template for outlast, with {host} {port} "
        "{store}; default: <this python> -m outlast serve --host {host} --port {port} "
        "--store {store} (another checkout's interpreter, say, to compare two versions)",
    )


def add_render(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--render",
        metavar="JSON",
        help="measure nothing: write the section again from a raw results file (to --out)",
    )


def command_line(module: str, argv: list[str] | None) -> str:
    """The command as the report prints it."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


# -- the machine and the run ----------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    def out(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count() or 0
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    wrk_version = out("wrk", "--version").splitlines()
    info = {
        "cpu": model,
        "cores": cores,
        "memory_gib": round(mem, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": out("node", "--version"),
        "wrk": wrk_version[0].split(" Copyright")[0] if wrk_version else "",
        "redis": out("redis-server", "--version").split(" sha=")[0],
        "loadavg_start": loadavg(),
    }
    info["summary"] = (
        f"{cores} cores ({model or 'unknown CPU'}), {info['memory_gib']:g} GiB, "
        f"Linux {info['kernel']}; Python {info['python']}, Node {info['node']}, "
        f"{info['wrk']}"
    )
    return info


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


QUIET = 0.25  # cores: what other processes may use before a timed phase starts anyway
SETTLE_SAMPLE = 0.5  # seconds per sample of the machine's CPU


def settle(max_wait: float, show: Callable[[str], None]) -> tuple[float, float]:
    """Wait, at most *max_wait* s, until the machine is quiet (the servers are idle between
    phases, so whatever is busy is someone else: this machine is shared with other work).
    Returns (busy cores in the last sample, seconds waited)."""
    from bench.streams.loadgen import machine_cpu_seconds

    started = time.monotonic()
    while True:
        m0 = machine_cpu_seconds()
        time.sleep(SETTLE_SAMPLE)
        busy = (machine_cpu_seconds() - m0) / SETTLE_SAMPLE
        waited = time.monotonic() - started
        if busy < QUIET or waited >= max_wait:
            return busy, waited
        show(f"waiting for a quiet machine: {busy * 100:.0f} % busy ({waited:.0f} s)")


class Interrupted(BaseException):
    """SIGTERM, turned into an exception so that every `finally` stops its servers."""


def on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted()

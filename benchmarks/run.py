"""The app's benchmarks, side by side with their baselines, in one table: ``make bench``.

    .venv/bin/python benchmarks/run.py [--quick] [--only NAME[,NAME]] [--json PATH]

Each benchmark is a module beside this file, listed in ``BENCHMARKS`` below. Each is bounded in
time and starts (and stops) its own in-memory Azurite on free ports. The figures are printed as
one table and written to ``benchmarks/results/latest.json``. See benchmarks/README.md for what
is measured against what, and why, and for how to add a benchmark.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import REPO, RESULTS, Budget, Row, print_table

# The benchmarks, in the order a full run takes them: the name (for --only) and its module beside
# this file. A module has run(quick, budget) -> (rows, details) and BUDGET_SECONDS = {"full": s,
# "quick": s}; adding one is a line here (benchmarks/README.md, "Adding a benchmark").
BENCHMARKS = {
    "cold_start": "cold_start",
    "normalise": "normalise",
    "http": "http_intake",
    "faults": "faults",
    "drain": "drain",
    "notify": "notify",
    "webhook": "webhook",
    "crm": "crm",
    "erasure": "erasure",
    "history": "history",
    "poll_history": "poll_history",
    "import": "imports",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (about 4 minutes)")
    parser.add_argument("--only", default="", help=f"comma-separated, of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--json", type=Path, default=RESULTS / "latest.json", help="where the figures go as JSON")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()] or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}: choose from {', '.join(BENCHMARKS)}")
    mode = "quick" if args.quick else "full"
    RESULTS.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    all_rows: list[Row] = []
    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "commit": _git_commit(),
        "load_average_at_start": os.getloadavg(),
        "benchmarks": {},
    }
    for name in names:
        t0 = time.perf_counter()
        budget = Budget(0)
        try:  # imported here, so that a module that fails to import fails its benchmark alone
            benchmark = importlib.import_module(BENCHMARKS[name])
            budget = Budget(benchmark.BUDGET_SECONDS[mode])
            print(f"running {name} (bound {budget.seconds:.0f} s)...", file=sys.stderr, flush=True)
            rows, details = benchmark.run(args.quick, budget)
        except Exception as exc:  # one benchmark failing still reports the others
            traceback.print_exc()
            rows, details = (
                [Row(name, f"FAILED: {type(exc).__name__}: {str(exc)[:120]}", None, "")],
                {"error": repr(exc)},
            )
        details["seconds"] = time.perf_counter() - t0
        details["time_bound_hit"] = budget.cut_short
        print(f"  {name}: {details['seconds']:.1f} s", file=sys.stderr, flush=True)
        all_rows += rows
        report["benchmarks"][name] = {"rows": [asdict(row) for row in rows], "details": details}
    report["seconds"] = time.perf_counter() - started
    report["load_average_at_end"] = os.getloadavg()

    print()
    print_table(all_rows)
    print(
        f"\nratio = ours' cost / baseline's (time ÷ time, or baseline rate ÷ our rate): above 1× is slower."
        f"\n{report['mode']} run, {report['seconds']:.0f} s on {os.cpu_count()} cores; 1-minute load average "
        f"{report['load_average_at_start'][0]:.2f} at start, {report['load_average_at_end'][0]:.2f} at end "
        f"(other work on the machine skews figures); figures in {_relative(args.json)}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return done.stdout.strip() + ("+dirty" if dirty else "") if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())

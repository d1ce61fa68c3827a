"""Cold start: ``import function_app`` in a fresh process against ``import azure.functions`` alone
(goal ≤ 1.15×). See benchmarks/README.md, "Cold start".
"""

from __future__ import annotations

import statistics
import subprocess
import time
from typing import Any

from common import PYTHON, REPO, Budget, Row, cost_ratio

BUDGET_SECONDS = {"full": 40, "quick": 15}
RUNS, QUICK_RUNS = 15, 7  # rounds of the three kinds of process


_TIMED_IMPORT = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"


def run(quick: bool, budget: Budget) -> tuple[list[Row], dict[str, Any]]:
    """``import function_app`` against ``import azure.functions`` alone, each in a fresh process.

    Primary figure: the import timed inside the child (perf_counter around the import statement).
    The interpreter's own start-up is identical for both and is not what the app controls, so
    leaving it out keeps the ratio about the import. Process wall time (less a bare ``python -c
    pass``) is reported beside it as a check. Runs alternate, so drift hits both alike."""
    kinds = {
        "pass": "pass",
        "azure.functions": _TIMED_IMPORT.format(module="azure.functions"),
        "function_app": _TIMED_IMPORT.format(module="function_app"),
    }
    inside: dict[str, list[float]] = {name: [] for name in kinds}
    wall: dict[str, list[float]] = {name: [] for name in kinds}

    def run(name: str) -> None:
        started = time.perf_counter()
        done = subprocess.run([PYTHON, "-c", kinds[name]], cwd=REPO, capture_output=True, text=True, timeout=60)
        elapsed = time.perf_counter() - started
        if done.returncode:
            raise RuntimeError(f"python -c {kinds[name]!r} failed: {done.stderr[-1500:]}")
        wall[name].append(elapsed * 1000)
        if name != "pass":
            inside[name].append(float(done.stdout.split()[-1]) * 1000)

    for name in kinds:  # once each first: byte-code caches written, files in the page cache
        run(name)
    for samples in (*wall.values(), *inside.values()):
        samples.clear()
    order = list(kinds)
    for index in range(QUICK_RUNS if quick else RUNS):
        if budget.over():
            break
        for name in order[index % 3 :] + order[: index % 3]:  # rotate who goes first
            run(name)
    runs = len(inside["function_app"])
    af, fa = statistics.median(inside["azure.functions"]), statistics.median(inside["function_app"])
    bare = statistics.median(wall["pass"])
    af_wall, fa_wall = statistics.median(wall["azure.functions"]), statistics.median(wall["function_app"])
    note = f"median of {runs} fresh processes each" + (" (time bound hit)" if budget.cut_short else "")
    ratio = cost_ratio(fa, af)
    wall_ratio = cost_ratio(fa_wall - bare, af_wall - bare)
    rows = [
        Row(
            "cold start",
            "import, timed in the child",
            fa,
            "ms",
            af,
            ratio,
            "≤ 1.15×",
            ratio is not None and ratio <= 1.15,
            note,
        ),
        Row(
            "cold start",
            "process wall − bare python",
            fa_wall - bare,
            "ms",
            af_wall - bare,
            wall_ratio,
            "(check)",
            None,
            f"bare `python -c pass` = {bare:.1f} ms",
        ),
    ]
    details = {"runs": runs, "inside_ms": inside, "wall_ms": wall, "added_by_function_app_ms": fa - af}
    return rows, details

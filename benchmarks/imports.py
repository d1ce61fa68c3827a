"""``python -m leads import`` of a Partner Center download at its largest (5,000 rows): time,
rows a second and storage requests a row, for the first import and for the same file again.

- **first import**: every row new, routed nowhere (``EMAIL_TO`` empty), so each row is its
  identity row, its email index row, its timeline entry and the lead; the matcher reads each
  day's identities once.
- **the same file again**: every row already received; the import stores nothing.
- **dry run, peak memory**: the file read and mapped, nothing stored, with ``tracemalloc``: rows
  are read one at a time, so the peak does not grow with the file (the first row's imports and
  the report dominate it).

tests/test_import.py proves the mechanism on a few hundred rows (rows in flight bounded by a
window, requests a row counted); this is the figure at Partner Center's size.

    .venv/bin/python benchmarks/run.py --only import [--quick]
"""

from __future__ import annotations

import csv
import sys
import tempfile
import time
import tracemalloc
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import Budget, RequestCounter, Row, app_env, app_environment, ports  # noqa: E402

BUDGET_SECONDS = {"full": 300, "quick": 90}
ROWS = {"full": 5000, "quick": 1000}
HEADERS = [
    "Lead ID",
    "Created Date",
    "First Name",
    "Last Name",
    "Email Address",
    "Phone Number",
    "Company Name",
    "Job Title",
    "Country/Region",
    "Offer Name",
    "Lead Source",
    "Action",
    "Comments",
]


def partner_center_file(path: Path, count: int) -> Path:
    """``count`` distinct rows as Partner Center's Leads page downloads them (Excel's UTF-8 BOM)."""
    created = datetime.now(UTC).strftime("%m/%d/%Y %I:%M:%S %p")
    with path.open("w", newline="", encoding="utf-8-sig") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADERS)
        for index in range(count):
            writer.writerow(
                [
                    f"pc-{index}",
                    created,
                    "Ann",
                    f"Buyer{index}",
                    f"ann{index}@northwind.example",
                    "+1 425 555 0100",
                    "Northwind",
                    "CTO",
                    "US",
                    "Contoso CRM",
                    "AppSource",
                    "PLT",
                    "Call me",
                ]
            )
    return path


def run(quick: bool, budget: Budget) -> tuple[list[Row], dict[str, Any]]:
    from leads.intake.imports import import_file
    from leads.local.azurite import Azurite

    count = ROWS["quick" if quick else "full"]
    rows, details = [], {"rows": count}
    with Azurite() as azurite, tempfile.TemporaryDirectory() as folder:
        path = partner_center_file(Path(folder) / "leads.csv", count)
        counter = RequestCounter(ports(azurite))
        env = {
            **app_env(azurite.connection_string, uuid.uuid4().hex[:8]),
            "EMAIL_TO": "",
            "WEBHOOK_URL": "",
            "LEADS_ROUTING": "",
            "LEADS_BACKFILL_DAYS": "7",
        }
        with app_environment(env):
            for name, note in (
                ("first import", "every row new: identity, email index, timeline entry, lead"),
                ("the same file again", "every row already received; nothing stored"),
            ):
                if budget.over():
                    break
                counter.calls.clear()
                started = time.perf_counter()
                with counter.counting():
                    report = import_file(path)
                seconds = time.perf_counter() - started
                assert report.read == count and not report.refused, report.to_dict()
                per_row = counter.total / count
                details[name] = {
                    "seconds": seconds,
                    "requests": counter.describe(),
                    "imported": report.imported,
                    "alreadyReceived": report.already_received,
                }
                rows.append(
                    Row(
                        "import",
                        f"{name}, {count:,} rows",
                        round(seconds, 2),
                        "s",
                        note=f"{count / seconds:,.0f} rows/s, {per_row:.2f} storage requests a row; {note}",
                    )
                )
            if not budget.over():
                tracemalloc.start()
                try:
                    import_file(path, dry_run=True)
                    peak = tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()
                details["dry run peak bytes"] = peak
                rows.append(
                    Row(
                        "import",
                        f"dry run of {count:,} rows, peak memory",
                        round(peak / 2**20, 2),
                        "MiB",
                        note="rows read one at a time: flat whatever the file's size",
                    )
                )
    return rows, details

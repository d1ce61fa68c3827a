"""What erasing costs, in storage requests and time, in a store of 1,000 and of 5,000 leads.

- **forget --lead**: one lead by id, point reads and one partition query: the same at any size.
- **forget --email**: no index finds leads by email yet, so it reads every lead row once: it grows
  with the store (a manual command, never scheduled; docs/security.md says so).
- **retention, a day's run**: 50 leads turned old since the last run; the query's filter is
  evaluated by the service over every partition (Tables indexes only its keys), but what the app
  reads and writes is those 50 leads. On Azurite the time also carries the emulator's in-memory
  scan of the table, which grows with it.

    .venv/bin/python benchmarks/run.py --only erasure
"""

from __future__ import annotations

import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import Budget, RequestCounter, Row, app_env, app_environment, ports  # noqa: E402

BUDGET_SECONDS = {"full": 240, "quick": 90}
SIZES = {"full": (1000, 5000), "quick": (500, 2000)}
DAILY = 50


def _fill(store, count: int, now: datetime) -> list[str]:
    from leads.normalise import from_http_body

    ids = []
    for index in range(count):
        # The oldest DAILY leads are those the day's retention run finds turned old.
        received = now - timedelta(days=31 if index < DAILY else 1, seconds=index)
        user = {"FirstName": f"P{index}", "LastName": "Bench", "Email": f"p{index}@contoso.example",
                "Company": "Contoso"}  # fmt: skip
        body = {"UserDetails": user, "LeadSource": "AzureMarketplace", "ActionCode": "INS"}
        lead = from_http_body(body, received_at=received).model_copy(update={"lead_id": uuid.uuid4().hex})
        store.add(lead)
        ids.append(lead.lead_id)
    return ids


def run(quick: bool, budget: Budget) -> tuple[list[Row], dict[str, Any]]:
    from leads import erasure
    from leads.azurite import Azurite
    from leads.store import LeadStore

    rows, details = [], {}
    with Azurite() as azurite:
        counter = RequestCounter(ports(azurite))
        for size in SIZES["quick" if quick else "full"]:
            if budget.over():
                break
            tag = uuid.uuid4().hex[:8]
            with app_environment({**app_env(azurite.connection_string, tag), "LEADS_RETENTION_DAYS": "30"}):
                now = datetime.now(UTC)
                store = LeadStore.from_settings()
                ids = _fill(store, size, now)
                # The watermark as the run before left it: everything before yesterday's cutoff done.
                erasure._RetentionMark(since=now - timedelta(days=31, hours=1), opened=now - timedelta(days=1)).write(
                    store)  # fmt: skip
                figures = {}
                calls = (("forget --lead", erasure.forget_lead, (ids[-1],), {}),
                         ("forget --email", erasure.forget_email, (f"p{size - 2}@contoso.example",), {}),
                         ("retention, a day's run", erasure.apply_retention, (), {"now": now}))  # fmt: skip
                for name, call, args, kwargs in calls:
                    counter.calls.clear()
                    started = time.perf_counter()
                    with counter.counting():
                        done = call(*args, **kwargs)
                    figures[name] = {"ms": (time.perf_counter() - started) * 1000, "requests": counter.total,
                                     "erased": len(done.leads), "rowsRead": done.scanned}  # fmt: skip
                details[str(size)] = figures
                for name, figure in figures.items():
                    rows.append(Row("erasure", f"{name}, {size:,} leads", round(figure["ms"], 1), "ms",
                                    note=f"{figure['requests']} requests, {figure['rowsRead']} rows read, "
                                    f"{figure['erased']} erased"))  # fmt: skip
    return rows, details

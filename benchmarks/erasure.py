"""What erasing costs, in storage requests and time, in a store of 1,000 and of 5,000 leads.

- **forget --lead**: one lead by id, point reads and one partition query: the same at any size.
- **forget --email**: the email index (``leads/store/identities.py``) names the person's rows: one
  partition query of their address, one of the crowded records, then point reads of what it names.
  The same at any size: the row for it is the median of five people's erasures, with the ratio of
  the larger store's to the smaller's (goal within 1.3×).
- **forget --email before reindex**: the same store as if from before the email index (its
  checkpoint row removed): every lead row is read once, so it grows with the store. What the
  command cost before the index, and costs an old store until ``reindex`` completes.
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

from common import Budget, RequestCounter, Row, app_env, app_environment, cost_ratio, ports  # noqa: E402

BUDGET_SECONDS = {"full": 240, "quick": 90}
SIZES = {"full": (1000, 5000), "quick": (500, 2000)}
DAILY = 50
PEOPLE = 5  # forget --email is timed for this many people; the median is reported
GOAL = 1.3


def _fill(store, count: int, now: datetime) -> list[str]:
    from leads.core.normalise import from_http_body

    ids = []
    for index in range(count):
        # The oldest DAILY leads are those the day's retention run finds turned old.
        received = now - timedelta(days=31 if index < DAILY else 1, seconds=index)
        user = {
            "FirstName": f"P{index}",
            "LastName": "Bench",
            "Email": f"p{index}@contoso.example",
            "Company": "Contoso",
        }
        body = {"UserDetails": user, "LeadSource": "AzureMarketplace", "ActionCode": "INS"}
        lead = from_http_body(body, received_at=received).model_copy(update={"lead_id": uuid.uuid4().hex})
        store.add(lead)
        ids.append(lead.lead_id)
    return ids


def _as_before_reindex(store, forget_email):
    """``forget_email`` on ``store`` as if it were from before the email index."""
    from leads.store.identities import _META

    def forget(*args: Any, **kwargs: Any) -> Any:
        saved = dict(store.checkpoints.get_entity(*_META))
        store.checkpoints.delete_entity(*_META)
        try:
            return forget_email(*args, **kwargs)
        finally:
            store.checkpoints.upsert_entity(saved)

    return forget


def run(quick: bool, budget: Budget) -> tuple[list[Row], dict[str, Any]]:
    from leads.local.azurite import Azurite
    from leads.store import erasure
    from leads.store.lead_store import LeadStore

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
                    store
                )
                figures = {}
                people = [f"p{size - 2 - person}@contoso.example" for person in range(PEOPLE)]
                calls = (
                    ("forget --lead", erasure.forget_lead, [(ids[-1],)], {}),
                    ("forget --email", erasure.forget_email, [(email,) for email in people], {}),
                    (
                        "forget --email before reindex",
                        _as_before_reindex(store, erasure.forget_email),
                        [(f"p{size - 2 - PEOPLE}@contoso.example",)],
                        {},
                    ),
                    ("retention, a day's run", erasure.apply_retention, [()], {"now": now}),
                )
                for name, call, runs, kwargs in calls:
                    measured = []
                    for args in runs:
                        counter.calls.clear()
                        started = time.perf_counter()
                        with counter.counting():
                            done = call(*args, **kwargs)
                        measured.append(
                            {
                                "ms": (time.perf_counter() - started) * 1000,
                                "requests": counter.total,
                                "erased": len(done.leads),
                                "rowsRead": done.scanned,
                            }
                        )
                    figures[name] = sorted(measured, key=lambda figure: figure["ms"])[len(measured) // 2]
                details[str(size)] = figures
                for name, figure in figures.items():
                    rows.append(
                        Row(
                            "erasure",
                            f"{name}, {size:,} leads",
                            round(figure["ms"], 1),
                            "ms",
                            note=f"{figure['requests']} requests, {figure['rowsRead']} rows read, "
                            f"{figure['erased']} erased",
                        )
                    )
        if len(details) == 2:  # both sizes ran within the budget
            small, large = (figures["forget --email"] for figures in details.values())
            ratio = cost_ratio(large["ms"], small["ms"])
            rows.append(
                Row(
                    "erasure",
                    "forget --email, larger store ÷ smaller",
                    round(large["ms"], 1),
                    "ms",
                    baseline=round(small["ms"], 1),
                    ratio=ratio,
                    goal=f"≤ {GOAL}×",
                    met=ratio is not None and ratio <= GOAL,
                    note=f"requests {large['requests']} vs {small['requests']}",
                )
            )
    return rows, details

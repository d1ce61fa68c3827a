"""A poll of an unchanged marketplace table of 1,000 and of 50,000 rows, side by side.

Issue 10 asks that the routine poll costs the same whatever the table's history. Each table holds
50 rows a day, the newest day today (so the 50,000-row table reaches back 1,000 days), and every
row counts as taken in before anything is timed: the checkpoint is written as a first poll leaves it
(``--take-in`` runs that first poll instead, storing every lead: minutes at 50,000). Then, for each
size:

- **poll**: ``poll_marketplace()`` as the timer calls it, nothing new to read: it reads the recent
  day partitions (see ``leads/intake/poll.py``). Median of ``--polls`` polls, and its storage requests.
  The sizes take turns poll by poll, so the load of a shared machine falls on both alike.
- **safety scan**: ``poll_marketplace(full_scan=True)``, the whole table read by Timestamp, run once
  every ``LEADS_POLL_FULL_SCAN_MINUTES`` (an hour): reported apart. It is also what every poll cost
  before (a whole-table Timestamp filter every 30 seconds).
- **Azurite alone**: one bare-SDK ``PartitionKey eq`` query that finds nothing. Azurite answers
  every query by scanning the whole table in memory (``LokiTableMetadataStore.queryTableEntities``);
  Azure Tables serves a PartitionKey filter from its index. This row is the emulator's own growth,
  which the poll's time carries too.

``LEADS_POLL_OVERLAP_MINUTES`` is 0 here: every row was written minutes ago, so the default
10-minute overlap would have each poll re-read every row of the recent days again, which in a real
table are the last ten minutes' rows only.

    .venv/bin/python benchmarks/run.py --only poll_history [--quick]   # in make bench's table
    .venv/bin/python benchmarks/poll_history.py [--polls 15] [--sizes 1000,50000] [--take-in]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROWS_PER_DAY = 50
BUDGET_SECONDS = {"full": 300, "quick": 90}
# The sizes compared and the polls timed for each, by run.py's mode.
SIZES = {"full": [1000, 50000], "quick": [1000, 10000]}
POLLS = {"full": 15, "quick": 5}


@dataclass
class Figures:
    rows: int
    first_poll_seconds: float
    poll_ms: float
    poll_requests: float
    poll_mode: str
    safety_ms: float
    safety_requests: float
    bare_query_ms: float


@contextmanager
def counting_requests():
    """Counts the storage SDKs' HTTP requests at the transport (instrumentation only)."""
    from azure.core.pipeline.transport import RequestsTransport

    calls: Counter[str] = Counter()
    lock = threading.Lock()
    original = RequestsTransport.send

    def send(transport, request, **kwargs):
        response = original(transport, request, **kwargs)
        with lock:
            calls[request.method] += 1
        return response

    RequestsTransport.send = send
    try:
        yield calls
    finally:
        RequestsTransport.send = original


def history_rows(count: int) -> list[dict]:
    """``count`` rows as the marketplace writes them, ROWS_PER_DAY a day back from today."""
    today = datetime.now(UTC).date()
    rows = []
    for index in range(count):
        day = today - timedelta(days=index // ROWS_PER_DAY)
        rows.append(
            {
                "PartitionKey": f"{day:%Y-%m-%d}",
                "RowKey": str(uuid.UUID(int=index + 1)),
                "ActionCode": "INS",
                "CreatedTime": f"{day:%Y-%m-%d}T12:00:00Z",
                "CustomerInfo": json.dumps(
                    {
                        "FirstName": f"Person {index}",
                        "LastName": "History",
                        "Email": f"person{index}@contoso.example",
                        "Country": "US",
                        "Company": f"Company {index % 997}",
                    }
                ),
                "LeadSource": "AzureMarketplace",
                "OfferDisplayName": "Contoso CRM",
            }
        )
    return rows


def _environment(connection: str, tag: str) -> None:
    from leads.core.settings import get_settings

    os.environ.update(
        {
            "AzureWebJobsStorage": connection,
            "MARKETPLACE_TABLE_CONNECTION": "",
            "MARKETPLACE_TABLE_NAME": f"History{tag}",
            "LEADS_TABLE_PREFIX": f"Bench{tag}",
            "LEADS_POLL_OVERLAP_MINUTES": "0",
            "LEADS_POLL_FULL_SCAN_MINUTES": "60",
            "LEADS_BACKFILL_DAYS": "7",
            "LEADS_ROUTING": "",
            "EMAIL_TO": "",  # no destination: a lead taken in is one write, nothing queued
            "WEBHOOK_URL": "",
        }
    )
    get_settings.cache_clear()


@dataclass
class History:
    """One marketplace table of ``count`` rows, with its own app tables (``tag``)."""

    count: int
    tag: str
    table: object
    first_poll_seconds: float
    polls: list[tuple[float, int, str]] = field(default_factory=list)  # seconds, requests, mode
    safety: list[tuple[float, int, str]] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)


def set_up(azurite, count: int, take_in: bool) -> History:
    from azure.data.tables import TableServiceClient

    from leads.intake import poll

    tag = uuid.uuid4().hex[:8]
    _environment(azurite.connection_string, tag)
    table = TableServiceClient.from_connection_string(azurite.connection_string).create_table(f"History{tag}")
    rows = history_rows(count)
    for start in range(0, count, ROWS_PER_DAY):  # one day, one partition, one transaction
        table.submit_transaction([("create", row) for row in rows[start : start + ROWS_PER_DAY]])
    poll._recently_stored.clear()
    started = time.perf_counter()
    if take_in:
        first = poll.poll_marketplace()
        assert first.stored == count, first
    else:
        _as_if_taken_in(table, poll)
    return History(count, tag, table, time.perf_counter() - started)


def timed_poll(azurite, history: History, full_scan: bool) -> tuple[float, int, str]:
    from leads.intake import poll

    _environment(azurite.connection_string, history.tag)
    with counting_requests() as calls:
        started = time.perf_counter()
        result = poll.poll_marketplace(full_scan=full_scan)
        seconds = time.perf_counter() - started
    assert result.stored == 0 and result.rejected == 0, result
    return seconds, sum(calls.values()), result.mode


def timed_bare_query(history: History) -> float:
    started = time.perf_counter()
    list(history.table.query_entities("PartitionKey eq @key", parameters={"key": "1999-01-01"}))
    return time.perf_counter() - started


def measure(azurite, sizes: list[int], polls: int, take_in: bool, budget=None) -> list[Figures]:
    """Every measurement alternates between the tables, the order turning each round, so that
    the load of a shared machine falls on both sizes alike. Past ``budget`` (run.py's time bound)
    no further round starts; every size has had one."""
    histories = [set_up(azurite, count, take_in) for count in sizes]
    for history in histories:  # warm: clients, connections
        timed_poll(azurite, history, False)
    for round_ in range(polls):
        if round_ and budget is not None and budget.over():
            break
        order = histories if round_ % 2 == 0 else histories[::-1]
        for history in order:
            history.polls.append(timed_poll(azurite, history, False))
            history.bare.append(timed_bare_query(history))
            if round_ % 3 == 0:
                history.safety.append(timed_poll(azurite, history, True))

    def median(samples, index):
        return statistics.median(sample[index] for sample in samples)

    return [
        Figures(
            h.count,
            h.first_poll_seconds,
            median(h.polls, 0) * 1000,
            median(h.polls, 1),
            h.polls[-1][2],
            median(h.safety, 0) * 1000,
            median(h.safety, 1),
            statistics.median(h.bare) * 1000,
        )
        for h in histories
    ]


def _as_if_taken_in(table, poll) -> None:
    """Leave the checkpoint as a first poll that took in every row would (its marks), without
    storing 50,000 leads: a poll of an unchanged table never reads the lead rows."""
    from leads.core.settings import get_settings
    from leads.store.lead_store import LeadStore

    store = LeadStore.from_settings()
    store.ensure_tables()
    newest = max(entity.metadata["timestamp"] for entity in table.list_entities(select=["Timestamp"]))
    checkpoint = poll.Checkpoint(store, get_settings().marketplace_table_name)
    checkpoint.read()
    checkpoint.advance(
        poll.Marks(
            watermark=newest,
            full_scan_from=datetime.now(UTC),
            key_formats=poll.key_formats(table.list_entities().next()["PartitionKey"]),
        )
    )


def run(quick: bool, budget) -> tuple[list, dict]:
    """run.py's entry: the poll and the safety scan at the small and the large size, as rows of
    its table (the large size's figure, the small one's as baseline)."""
    from common import Row, cost_ratio

    from leads.local.azurite import Azurite

    mode = "quick" if quick else "full"
    with Azurite() as azurite:
        figures = measure(azurite, SIZES[mode], POLLS[mode], take_in=False, budget=budget)
    small, large = figures[0], figures[-1]
    versus = f"{large.rows:,} rows vs {small.rows:,}"

    def row(metric: str, ours: float, baseline: float, unit: str, note: str, goal: str = "") -> Row:
        ratio = cost_ratio(ours, baseline)
        met = (ratio is not None and ratio <= 1.0) if goal else None
        return Row(
            "poll_history", f"{metric}, {versus}", round(ours, 2), unit, round(baseline, 2), ratio, goal, met, note
        )

    rows = [
        row(
            "poll of the unchanged table",
            large.poll_ms,
            small.poll_ms,
            "ms",
            f"every 30 s; reads the recent day partitions ({large.poll_mode}); on Azurite the time carries the "
            "emulator's own scan (below)",
        ),
        row(
            "  its storage requests",
            large.poll_requests,
            small.poll_requests,
            "req",
            "checkpoint read + one query of the recent days",
            goal="same at any size",
        ),
        row(
            "safety scan",
            large.safety_ms,
            small.safety_ms,
            "ms",
            "hourly: the whole table by Timestamp (what every poll cost before)",
        ),
        row(
            "Azurite alone: one PartitionKey query",
            large.bare_query_ms,
            small.bare_query_ms,
            "ms",
            "the emulator scans every entity; Azure Tables uses its index",
        ),
    ]
    details = {"sizes": SIZES[mode], "polls": POLLS[mode], "figures": [vars(figure) for figure in figures]}
    return rows, details


def print_table(figures: list[Figures]) -> None:
    small, large = figures[0], figures[-1]

    def ratio(a: float, b: float) -> str:
        return f"{b / a:.2f}×" if a else ""

    lines = [
        (
            "poll of the unchanged table",
            f"{small.poll_ms:.1f} ms",
            f"{large.poll_ms:.1f} ms",
            ratio(small.poll_ms, large.poll_ms),
            f"every 30 s; reads the recent day partitions ({large.poll_mode})",
        ),
        (
            "  its storage requests",
            f"{small.poll_requests:g}",
            f"{large.poll_requests:g}",
            ratio(small.poll_requests, large.poll_requests),
            "checkpoint read + one query of the recent days",
        ),
        (
            "safety scan (reported apart)",
            f"{small.safety_ms:.1f} ms",
            f"{large.safety_ms:.1f} ms",
            ratio(small.safety_ms, large.safety_ms),
            "hourly: the whole table by Timestamp (what every poll cost before)",
        ),
        (
            "  its storage requests",
            f"{small.safety_requests:g}",
            f"{large.safety_requests:g}",
            ratio(small.safety_requests, large.safety_requests),
            "checkpoint read + query + checkpoint write",
        ),
        (
            "Azurite alone: one PartitionKey query",
            f"{small.bare_query_ms:.1f} ms",
            f"{large.bare_query_ms:.1f} ms",
            ratio(small.bare_query_ms, large.bare_query_ms),
            "the emulator scans every entity; Azure uses its index",
        ),
        (
            "first poll (or its checkpoint written)",
            f"{small.first_poll_seconds:.1f} s",
            f"{large.first_poll_seconds:.1f} s",
            ratio(small.first_poll_seconds, large.first_poll_seconds),
            "once; info only (--take-in: a real first poll)",
        ),
    ]
    header = ("figure", f"{small.rows:,} rows", f"{large.rows:,} rows", "ratio", "note")
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(4)]
    align = ["<", ">", ">", ">"]
    for index, line in enumerate([header, *lines]):
        print(" | ".join(f"{cell:{a}{w}}" for cell, a, w in zip(line, align, widths, strict=False)) + " | " + line[4])
        if index == 0:
            print("-+-".join("-" * w for w in widths) + "-+-" + "-" * 20)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=15, help="polls timed per size (default: %(default)s)")
    parser.add_argument("--sizes", default="1000,50000", help="table sizes, smallest first (default: %(default)s)")
    parser.add_argument(
        "--take-in",
        action="store_true",
        help="take every row in with a real first poll (minutes at 50,000) instead of writing the "
        "checkpoint such a poll leaves",
    )
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]

    from leads.local.azurite import Azurite

    with Azurite() as azurite:
        figures = measure(azurite, sizes, args.polls, args.take_in)
    print_table(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

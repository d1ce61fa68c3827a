"""History: routine work with 1,000 and with 50,000 stored leads, a fifth held back, side by side.

    .venv/bin/python benchmarks/history.py [--sizes 1000,50000] [--repeats 7]

An app that runs for years keeps every lead it took in; its timers and commands must not slow down
with that. For each size, a store is made as the app leaves it: each lead (varied, from
``leadgen``) with an email and a webhook delivery, 70 leads a day going back from yesterday. Four
in five leads' deliveries are long delivered; every fifth lead's two are held back, ``skipped`` as
older than ``LEADS_BACKFILL_DAYS`` (as the first poll of a marketplace table holding years of rows
leaves them), waiting for a ``replay --skipped`` nobody ran: history too. Each row's index entries
come from ``leads.store.index.entries_for`` (which ``python -m leads reindex`` uses too), with the day
counters and the held-back tally. Then, in this process, as the timer and the CLI call them,
median of ``--repeats`` runs:

- ``sweep``: the timer's ``sweep()``, nothing open;
- ``status``: ``status()`` over its default 7 days (it reports the held-back figure);
- ``replay``: ``replay()`` of all failures, nothing failed (the held-back ones are not failures);
- ``list``: ``python -m leads list --json``'s first page (50 leads), printed to /dev/null;
- ``verify``: ``verify --since 2``, the maintenance run's check of today and yesterday (70 leads).

Each row also gives the storage requests and the rows read of one run at each size: what Azure
charges, and what must stay flat. Azurite's time grows besides, as it reads a whole table for
every query where Azure reads one partition: the first row, one partition query of the lead store,
is Azurite's own growth, to read the others against (``verify`` makes one such query per lead of
its days).

Goal: each ratio (50,000 ÷ 1,000) within 1.3×.

Seeding: one lead is one partition, so each is its own transaction, and Azurite takes some 10-30 ms
for each on a busy machine: 50,000 would take a quarter of an hour. Instead the app creates its
tables through the SDK in an Azurite that keeps its data in a folder; Azurite is stopped, the rows
are added to its database file (LokiJS JSON: each entity as Azurite stores it, with the table's
key indexes), and Azurite is started on it again. That takes seconds, and Azurite then serves
those rows as any it took in itself.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import leadgen  # noqa: E402  (benchmarks/leadgen.py)

LEADS_A_DAY = 70
HELD_EVERY = 5  # every fifth lead is held back by LEADS_BACKFILL_DAYS
GOAL = 1.3
BUDGET_SECONDS = {"full": 300, "quick": 120}
SIZES = {"full": (1000, 50000), "quick": (1000, 10000)}
REPEATS = {"full": 7, "quick": 3}
ACCOUNT = "devstoreaccount1"


def history(count: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """(table suffix, entity) for ``count`` stored leads as the app leaves them (see the top)."""
    from leads.core.normalise import from_http_body
    from leads.destinations.base import Route
    from leads.store.deliveries import new_delivery_entity
    from leads.store.derived import TALLY_ROW
    from leads.store.identities import rows_for
    from leads.store.index import entries_for, shard_of, shards
    from leads.store.rows import BACKFILL_REASON, lead_entity

    yesterday = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=1)
    bodies = leadgen.http_bodies(min(count, 2_000))
    tables = {"timeline": "Timeline", "index": "Index", "held": "Held"}
    days: dict[datetime, dict[str, int]] = {}
    held = {shard: 0 for shard in shards()}
    for number in range(count):
        received = yesterday - timedelta(days=number // LEADS_A_DAY, seconds=number % LEADS_A_DAY * 600)
        lead = from_http_body(
            {**bodies[number % len(bodies)], "Description": f"history lead {number}"}, received_at=received
        )
        yield "", {**lead_entity(lead), "WriteId": uuid.uuid4().hex}
        hold = number % HELD_EVERY == 0
        held[shard_of(lead.lead_id)] += hold
        reason = f"{BACKFILL_REASON} (30) when taken in: received {received:%Y-%m-%d %H:%M} UTC" if hold else ""
        for name, route in (("email", Route(("sales@contoso.example",))), ("webhook", Route())):
            row = new_delivery_entity(lead.lead_id, name, replace(route, skip_reason=reason), received)
            if not hold:
                row.update(
                    State="delivered", Attempts=1, ExternalId=f"x-{number}", UpdatedAt=received + timedelta(seconds=2)
                )
            yield "", row
            for table, entry in entries_for(row):
                yield tables[table], entry
        for table, entry in entries_for({**lead_entity(lead), "RowKey": "lead"}):
            yield tables[table], entry
        for row in rows_for(lead_entity(lead)) or ():  # identity and email rows, as intake writes them
            yield "Identities", row
        day = days.setdefault(received.date(), {"delivered": 0, "skipped": 0})
        day["skipped" if hold else "delivered"] += 1
    for day, states in days.items():
        counts = {f"{name}_{state}": n for name in ("email", "webhook") for state, n in states.items()}
        yield "Counts", {"PartitionKey": f"count|{day:%Y-%m-%d}", "RowKey": "00", **counts}
    for shard, count in held.items():  # the held tally, in each shard beside its entries
        yield "Held", {"PartitionKey": shard, "RowKey": TALLY_ROW, "email": count, "webhook": count}


def seed(location: Path, stores: dict[str, int]) -> float:
    """Add each store's history (prefix: leads) to the database file of a stopped Azurite."""
    started = time.perf_counter()
    path = location / "__azurite_db_table__.json"
    database = json.loads(path.read_text())
    collections = {collection["name"]: collection for collection in database["collections"]}
    stamp = datetime.now(UTC)
    for prefix, count in stores.items():
        for suffix, entity in history(count):
            stamp += timedelta(microseconds=1)
            collections[f"{ACCOUNT}${prefix}{suffix}"]["data"].append(_azurite_entity(entity, stamp))
    for collection in collections.values():
        if collection["name"].startswith(f"{ACCOUNT}$"):
            _renumber(collection)
    path.write_text(json.dumps(database))
    return time.perf_counter() - started


def _azurite_entity(entity: dict[str, Any], stamp: datetime) -> dict[str, Any]:
    """An entity as Azurite's table store keeps it (what it writes for one it took in)."""
    when = stamp.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"
    properties: dict[str, Any] = {}
    for name, value in entity.items():
        if isinstance(value, datetime):
            properties[name] = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            properties[f"{name}@odata.type"] = "Edm.DateTime"
        else:
            properties[name] = value
    properties.update({"Timestamp": when, "Timestamp@odata.type": "Edm.DateTime"})
    return {
        "PartitionKey": entity["PartitionKey"],
        "RowKey": entity["RowKey"],
        "properties": properties,
        "lastModifiedTime": when,
        "eTag": f"W/\"datetime'{quote(when)}'\"",
        "meta": {"revision": 0, "created": int(stamp.timestamp() * 1000), "version": 0},
    }


def _renumber(collection: dict[str, Any]) -> None:
    """Ids and the key indexes (positions sorted by key) as LokiJS keeps them."""
    data = collection["data"]
    for number, document in enumerate(data, start=1):
        document["$loki"] = number
    collection["maxId"] = len(data)
    for key in ("PartitionKey", "RowKey"):
        order = sorted(range(len(data)), key=lambda position: data[position][key])
        collection["binaryIndices"][key] = {"name": key, "dirty": False, "values": order}


@contextlib.contextmanager
def app_settings(connection: str, prefix: str):
    from leads.core.settings import get_settings

    values = {
        "AzureWebJobsStorage": connection,
        "LEADS_TABLE_PREFIX": prefix,
        "MARKETPLACE_TABLE_CONNECTION": "",
        "LEADS_DELIVERY_QUEUE": f"history-{prefix.lower()}",
        "WEBHOOK_URL": "http://127.0.0.1:9/never",
        "EMAIL_TO": "sales@contoso.example",
    }
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
        get_settings.cache_clear()


def measure(repeats: int) -> dict[str, tuple[float, int, int]]:
    """Each work's median seconds, and the storage requests and rows read of one run."""
    from common import RequestCounter

    from leads import cli
    from leads.ops.operations import replay, status, sweep
    from leads.store.verify import verify

    def first_page() -> None:
        with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()):
            assert cli.main(["--settings", "/nonexistent", "list", "--json"]) == 0
        assert out.getvalue().count('"leadId"') == 50

    def timed(call: Callable[[], object]) -> tuple[float, int, int]:
        call()  # warm: clients, connections, the tables created once per process
        with RequestCounter().counting() as counted:
            call()
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            samples.append(time.perf_counter() - started)
        return statistics.median(samples), counted.total, counted.rows

    def verify_recent() -> None:
        report = verify(since_days=2)  # today and yesterday: the maintenance run's days
        assert report.by_kind() == {} and report.checked["leads"] == LEADS_A_DAY, report.to_dict()

    from leads.store.lead_store import LeadStore

    store = LeadStore.from_settings()
    some_lead = next(iter(store.index.newest(page=1))).lead_id

    def one_partition() -> None:  # what Azurite itself takes for one lead's partition, as verify reads it
        assert list(store.leads.query_entities("PartitionKey eq @p", parameters={"p": some_lead}))

    return {
        "Azurite: one lead's partition query": timed(one_partition),
        "sweep": timed(lambda: sweep()),
        "status": timed(lambda: status()),
        "replay (nothing failed)": timed(lambda: replay()),
        "list (first page)": timed(first_page),
        "verify (last 2 days)": timed(verify_recent),
    }


def both_sizes(small: int, large: int, repeats: int) -> tuple[dict[int, dict[str, float]], float]:
    """The figures of each work at both sizes (seconds), and how long seeding the stores took."""
    from leads.local.azurite import Azurite
    from leads.store.lead_store import LeadStore

    stores = {f"History{small}": small, f"History{large}": large}
    figures = {}
    with tempfile.TemporaryDirectory(prefix="history-") as folder:
        azurite = Azurite(location=Path(folder))
        with azurite:
            for prefix in stores:
                with app_settings(azurite.connection_string, prefix):
                    LeadStore.from_settings().ensure_tables()  # the app's own tables, and a built index
            time.sleep(6)  # Azurite writes its database file every few seconds
        seeding = seed(Path(folder), stores)
        with azurite:
            for prefix, size in stores.items():
                with app_settings(azurite.connection_string, prefix):
                    assert len(LeadStore.from_settings().list(limit=60)) == 60 or size < 60
                    figures[size] = measure(repeats)
    return figures, seeding


def run(quick: bool, budget) -> tuple[list, dict]:
    """run.py's entry: each work at the large size against the small one, as rows of its table."""
    from common import Row, cost_ratio

    mode = "quick" if quick else "full"
    (small, large), repeats = SIZES[mode], REPEATS[mode]
    figures, seeding = both_sizes(small, large, repeats)
    rows = []
    for name in figures[small]:
        (ours, requests, read), (baseline, requests_before, read_before) = figures[large][name], figures[small][name]
        ratio = cost_ratio(ours * 1000, baseline * 1000)
        rows.append(
            Row(
                "history",
                f"{name}, {large:,} leads ({1 / HELD_EVERY:.0%} held back) vs {small:,}",
                round(ours * 1000, 1),
                "ms",
                round(baseline * 1000, 1),
                ratio,
                f"≤ {GOAL}×",
                ratio is not None and ratio <= GOAL,
                f"median of {repeats}; {requests} requests, {read} rows read (vs {requests_before}, {read_before})",
            )
        )
    return rows, {
        "sizes": [small, large],
        "repeats": repeats,
        "seeding_seconds": round(seeding, 1),
        "figures": {str(size): values for size, values in figures.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,50000", help="stored leads, small then large (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    small, large = (int(size) for size in args.sizes.split(","))
    figures, seeding = both_sizes(small, large, args.repeats)

    print(
        f"History: stored leads, {1 / HELD_EVERY:.0%} held back (both stores seeded in {seeding:.0f} s); "
        f"median of {args.repeats} runs\n"
    )
    print(f"| work | {small:,} leads | {large:,} leads | ratio | goal ≤ {GOAL}× | requests | rows read |")
    print("|---|---|---|---|---|---|---|")
    worst = 0.0
    for name in figures[small]:
        (before, requests_before, read_before), (after, requests, read) = figures[small][name], figures[large][name]
        ratio = after / before
        worst = max(worst, ratio)
        print(
            f"| {name} | {before * 1000:.1f} ms | {after * 1000:.1f} ms | {ratio:.2f}× | "
            f"{'met' if ratio <= GOAL else 'MISSED'} | {requests_before} → {requests} | "
            f"{read_before} → {read} |"
        )
    return 0 if worst <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())

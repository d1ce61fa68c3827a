"""Planting differences in a store, one of each kind ``verify`` knows, so that a test can show it
finds exactly those and ``--repair`` leaves none. Each is written straight into the derived tables,
as a defect or a crash would leave it; the truth (leads and deliveries) is left as it is, but for
one delivery row to make a delivery lack its entry.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

from leads.store.derived import GRACE
from leads.store.identities import address_partition
from leads.store.index import FAILED, OPEN, TIMELINE, cursor_of, delivery_entry, shard_of
from leads.store.lead_store import LeadStore
from leads.store.rows import LEAD_ROW, day_of, delivery_from_entity, is_delivery_row


def plant(store: LeadStore, now: datetime | None = None) -> Counter:
    """Plant differences in ``store`` (it must hold a finished lead, stored today); returns how
    many of each kind ``verify`` should find."""
    now = now or datetime.now(UTC)
    planted: Counter = Counter()
    found = finished_leads(store, 2)
    if len(found) < 2:
        raise AssertionError("fewer than 2 finished leads of today to plant differences around")
    lead, other = found
    lead_id, received = lead["PartitionKey"], lead["ReceivedAt"]
    old = now - GRACE - timedelta(minutes=1)

    # The timeline entry of a lead, gone.
    store.index.timeline.delete_entity(TIMELINE, cursor_of(lead_id, received))
    planted["timeline entry missing"] += 1
    # A timeline entry for a lead never stored, older than any write.
    ghost = "hplantedghost00000000000"
    store.index.timeline.upsert_entity(
        {"PartitionKey": TIMELINE, "RowKey": cursor_of(ghost, now - timedelta(hours=1)), "LeadId": ghost, "At": old}
    )
    planted["stale timeline entry"] += 1
    # The identity row of a lead, gone.
    store.identities.table.delete_entity(day_of(received), lead_id)
    planted["identity row missing"] += 1
    # An email row naming a lead that does not hold the address.
    store.identities.table.upsert_entity(
        {"PartitionKey": address_partition("nobody@planted.example"), "RowKey": f"{lead_id}|{LEAD_ROW}"}
    )
    planted["stale email row"] += 1
    # A failed entry for a delivery that was delivered.
    delivery = next(d for d in _deliveries(store, lead_id) if d.state == "delivered")
    store.index.table.upsert_entity({**delivery_entry(FAILED, delivery), "At": old})
    planted["stale failed entry"] += 1
    # An open delivery whose open entry is gone: another lead's delivery set back to pending.
    from dataclasses import replace

    from leads.store.rows import delivery_entity

    delivery = next(d for d in _deliveries(store, other["PartitionKey"]) if d.state == "delivered")
    reopened = delivery_entity(replace(delivery, state="pending", etag=None))
    store.leads.upsert_entity(reopened)
    reopened_delivery = delivery_from_entity(reopened)
    store.index.table.delete_entity(shard_of(other["PartitionKey"]), delivery_entry(OPEN, reopened_delivery)["RowKey"])
    planted["open entry missing"] += 1
    # ... which also leaves its day's count off (one delivered fewer than the counters say).
    planted["day count off"] += 1
    return planted


def finished_leads(store: LeadStore, count: int) -> list:
    """Up to ``count`` leads of today, not erased, with an email and a delivered delivery."""
    today, found = day_of(datetime.now(UTC)), []
    for row in store.leads.query_entities("RowKey eq 'lead'"):
        if day_of(row["ReceivedAt"]) == today and row.get("ErasedAt") is None and json.loads(row["Lead"]).get("email"):
            if any(d.state == "delivered" for d in _deliveries(store, row["PartitionKey"])):
                found.append(row)
                if len(found) == count:
                    break
    return found


def _deliveries(store: LeadStore, lead_id: str):
    rows = store.leads.query_entities("PartitionKey eq @p", parameters={"p": lead_id})
    return [delivery_from_entity(row) for row in rows if is_delivery_row(row["RowKey"])]

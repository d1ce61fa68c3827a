"""The poll compares storage times only with storage times: a process whose clock runs ahead of
the storage service's loses no row (../shared/reproductions/10_*: with the app's clock 15 minutes
ahead, a row written after the first scan began was never taken in, by any later poll or scan)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from leads.intake import poll
from leads.intake.poll import CHECKPOINT_PARTITION, poll_marketplace
from leads.store.lead_store import LeadStore

from .test_poll import ENTITY, marketplace, today  # noqa: F401  (the fixture)


def clock_ahead_by(skew: timedelta) -> type[datetime]:
    class Ahead(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) + skew

    return Ahead


def write(table, key: str) -> None:
    person = {"FirstName": key, "LastName": "X", "Email": f"{key}@contoso.com"}
    table.create_entity({**ENTITY, "PartitionKey": today(), "RowKey": key, "CustomerInfo": json.dumps(person)})


@pytest.mark.parametrize("skew", [timedelta(minutes=15), timedelta(days=8)], ids=["15 minutes", "8 days"])
def test_a_process_clock_ahead_of_storage_loses_no_row(marketplace, monkeypatch, skew):  # noqa: F811
    monkeypatch.setattr(poll, "datetime", clock_ahead_by(skew))
    write(marketplace, "first")
    assert poll_marketplace().stored == 1  # the first poll: every row
    write(marketplace, "second")  # after the first poll's scan began, by the storage service's clock
    assert poll_marketplace().stored == 1  # the routine poll takes it in
    write(marketplace, "third")
    assert poll_marketplace(full_scan=True).stored == 1  # and so does a safety scan
    store = LeadStore.from_settings()
    names = {item.record.first_name for item in store.newest()}
    assert names == {"first", "second", "third"}
    # No mark is later than the storage service's own time; none of the fresh leads is held as history.
    marks = store.checkpoints.get_entity(CHECKPOINT_PARTITION, marketplace.table_name)
    assert marks["FullScanFrom"] <= datetime.now(UTC) + timedelta(minutes=1)
    deliveries = [d for item in store.newest() for d in store.deliveries.for_lead(item.record.lead_id)]
    assert [d for d in deliveries if d.state == "skipped"] == []

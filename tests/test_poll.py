"""The marketplace table poll against Azurite: every row, every page, once."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone

import pytest
from azure.data.tables import TableClient
from azure.functions.timer import TimerRequest

import function_app
from leads.poll import Checkpoint, _recently_stored, poll_marketplace
from leads.settings import get_settings
from leads.storage import table_service
from leads.store import LeadStore

from .conftest import FIXTURES

ENTITY = json.loads((FIXTURES / "marketplace" / "table-entity-test-lead.json").read_text())


@pytest.fixture
def marketplace(storage) -> TableClient:
    """The marketplace's table, created as the marketplace does with its first lead."""
    _recently_stored.clear()  # each test sees the store, not what an earlier poll remembered
    settings = get_settings()
    table = table_service(settings.storage_connection).get_table_client(settings.marketplace_table_name)
    table.create_table()
    yield table
    _recently_stored.clear()


def write_rows(table: TableClient, count: int, start: int = 0, partition: str = "2026-11-25") -> list[str]:
    """Write rows as the marketplace does, in batches of 100 (one partition per batch)."""
    keys = [f"row-{index:05d}" for index in range(start, start + count)]
    for offset in range(0, count, 100):
        table.submit_transaction([
            ("create", {**ENTITY, "PartitionKey": partition, "RowKey": key,
                        "CustomerInfo": json.dumps({"FirstName": f"Person {key}", "Email": f"{key}@contoso.com",
                                                    "Country": "US", "Company": "Contoso"})})
            for key in keys[offset:offset + 100]
        ])  # fmt: skip
    return keys


def stored_leads() -> int:
    return len(LeadStore.from_settings().list(limit=None))


def test_a_table_that_does_not_exist_yet_is_normal(storage):
    result = poll_marketplace()
    assert result.table_missing and result.read == 0


def test_more_than_a_thousand_rows_over_several_pages_are_all_taken_in_once(marketplace):
    write_rows(marketplace, 1250)
    first = poll_marketplace()
    assert (first.read, first.stored) == (1250, 1250)
    assert stored_leads() == 1250

    second = poll_marketplace()
    assert second.stored == 0
    _recently_stored.clear()  # a fresh instance remembers nothing: the store still refuses a second copy
    third = poll_marketplace()
    assert third.stored == 0 and third.already_stored == third.read
    assert stored_leads() == 1250


def test_the_checkpoint_moves_to_the_newest_row_and_later_rows_are_taken_in(marketplace):
    write_rows(marketplace, 3)
    first = poll_marketplace()
    newest = max(entity.metadata["timestamp"] for entity in marketplace.list_entities())
    assert first.watermark == newest
    write_rows(marketplace, 2, start=3)
    second = poll_marketplace()
    assert second.stored == 2
    assert stored_leads() == 5


def test_a_late_row_with_an_older_timestamp_inside_the_overlap_is_not_missed(marketplace):
    write_rows(marketplace, 2)
    poll_marketplace()
    # Another writer's clock runs behind: the watermark is already past the next row's Timestamp.
    checkpoint = Checkpoint(LeadStore.from_settings(), get_settings().marketplace_table_name)
    checkpoint.read()
    checkpoint.advance(datetime.now(timezone.utc) + timedelta(minutes=3))
    write_rows(marketplace, 1, start=2)
    late = next(e for e in marketplace.list_entities() if e["RowKey"] == "row-00002")
    assert late.metadata["timestamp"] < checkpoint.read()

    result = poll_marketplace()
    assert result.stored == 1
    assert stored_leads() == 3


def test_two_polls_racing_take_in_each_row_once(marketplace):
    write_rows(marketplace, 600)
    results, errors = [], []

    def run():
        try:
            results.append(poll_marketplace())
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sum(result.stored for result in results) == 600
    assert stored_leads() == 600


def test_a_stale_checkpoint_write_never_moves_the_watermark_back(storage):
    store = LeadStore.from_settings()
    store.ensure_tables()
    early, late = datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 2, tzinfo=timezone.utc)
    slow, fast = Checkpoint(store, "Racing"), Checkpoint(store, "Racing")
    assert slow.read() is None and fast.read() is None
    assert fast.advance(late) == late
    assert slow.advance(early) == late  # its conditional write fails, it re-reads and keeps the newer mark
    assert Checkpoint(store, "Racing").read() == late


def test_a_row_that_holds_no_lead_is_kept_as_rejected_and_the_poll_moves_on(marketplace):
    marketplace.create_entity({**ENTITY, "RowKey": "broken", "CustomerInfo": "{not json"})
    write_rows(marketplace, 1)
    result = poll_marketplace()
    assert (result.stored, result.rejected) == (1, 1)
    store = LeadStore.from_settings()
    rejected_id = next(
        lead_id for lead_id in {lead.lead_id for lead in store.list()} ^ _all_lead_partitions(store)
    )
    rejected = store.rejected(rejected_id)
    assert "CustomerInfo is not valid JSON" in rejected["error"]
    assert rejected["raw"]["CustomerInfo"] == "{not json"
    assert poll_marketplace().rejected == 0  # remembered, not rejected again


def _all_lead_partitions(store: LeadStore) -> set[str]:
    return {entity["PartitionKey"] for entity in store.leads.list_entities(select=["PartitionKey"])}


def test_the_timer_function_polls(marketplace):
    write_rows(marketplace, 4)
    function_app.poll_marketplace_table(TimerRequest(past_due=False))
    assert stored_leads() == 4
